/// How a placement does on a trace: the figures `moe plan evaluate` reports.
public struct Evaluation: Sendable, Equatable {
    /// Fraction of top-1 transitions (layer l → l+1) whose experts sit on different ranks.
    public var crossRankTopOne: Double
    /// The same over all top-k pairs, each weighted by the product of the two (normalised) gate weights.
    public var crossRankTopK: Double
    /// Hop-weighted transition cost per token (weighted top-k pairs; hop 1 within a node, 2 across).
    public var hopsPerToken: Double
    /// Fraction of (token, layer) whose secondary experts are not all on the primary's rank.
    public var secondaryRemote: Double
    /// Mean over layers of max/mean top-k assignments per rank.
    public var maxMeanLoad: Double

    public init(placement p: Placement, trace: RoutingTrace, ranksPerNode: Int = Int.max) {
        let objective = PlacementObjective(ranksPerNode: ranksPerNode == Int.max ? p.ranks : ranksPerNode)
        var top1 = 0.0, top1Cross = 0.0, topk = 0.0, topkCross = 0.0, hops = 0.0
        var pairs = 0.0, remote = 0.0, tokens = 0.0
        var load = Array(repeating: Array(repeating: 0.0, count: p.ranks), count: trace.layers)
        for sequence in trace.sequences {
            for token in sequence.tokens {
                tokens += 1
                let w = token.map(\.normalisedWeights)
                for l in 0..<trace.layers {
                    let c = token[l]
                    for e in c.experts { load[l][p.rankOf[l][e]] += 1 }
                    pairs += 1
                    let home = p.rankOf[l][c.experts[0]]
                    if c.experts.dropFirst().contains(where: { p.rankOf[l][$0] != home }) { remote += 1 }
                    guard l + 1 < trace.layers else { continue }
                    let n = token[l + 1]
                    top1 += 1
                    if p.rankOf[l][c.experts[0]] != p.rankOf[l + 1][n.experts[0]] { top1Cross += 1 }
                    for (i, a) in c.experts.enumerated() {
                        for (j, b) in n.experts.enumerated() {
                            let weight = w[l][i] * w[l + 1][j]
                            let hop = objective.hop(p.rankOf[l][a], p.rankOf[l + 1][b])
                            topk += weight
                            if hop > 0 { topkCross += weight }
                            hops += weight * hop
                        }
                    }
                }
            }
        }
        crossRankTopOne = top1 > 0 ? top1Cross / top1 : 0
        crossRankTopK = topk > 0 ? topkCross / topk : 0
        hopsPerToken = tokens > 0 ? hops / tokens : 0
        secondaryRemote = pairs > 0 ? remote / pairs : 0
        let ratios = load.map { row -> Double in
            let mean = row.reduce(0, +) / Double(row.count)
            return mean > 0 ? row.max()! / mean : 1
        }
        maxMeanLoad = ratios.isEmpty ? 1 : ratios.reduce(0, +) / Double(ratios.count)
    }
}

extension Placement {
    /// Reads ExFlow's published placements: CSV `Expert,Node` with global expert id = layer · E + expert.
    public static func importExFlow(csv text: String, experts: Int, path: String) throws -> Placement {
        var entries: [(Int, Int)] = []
        for (n, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || (n == 0 && line.lowercased().hasPrefix("expert")) { continue }
            let parts = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, let e = Int(parts[0]), let r = Int(parts[1]), e >= 0, r >= 0 else {
                throw PlacementError.unreadable(path: path, reason: "line \(n + 1): expected 'expert,node' integers, got '\(line)'")
            }
            entries.append((e, r))
        }
        guard !entries.isEmpty, entries.count % experts == 0 else {
            throw PlacementError.unreadable(path: path, reason: "\(entries.count) experts is not a whole number of layers of \(experts)")
        }
        let layers = entries.count / experts
        var rankOf = Array(repeating: Array(repeating: -1, count: experts), count: layers)
        for (e, r) in entries {
            guard e < layers * experts, rankOf[e / experts][e % experts] == -1 else {
                throw PlacementError.unreadable(path: path, reason: "expert \(e) is listed twice or out of range")
            }
            rankOf[e / experts][e % experts] = r
        }
        let ranks = (entries.map(\.1).max() ?? 0) + 1
        return Placement(rankOf: rankOf, ranks: ranks)
    }
}

/// A paired comparison of two placements on one trace: the share of top-1 transitions (layer l → l+1) that the
/// reference sends across ranks and the placement keeps, minus the reverse, with its sampling uncertainty.
///
/// The uncertainty is a block bootstrap over tokens: each sequence is cut into blocks of consecutive tokens
/// (neighbouring tokens route alike, so single tokens would understate it) and resampled by blocks within
/// itself, so every resample keeps the trace's mix of sequences. It measures how much the figure could move on
/// another draw of tokens like these, not how it would move on other kinds of prompt.
public struct PlacementComparison: Sendable {
    /// One sequence's part.
    public struct Part: Sendable, Equatable {
        public var name: String
        public var transitions: Int
        /// Transitions the reference crosses minus those the placement crosses, over `transitions`.
        public var saving: Double
    }

    /// Positive when the placement crosses fewer top-1 transitions than the reference: their difference over all
    /// top-1 transitions of the trace (the difference of their `crossRankTopOne`).
    public var saving: Double
    public var parts: [Part]
    /// Standard deviation of `saving` over the bootstrap resamples.
    public var standardError: Double
    /// The 2.5th and 97.5th percentiles of the resamples.
    public var interval: (low: Double, high: Double)
    public var block: Int
    public var resamples: Int

    public init(_ placement: Placement, against reference: Placement, trace: RoutingTrace, block: Int = 16, resamples: Int = 2000,
                using generator: inout some RandomNumberGenerator) {
        precondition(block >= 1 && resamples >= 1, "block and resamples must be positive")
        self.block = block
        self.resamples = resamples
        // Per sequence, per block: (top-1 transitions, reference crossings − placement crossings).
        var blocks: [[(transitions: Int, difference: Int)]] = []
        parts = []
        var transitions = 0, difference = 0
        for sequence in trace.sequences {
            var rows: [(transitions: Int, difference: Int)] = []
            for start in stride(from: 0, to: sequence.tokens.count, by: block) {
                var n = 0, d = 0
                for token in sequence.tokens[start..<min(start + block, sequence.tokens.count)] {
                    for l in 0..<max(trace.layers - 1, 0) {
                        let a = token[l].experts[0], b = token[l + 1].experts[0]
                        n += 1
                        if reference.rankOf[l][a] != reference.rankOf[l + 1][b] { d += 1 }
                        if placement.rankOf[l][a] != placement.rankOf[l + 1][b] { d -= 1 }
                    }
                }
                rows.append((n, d))
            }
            let n = rows.reduce(0) { $0 + $1.transitions }, d = rows.reduce(0) { $0 + $1.difference }
            parts.append(Part(name: sequence.name, transitions: n, saving: n > 0 ? Double(d) / Double(n) : 0))
            transitions += n
            difference += d
            if !rows.isEmpty { blocks.append(rows) }
        }
        saving = transitions > 0 ? Double(difference) / Double(transitions) : 0
        var draws: [Double] = []
        draws.reserveCapacity(resamples)
        for _ in 0..<resamples {
            var n = 0, d = 0
            for rows in blocks {
                for _ in rows.indices {
                    let row = rows[Int.random(in: rows.indices, using: &generator)]
                    n += row.transitions
                    d += row.difference
                }
            }
            draws.append(n > 0 ? Double(d) / Double(n) : 0)
        }
        let mean = draws.reduce(0, +) / Double(resamples)
        standardError = (draws.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(resamples)).squareRoot()
        draws.sort()
        func percentile(_ q: Double) -> Double { draws[min(resamples - 1, max(0, Int((q * Double(resamples)).rounded(.down))))] }
        interval = (percentile(0.025), percentile(0.975))
    }
}
