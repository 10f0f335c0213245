import Foundation

/// One placement problem: statistics, topology, objective.
public struct PlacementProblem: Sendable {
    public var statistics: TraceStatistics
    public var ranks: Int
    public var nodes: Int
    /// Experts of one layer a rank may hold (default ⌈E/G⌉).
    public var capacity: Int
    public var objective: PlacementObjective
    /// The load-balance bound: `loadLimits[l]` is the most routed (token, expert) rows of layer l one rank may take
    /// (`statistics.load`); nil: no bound.
    public var loadLimits: [Double]?
    /// The `--max-load` factor the limits came from (max/mean load per rank), for messages.
    public var maxLoadFactor: Double?
    /// How many ranks' worth of the load bound each rank may take (nil: one each): a side of an uneven bisection
    /// split stands for several ranks. Only local search reads it; exact and the ILP refuse it.
    public var rankShares: [Double]?

    public init(statistics: TraceStatistics, ranks: Int, nodes: Int = 1, capacity: Int? = nil, coactivationWeight: Double = 0,
                maxLoad: Double? = nil) {
        self.statistics = statistics
        self.ranks = ranks
        self.nodes = nodes
        self.capacity = capacity ?? (statistics.experts + ranks - 1) / ranks
        objective = PlacementObjective(ranksPerNode: max(ranks / max(nodes, 1), 1), coactivationWeight: coactivationWeight)
        maxLoadFactor = maxLoad
        loadLimits = maxLoad.map { f in statistics.load.map { f * $0.reduce(0, +) / Double(max(ranks, 1)) } }
    }

    /// Checks that the topology can hold the experts, and that no single expert breaks the load bound.
    public func validate() throws {
        guard ranks >= 1 else { throw PlacementError.invalid("--ranks must be at least 1") }
        guard nodes >= 1, ranks % nodes == 0 else { throw PlacementError.invalid("\(ranks) ranks do not split evenly over \(nodes) nodes") }
        guard capacity * ranks >= statistics.experts else {
            throw PlacementError.invalid("\(ranks) ranks × \(capacity) experts per rank cannot hold \(statistics.experts) experts per layer")
        }
        if let f = maxLoadFactor, f < 1 { throw PlacementError.invalid("--max-load must be at least 1 (max/mean load per rank), got \(f)") }
        guard loadLimits != nil else { return }
        for (l, row) in statistics.load.enumerated() {
            if let e = row.indices.first(where: { row[$0] > loadLimit(l) }) {
                let mean = row.reduce(0, +) / Double(ranks)
                throw PlacementError.invalid(String(format: "expert %d of layer %d alone carries %.2f× the mean rank load; --max-load %@ cannot be met",
                                                    e, l, row[e] / mean, maxLoadFactor.map { String(format: "%g", $0) } ?? "given"))
            }
        }
    }

    /// The most load one rank may take in layer l (a relative 1e-9 allowance for rounding; infinite without a bound).
    public func loadLimit(_ l: Int) -> Double { loadLimits.map { $0[l] * (1 + 1e-9) } ?? .infinity }

    /// The most load rank r may take in layer l: its share of the bound.
    public func loadLimit(_ l: Int, rank r: Int) -> Double { loadLimit(l) * (rankShares?[r] ?? 1) }

    /// Load of layer l on each rank under `placement`.
    public func rankLoads(_ placement: Placement, layer l: Int) -> [Double] {
        var loads = [Double](repeating: 0, count: ranks)
        for (a, r) in placement.rankOf[l].enumerated() { loads[r] += statistics.load[l][a] }
        return loads
    }

    /// Σ over layers and ranks of the load above the bound (0: the plan keeps it).
    public func overload(_ placement: Placement) -> Double {
        guard loadLimits != nil else { return 0 }
        return (0..<statistics.layers).reduce(0.0) { acc, l in
            rankLoads(placement, layer: l).enumerated().reduce(acc) { $0 + max(0, $1.element - loadLimit(l, rank: $1.offset)) }
        }
    }

    /// The error a solver gives when it ends above the bound (`proven`: none exists).
    func loadBoundMissed(_ solver: String, proven: Bool = false) -> PlacementError {
        let bound = "--max-load " + (maxLoadFactor.map { String(format: "%g", $0) } ?? "")
        return .invalid(proven ? "no placement keeps every rank within \(bound) (\(solver) solver)"
                               : "the \(solver) solver found no placement within \(bound); a larger bound or --solver exact/ilp may")
    }
}

/// What a solver returns.
public struct PlacementSolution: Sendable {
    public var placement: Placement
    public var objective: Double
    /// A proven lower bound on the objective, where the solver has one.
    public var lowerBound: Double?
    public var solver: String

    public init(placement: Placement, objective: Double, lowerBound: Double?, solver: String) {
        self.placement = placement
        self.objective = objective
        self.lowerBound = lowerBound
        self.solver = solver
    }
}

/// A placement policy: inputs in, placement out, no I/O.
public protocol PlacementSolver {
    var name: String { get }
    func solve(_ problem: PlacementProblem) throws -> PlacementSolution
}

/// Rank r holds experts ⌊rE/G⌋ ..< ⌊(r+1)E/G⌋ of every layer.
public struct ContiguousSolver: PlacementSolver {
    public init() {}
    public var name: String { "contiguous" }
    public func solve(_ p: PlacementProblem) throws -> PlacementSolution {
        let placement = Placement.contiguous(layers: p.statistics.layers, experts: p.statistics.experts, ranks: p.ranks)
        return PlacementSolution(placement: placement, objective: p.objective.cost(placement, p.statistics), lowerBound: nil, solver: name)
    }
}

/// Expert e of every layer on rank e mod G.
public struct RoundRobinSolver: PlacementSolver {
    public init() {}
    public var name: String { "round-robin" }
    public func solve(_ p: PlacementProblem) throws -> PlacementSolution {
        let placement = Placement.roundRobin(layers: p.statistics.layers, experts: p.statistics.experts, ranks: p.ranks)
        return PlacementSolution(placement: placement, objective: p.objective.cost(placement, p.statistics), lowerBound: nil, solver: name)
    }
}

/// Exact optimum when each layer's ways to group experts into ranks (and ranks into nodes) are few.
///
/// The cost only asks which experts share a rank and which share a node, so a layer's state is an unlabeled
/// partition of its experts into G non-empty groups of at most the capacity (of exactly E/G when E fills the ranks;
/// every group fits every rank either way), dealt into the nodes. Between two layers the best labeling is an
/// assignment problem over the groups (on several nodes, over the nodes, each pair scored by its mass plus the best
/// assignment of its ranks), and the labelings of successive layer pairs can be chosen independently, so a dynamic
/// program over the layers' states finds the optimum. With one expert per rank on one node this is a chain of
/// assignment problems.
public struct ExactSolver: PlacementSolver {
    /// Largest number of states per layer (groupings into ranks, times their dealings into nodes) it takes on.
    public var maxStates: Int
    /// When to give up (the program has no plan before it ends); nil: never.
    public var deadline: Date?
    /// Polled as the program runs: true gives up (Ctrl-C).
    public var shouldStop: () -> Bool
    /// Called as the program runs with the work done and all of it (states of each layer pair; a progress line).
    public var progress: ((Int, Int) -> Void)?

    public init(maxStates: Int = 6000, deadline: Date? = nil, progress: ((Int, Int) -> Void)? = nil, shouldStop: @escaping () -> Bool = { false }) {
        self.maxStates = maxStates
        self.deadline = deadline
        self.progress = progress
        self.shouldStop = shouldStop
    }
    public var name: String { "exact" }

    /// Partitions of `E` experts into `G` non-empty groups of at most `capacity` each (exactly E/G when that is the
    /// capacity), or nil when there are more than `limit`.
    public static func partitions(experts: Int, ranks: Int, capacity: Int, limit: Int) -> [[[Int]]]? {
        guard ranks >= 1, experts >= ranks, capacity * ranks >= experts else { return nil }
        // Count before enumerating any: the group of the first expert has j members, the rest form k - 1 groups.
        var memo: [Int: Double] = [:]
        func binomial(_ n: Int, _ k: Int) -> Double { (0..<k).reduce(1.0) { $0 * Double(n - $1) / Double($1 + 1) } }
        func count(_ n: Int, _ k: Int) -> Double {
            if n == 0 { return k == 0 ? 1 : 0 }
            if k == 0 || n > k * capacity { return 0 }
            if let v = memo[n * (ranks + 1) + k] { return v }
            let v = (1...min(capacity, n)).reduce(0.0) { $0 + binomial(n - 1, $1 - 1) * count(n - $1, k - 1) }
            memo[n * (ranks + 1) + k] = v
            return v
        }
        guard count(experts, ranks) <= Double(limit) else { return nil }
        var out: [[[Int]]] = []
        func extend(_ remaining: [Int], _ acc: [[Int]]) {
            let groups = ranks - acc.count
            if remaining.isEmpty { if groups == 0 { out.append(acc) }; return }
            guard groups > 0 else { return }
            let first = remaining[0], rest = Array(remaining.dropFirst())
            // Leave each later group at least one expert and no more than its capacity.
            let most = min(capacity, remaining.count - (groups - 1)), least = max(1, remaining.count - (groups - 1) * capacity)
            guard least <= most else { return }
            for size in least...most {
                combinations(rest, size - 1) { combo in
                    extend(rest.filter { !combo.contains($0) }, acc + [[first] + combo])
                }
            }
        }
        extend(Array(0..<experts), [])
        return out
    }

    static func combinations(_ items: [Int], _ k: Int, _ body: ([Int]) -> Void) {
        var chosen: [Int] = []
        func go(_ start: Int) {
            if chosen.count == k { body(chosen); return }
            guard start < items.count else { return }
            for i in start..<items.count where items.count - i >= k - chosen.count {
                chosen.append(items[i]); go(i + 1); chosen.removeLast()
            }
        }
        go(0)
    }

    /// The ways to deal `groups` groups into `nodes` nodes of equal size, each listing node 0's groups first, then
    /// node 1's, and so on (every grouping once: groups ascending within a node, nodes by their first group).
    static func nodeGroupings(groups: Int, nodes: Int) -> [[Int]] {
        guard nodes > 1 else { return [Array(0..<groups)] }
        let size = groups / nodes
        var out: [[Int]] = []
        func extend(_ remaining: [Int], _ acc: [Int]) {
            guard let first = remaining.first else { out.append(acc); return }
            let rest = Array(remaining.dropFirst())
            combinations(rest, size - 1) { combo in extend(rest.filter { !combo.contains($0) }, acc + [first] + combo) }
        }
        extend(Array(0..<groups), [])
        return out
    }

    public func solve(_ p: PlacementProblem) throws -> PlacementSolution {
        let s = p.statistics, e = s.experts, g = p.ranks, layers = s.layers
        let perNode = p.objective.ranksPerNode, nodes = g / perNode
        guard p.rankShares == nil else { throw PlacementError.invalid("the exact solver takes one load share per rank") }
        // On several nodes a state also says which groups share a node: its groups n·perNode ..< (n+1)·perNode.
        let dealings = Self.nodeGroupings(groups: g, nodes: nodes)
        guard let partitions = Self.partitions(experts: e, ranks: g, capacity: p.capacity, limit: maxStates / dealings.count) else {
            throw PlacementError.invalid("the exact solver needs at least as many experts as ranks and at most \(maxStates) groupings per layer")
        }
        let states = partitions.flatMap { part in dealings.map { order in order.map { part[$0] } } }
        let lambda = p.objective.coactivationWeight
        // Co-activation a state keeps within layer l (on a rank, and on a node); -∞ when a rank's load breaks the
        // bound (not a state of that layer).
        func inside(_ l: Int, _ st: [[Int]]) -> Double {
            if p.loadLimits != nil, st.contains(where: { $0.reduce(0.0) { $0 + s.load[l][$1] } > p.loadLimit(l) }) { return -.infinity }
            guard lambda != 0 else { return 0 }
            func pairs(_ block: [Int]) -> Double {
                var v = 0.0
                for a in block { for b in block where a < b { v += s.coactivation[l][a * e + b] } }
                return v
            }
            var v = st.reduce(0.0) { $0 + pairs($1) }
            if nodes > 1 { for n in 0..<nodes { v += pairs(st[(n * perNode)..<((n + 1) * perNode)].flatMap { $0 }) } }
            return lambda * v
        }
        // Mass two states keep between adjacent layers, from the G × G masses between their groups: the best
        // assignment of groups (on several nodes: of nodes, each scored by its mass plus the best assignment of
        // its ranks), with the group matching when asked for.
        var rankWork = AssignmentWorkspace(size: nodes > 1 ? perNode : g), nodeWork = AssignmentWorkspace(size: nodes)
        var sub = [Double](repeating: 0, count: perNode * perNode), nodeScore = [Double](repeating: 0, count: nodes * nodes)
        func kept(_ score: [Double], matching: Bool = false) -> (value: Double, match: [Int]) {
            guard nodes > 1 else {
                let best = rankWork.maximum(score)
                return (best.value, best.match)
            }
            for n in 0..<nodes {
                for m in 0..<nodes {
                    var sum = 0.0
                    for a in 0..<perNode { for b in 0..<perNode { sub[a * perNode + b] = score[(n * perNode + a) * g + m * perNode + b]; sum += sub[a * perNode + b] } }
                    nodeScore[n * nodes + m] = sum + rankWork.maximum(sub).value
                }
            }
            let best = nodeWork.maximum(nodeScore)
            guard matching else { return (best.value, []) }
            var match = [Int](repeating: 0, count: g)
            for (n, m) in best.match.enumerated() {
                for a in 0..<perNode { for b in 0..<perNode { sub[a * perNode + b] = score[(n * perNode + a) * g + m * perNode + b] } }
                for (a, b) in rankWork.maximum(sub).match.enumerated() { match[n * perNode + a] = m * perNode + b }
            }
            return (best.value, match)
        }
        // Dynamic program maximising kept mass (the cost is the hop-weighted total less it). Per layer pair,
        // `outflow[i][h * e + b]` is the mass state i's group h sends to expert b, so a pair of states' G × G group
        // masses take G·E additions.
        let n = states.count
        var groupOf = [[Int]](repeating: [Int](repeating: 0, count: e), count: n)
        for (i, st) in states.enumerated() { for (h, block) in st.enumerated() { for a in block { groupOf[i][a] = h } } }
        var score = [Double](repeating: 0, count: g * g), outflow = [Double](repeating: 0, count: n * g * e)
        func groupMasses(_ i: Int, _ j: Int) {
            let to = groupOf[j]
            for k in 0..<(g * g) { score[k] = 0 }
            for h in 0..<g {
                let base = (i * g + h) * e
                for b in 0..<e { score[h * g + to[b]] += outflow[base + b] }
            }
        }
        func fillOutflow(_ l: Int) {
            let t = s.transitions[l]
            for i in 0..<n { for h in 0..<g { for b in 0..<e { outflow[(i * g + h) * e + b] = states[i][h].reduce(0.0) { $0 + t[$1 * e + b] } } } }
        }
        var value = states.map { inside(0, $0) }
        var back: [[Int]] = []
        let started = Date(), work = (layers - 1) * n
        for l in 0..<(layers - 1) {
            fillOutflow(l)
            var next = Array(repeating: -Double.infinity, count: n), arg = Array(repeating: 0, count: n)
            for j in 0..<n {
                let done = l * n + j
                progress?(done, work)
                if shouldStop() { throw PlacementError.unsolved("interrupted before the exact solver finished (it has no plan until it ends)") }
                if let deadline {
                    let now = Date(), elapsed = now.timeIntervalSince(started)
                    // Every state costs about the same: past half a second the pace so far tells whether it can end
                    // in time (to a few per cent); give up at once when it would need a tenth more than there is.
                    let projected = done > 0 ? elapsed * Double(work) / Double(done) : 0
                    if now > deadline || (elapsed > 0.5 && projected > 1.1 * deadline.timeIntervalSince(started)) {
                        throw PlacementError.unsolved(String(format: "the exact solver would take about %.0f s, over the time limit (%d groupings per layer); a longer --time-limit, or --solver auto or ilp for a plan with its gap", projected, n))
                    }
                }
                let here = inside(l + 1, states[j])
                guard here > -.infinity else { continue }
                for i in 0..<n where value[i] > -.infinity {
                    groupMasses(i, j)
                    let v = value[i] + kept(score).value + here
                    if v > next[j] { next[j] = v; arg[j] = i }
                }
            }
            value = next
            back.append(arg)
        }
        guard let last = value.indices.max(by: { value[$0] < value[$1] }), value[last] > -.infinity else { throw p.loadBoundMissed(name, proven: true) }
        var chosen = [last]
        for l in stride(from: layers - 2, through: 0, by: -1) { chosen.append(back[l][chosen.last!]) }
        chosen.reverse()
        // Labels: layer 0's groups are ranks 0..G-1 (node n holding groups n·perNode...); each next layer's groups
        // take their matched group's rank, so matched nodes stay on one node.
        var rankOf = Array(repeating: Array(repeating: 0, count: e), count: layers)
        var groupRank = Array(0..<g)
        for (r, block) in states[chosen[0]].enumerated() { for a in block { rankOf[0][a] = r } }
        for l in 1..<max(layers, 1) {
            // One pair of states: their group masses directly (the program's outflows are per layer and gone).
            let from = states[chosen[l - 1]], to = states[chosen[l]], t = s.transitions[l - 1]
            for h in 0..<g { for k in 0..<g { score[h * g + k] = from[h].reduce(0.0) { acc, a in to[k].reduce(acc) { $0 + t[a * e + $1] } } } }
            let match = kept(score, matching: true).match
            var next = Array(repeating: 0, count: g)
            for (bi, bj) in match.enumerated() { next[bj] = groupRank[bi] }
            for (bj, block) in states[chosen[l]].enumerated() { for a in block { rankOf[l][a] = next[bj] } }
            groupRank = next
        }
        let placement = Placement(rankOf: rankOf, ranks: g)
        let cost = p.objective.cost(placement, s)
        return PlacementSolution(placement: placement, objective: cost, lowerBound: cost, solver: name)
    }
}

/// Improves any placement by swapping two experts of one layer between ranks while the cost falls (and, where the
/// ranks have room to spare, moving one to a rank below its capacity); with time left, perturbs the best placement
/// found (a few random swaps per layer) and descends again (iterated local search), keeping the best. Every step
/// keeps each rank within its capacity, so plans stay feasible.
public struct LocalSearchSolver: PlacementSolver {
    public var start: Placement?
    /// When to stop perturbing (nil: one descent only).
    public var deadline: Date?
    /// Called with the best objective after each descent (a progress line).
    public var progress: ((Double) -> Void)?
    /// Polled between moves: true stops with the best placement so far (Ctrl-C).
    public var shouldStop: () -> Bool
    public var seed: UInt64
    /// Swaps only, so every rank keeps the count of experts it starts with (a bisection's sides have set sizes).
    public var keepsCounts: Bool

    public init(start: Placement? = nil, deadline: Date? = nil, seed: UInt64 = 1, keepsCounts: Bool = false,
                progress: ((Double) -> Void)? = nil, shouldStop: @escaping () -> Bool = { false }) {
        self.start = start
        self.keepsCounts = keepsCounts
        self.deadline = deadline
        self.seed = seed
        self.progress = progress
        self.shouldStop = shouldStop
    }

    public var name: String { "local" }

    /// Perturbations in a row without improvement after which the search stops before its deadline.
    public static let patience = 300

    public func solve(_ p: PlacementProblem) throws -> PlacementSolution {
        let s = p.statistics, e = s.experts, o = p.objective
        var best = start ?? Placement.contiguous(layers: s.layers, experts: e, ranks: p.ranks)
        descend(&best, p)
        var bestCost = o.cost(best, s), bestOver = p.overload(best)
        progress?(bestCost)
        var rng = SplitMixRNG(seed: seed)
        var stalled = 0
        while let deadline, Date() < deadline, !shouldStop(), e > 1, stalled < Self.patience {
            var candidate = best
            for l in 0..<s.layers {
                for _ in 0..<max(1, e / 8) {
                    let a = Int(rng.next() % UInt64(e)), b = Int(rng.next() % UInt64(e))
                    candidate.rankOf[l].swapAt(a, b)
                }
            }
            descend(&candidate, p)
            let cost = o.cost(candidate, s), over = p.overload(candidate)
            if over < bestOver - 1e-9 || (over <= bestOver + 1e-9 && cost < bestCost - 1e-12) {
                best = candidate
                bestCost = cost
                bestOver = over
                stalled = 0
                progress?(bestCost)
            } else {
                stalled += 1
            }
        }
        guard bestOver == 0 else { throw p.loadBoundMissed(name) }
        return PlacementSolution(placement: best, objective: bestCost, lowerBound: nil, solver: name)
    }

    /// Pairwise swaps (and moves to ranks with room) within layers until none lowers the cost (or a stop is asked
    /// for). Under a load bound a step must first not raise the load above the bound: one that lowers it is taken
    /// even at a cost, so a start above the bound is repaired where swaps and moves can.
    ///
    /// While one layer's experts are swapped, its neighbours stay put, so what an expert costs on each rank through
    /// its transitions is a table made once per layer visit; the co-activation part is a table updated after each
    /// step. A swap or move is then judged in O(1) instead of O(E).
    func descend(_ placement: inout Placement, _ p: PlacementProblem) {
        let s = p.statistics, e = s.experts, g = p.ranks, o = p.objective, lambda = o.coactivationWeight
        var hop = [Double](repeating: 0, count: g * g)
        for r in 0..<g { for q in 0..<g { hop[r * g + q] = o.hop(r, q) } }
        var through = [Double](repeating: 0, count: e * g), together = through
        // Under a load bound: the layer's rank loads and each rank's limit.
        var loads = [Double](repeating: 0, count: g), limits = loads
        let moves = p.capacity * g > e && !keepsCounts
        var improved = true
        while improved && !shouldStop() && !(deadline.map { Date() > $0 } ?? false) {
            improved = false
            for l in 0..<s.layers {
                Self.tables(layer: l, placement, s, hop: hop, ranks: g, lambda: lambda, through: &through, together: &together)
                if p.loadLimits != nil {
                    loads = p.rankLoads(placement, layer: l)
                    for r in 0..<g { limits[r] = p.loadLimit(l, rank: r) }
                }
                // The neighbours stay put while this layer changes: work on its row and write it back.
                var row = placement.rankOf[l]
                let coactivation = s.coactivation[l], load = s.load[l]
                /// Whether a step that changes the cost by `delta` and rank loads by `moved` on ra and rb is taken.
                func accepted(_ delta: Double, _ ra: Int, _ rb: Int, _ moved: Double) -> Bool {
                    guard p.loadLimits != nil else { return delta < -1e-12 }
                    let before = max(0, loads[ra] - limits[ra]) + max(0, loads[rb] - limits[rb])
                    let after = max(0, loads[ra] - moved - limits[ra]) + max(0, loads[rb] + moved - limits[rb])
                    guard after < before - 1e-9 || (after <= before + 1e-9 && delta < -1e-12) else { return false }
                    loads[ra] -= moved
                    loads[rb] += moved
                    return true
                }
                for a in 0..<e {
                    for b in (a + 1)..<e where row[a] != row[b] {
                        let ra = row[a], rb = row[b]
                        var delta = through[a * g + rb] + through[b * g + ra] - through[a * g + ra] - through[b * g + rb]
                        if lambda != 0 {
                            // The tables count the a-b pair at the other's old rank; its own hop does not change.
                            delta += together[a * g + rb] + together[b * g + ra] - together[a * g + ra] - together[b * g + rb]
                                + 2 * lambda * coactivation[a * e + b] * hop[ra * g + rb]
                        }
                        guard accepted(delta, ra, rb, load[a] - load[b]) else { continue }
                        row[a] = rb
                        row[b] = ra
                        improved = true
                        guard lambda != 0 else { continue }
                        for x in 0..<e {
                            let wa = lambda * coactivation[x * e + a], wb = lambda * coactivation[x * e + b]
                            guard wa != 0 || wb != 0 else { continue }
                            for r in 0..<g {
                                together[x * g + r] += (hop[r * g + rb] - hop[r * g + ra]) * (x == a ? 0 : wa)
                                    + (hop[r * g + ra] - hop[r * g + rb]) * (x == b ? 0 : wb)
                            }
                        }
                    }
                }
                // With room to spare (capacity × G > E), an expert may also move to a rank below its capacity; no
                // rank is left without experts of the layer (as in the ILP).
                if moves {
                    var count = [Int](repeating: 0, count: g)
                    for r in row { count[r] += 1 }
                    for a in 0..<e where count[row[a]] > 1 || e < g {
                        let ra = row[a]
                        for rb in 0..<g where rb != ra && count[rb] < p.capacity {
                            var delta = through[a * g + rb] - through[a * g + ra]
                            if lambda != 0 { delta += together[a * g + rb] - together[a * g + ra] }
                            guard accepted(delta, ra, rb, load[a]) else { continue }
                            row[a] = rb
                            count[ra] -= 1
                            count[rb] += 1
                            improved = true
                            if lambda != 0 {
                                for x in 0..<e where x != a {
                                    let w = lambda * coactivation[x * e + a]
                                    guard w != 0 else { continue }
                                    for r in 0..<g { together[x * g + r] += w * (hop[r * g + rb] - hop[r * g + ra]) }
                                }
                            }
                            break
                        }
                    }
                }
                placement.rankOf[l] = row
            }
        }
    }

    /// For layer l with its neighbours where `placement` has them: `through[a * g + r]`, what expert a's transitions
    /// cost if it sat on rank r, and `together[a * g + r]`, the same for its co-activations with the layer's other
    /// experts where they are now.
    static func tables(layer l: Int, _ placement: Placement, _ s: TraceStatistics, hop: [Double], ranks g: Int, lambda: Double,
                       through: inout [Double], together: inout [Double]) {
        let e = s.experts
        var mass = [Double](repeating: 0, count: g)
        for a in 0..<e {
            for r in 0..<g { mass[r] = 0 }
            if l > 0 { for x in 0..<e { mass[placement.rankOf[l - 1][x]] += s.transitions[l - 1][x * e + a] } }
            if l + 1 < s.layers { for y in 0..<e { mass[placement.rankOf[l + 1][y]] += s.transitions[l][a * e + y] } }
            for r in 0..<g { through[a * g + r] = (0..<g).reduce(0.0) { $0 + mass[$1] * hop[$1 * g + r] } }
            guard lambda != 0 else { continue }
            for r in 0..<g { mass[r] = 0 }
            for x in 0..<e where x != a { mass[placement.rankOf[l][x]] += s.coactivation[l][a * e + x] }
            for r in 0..<g { together[a * g + r] = lambda * (0..<g).reduce(0.0) { $0 + mass[$1] * hop[$1 * g + r] } }
        }
    }
}

/// SplitMix64, for reproducible perturbations.
struct SplitMixRNG {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Maximum-weight perfect matching of a square score matrix (Hungarian algorithm, O(n³)).
public enum Assignment {
    /// The best `match[i]` (row i to column match[i]) and its total score.
    public static func maximum(_ score: [[Double]]) -> (match: [Int], value: Double) {
        var workspace = AssignmentWorkspace(size: score.count)
        return workspace.maximum(score.flatMap { $0 })
    }
}

/// The Hungarian algorithm's working arrays for one size, kept across calls: the exact solver solves millions of
/// small assignment problems.
public struct AssignmentWorkspace {
    public let size: Int
    var u: [Double], v: [Double], minv: [Double], p: [Int], way: [Int], used: [Bool], match: [Int]

    public init(size n: Int) {
        self.size = n
        u = [Double](repeating: 0, count: n + 1)
        v = u
        minv = u
        p = [Int](repeating: 0, count: n + 1)
        way = p
        used = [Bool](repeating: false, count: n + 1)
        match = [Int](repeating: 0, count: n)
    }

    /// The best `match[i]` and its total for a row-major `size × size` score matrix.
    public mutating func maximum(_ score: [Double]) -> (match: [Int], value: Double) {
        let n = size
        guard n > 0 else { return ([], 0) }
        if n == 1 { return ([0], score[0]) }
        if n <= 3 { return small(score) }
        // Minimise the negated scores with potentials (1-based arrays as in the textbook form).
        for j in 0...n { u[j] = 0; v[j] = 0; p[j] = 0; way[j] = 0 }
        for i in 1...n {
            p[0] = i
            var j0 = 0
            for j in 0...n { minv[j] = .infinity; used[j] = false }
            repeat {
                used[j0] = true
                let i0 = p[j0]
                var delta = Double.infinity, j1 = 0
                for j in 1...n where !used[j] {
                    let cur = -score[(i0 - 1) * n + j - 1] - u[i0] - v[j]
                    if cur < minv[j] { minv[j] = cur; way[j] = j0 }
                    if minv[j] < delta { delta = minv[j]; j1 = j }
                }
                for j in 0...n {
                    if used[j] { u[p[j]] += delta; v[j] -= delta } else { minv[j] -= delta }
                }
                j0 = j1
            } while p[j0] != 0
            repeat {
                let j1 = way[j0]
                p[j0] = p[j1]
                j0 = j1
            } while j0 != 0
        }
        var total = 0.0
        for j in 1...n { match[p[j] - 1] = j - 1 }
        for i in 0..<n { total += score[i * n + match[i]] }
        return (match, total)
    }

    static let threes = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]

    /// Two or three rows: every permutation, cheaper than the general method (the exact solver's node pairs).
    mutating func small(_ score: [Double]) -> (match: [Int], value: Double) {
        if size == 2 {
            let straight = score[0] + score[3], crossed = score[1] + score[2]
            if straight >= crossed { match[0] = 0; match[1] = 1; return (match, straight) }
            match[0] = 1; match[1] = 0
            return (match, crossed)
        }
        var best = -Double.infinity
        for (a, b, c) in Self.threes {
            let v = score[a] + score[3 + b] + score[6 + c]
            if v > best { best = v; match[0] = a; match[1] = b; match[2] = c }
        }
        return (match, best)
    }
}
