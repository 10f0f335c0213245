/// What a placement's cost depends on, counted once from a trace: the problem size does not grow with the trace.
public struct TraceStatistics: Sendable, Equatable {
    public let layers: Int
    public let experts: Int
    /// `transitions[l][a * E + b]`: Σ over tokens of w_a·w_b for expert a in layer l's top-k and b in layer l+1's
    /// (gate weights normalised to sum 1 per token and layer); layers - 1 entries.
    public var transitions: [[Double]]
    /// `topOne[l][a * E + b]`: tokens whose top-1 expert is a at layer l and b at layer l+1.
    public var topOne: [[Double]]
    /// `coactivation[l][a * E + b]` (a ≠ b, symmetric): Σ over tokens of w_a·w_b for a and b both in the top-k.
    public var coactivation: [[Double]]
    /// `load[l][e]`: tokens with e in their top-k.
    public var load: [[Double]]
    /// Tokens counted.
    public var tokens: Int

    /// Statistics given directly (a sub-problem of a bisection, a test); topOne is left empty, and load unless given.
    public init(layers: Int, experts: Int, transitions: [[Double]], coactivation: [[Double]], load: [[Double]]? = nil) {
        self.layers = layers
        self.experts = experts
        self.transitions = transitions
        self.coactivation = coactivation
        topOne = transitions.map { $0.map { _ in 0 } }
        self.load = load ?? Array(repeating: Array(repeating: 0, count: experts), count: layers)
        tokens = 0
    }

    public init(_ trace: RoutingTrace, experts: Int? = nil) {
        let l = trace.layers, e = max(experts ?? trace.experts, trace.experts)
        layers = l
        self.experts = e
        transitions = Array(repeating: Array(repeating: 0, count: e * e), count: max(l - 1, 0))
        topOne = transitions
        coactivation = Array(repeating: Array(repeating: 0, count: e * e), count: l)
        load = Array(repeating: Array(repeating: 0, count: e), count: l)
        tokens = 0
        for sequence in trace.sequences {
            for token in sequence.tokens {
                tokens += 1
                let normalised = token.map(\.normalisedWeights)
                for layer in 0..<l {
                    let c = token[layer], w = normalised[layer]
                    for (i, a) in c.experts.enumerated() {
                        load[layer][a] += 1
                        for (j, b) in c.experts.enumerated() where i != j { coactivation[layer][a * e + b] += w[i] * w[j] }
                    }
                    guard layer + 1 < l else { continue }
                    let next = token[layer + 1], wn = normalised[layer + 1]
                    topOne[layer][c.experts[0] * e + next.experts[0]] += 1
                    for (i, a) in c.experts.enumerated() {
                        for (j, b) in next.experts.enumerated() { transitions[layer][a * e + b] += w[i] * wn[j] }
                    }
                }
            }
        }
    }
}

/// How a placement is scored: hop-weighted transitions (plus co-activation within a layer).
public struct PlacementObjective: Sendable, Equatable {
    /// Ranks per node: hop is 0 on the same rank, 1 within a node, 2 across nodes.
    public var ranksPerNode: Int
    /// Weight of co-activation: a token's experts of one layer on different ranks cost this times their weight.
    public var coactivationWeight: Double

    public init(ranksPerNode: Int, coactivationWeight: Double = 0) {
        self.ranksPerNode = ranksPerNode
        self.coactivationWeight = coactivationWeight
    }

    @inlinable
    public func hop(_ a: Int, _ b: Int) -> Double {
        a == b ? 0 : (a / ranksPerNode == b / ranksPerNode ? 1 : 2)
    }

    /// J(π) = Σ_l Σ_{a,b} C_l[a,b]·hop(π_l(a), π_{l+1}(b)) + λ Σ_l Σ_{a<b} A_l[a,b]·hop(π_l(a), π_l(b)).
    public func cost(_ p: Placement, _ s: TraceStatistics) -> Double {
        let e = s.experts
        var j = 0.0
        for l in 0..<(s.layers - 1) {
            for a in 0..<e {
                for b in 0..<e where s.transitions[l][a * e + b] != 0 {
                    j += s.transitions[l][a * e + b] * hop(p.rankOf[l][a], p.rankOf[l + 1][b])
                }
            }
        }
        if coactivationWeight != 0 {
            for l in 0..<s.layers {
                for a in 0..<e {
                    for b in (a + 1)..<e where s.coactivation[l][a * e + b] != 0 {
                        j += coactivationWeight * s.coactivation[l][a * e + b] * hop(p.rankOf[l][a], p.rankOf[l][b])
                    }
                }
            }
        }
        return j
    }
}
