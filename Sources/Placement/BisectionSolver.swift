import Foundation

/// ExFlow-style recursive bisection: split the ranks in two (whole nodes first, then ranks within a node), split
/// each layer's experts between the sides so that the least transition (and co-activation) mass crosses, and
/// recurse into each side. Each split is a two-rank placement of the side's experts, solved exactly where the
/// groupings are few and by local search otherwise.
///
/// Any rank count works: an odd count of nodes or ranks splits one short of half, and each side takes experts in
/// proportion to its ranks (within what they can hold at `capacity` each) and the matching share of the load bound.
public struct BisectionSolver: PlacementSolver {
    public var deadline: Date?
    /// Polled by the splits' local searches: true ends them early with their best so far (Ctrl-C).
    public var shouldStop: () -> Bool

    public init(deadline: Date? = nil, shouldStop: @escaping () -> Bool = { false }) {
        self.deadline = deadline
        self.shouldStop = shouldStop
    }
    public var name: String { "bisect" }

    public func solve(_ p: PlacementProblem) throws -> PlacementSolution {
        let s = p.statistics, e = s.experts
        guard p.capacity * p.ranks >= e, p.rankShares == nil else {
            throw PlacementError.invalid("bisection needs ranks that hold every expert, with one load share each")
        }
        var rankOf = Array(repeating: Array(repeating: 0, count: e), count: s.layers)
        try split(p, members: Array(repeating: Array(0..<e), count: s.layers), ranks: 0..<p.ranks, into: &rankOf)
        var placement = Placement(rankOf: rankOf, ranks: p.ranks)
        if p.overload(placement) > 0 {
            // A split that could not keep the bound was made without it: repair by swaps (or say it cannot be done).
            placement = try LocalSearchSolver(start: placement, shouldStop: shouldStop).solve(p).placement
        }
        return PlacementSolution(placement: placement, objective: p.objective.cost(placement, s), lowerBound: nil, solver: name)
    }

    /// Places `members[l]` (experts of layer l) on `ranks`.
    func split(_ p: PlacementProblem, members: [[Int]], ranks: Range<Int>, into rankOf: inout [[Int]]) throws {
        if ranks.count == 1 {
            for (l, m) in members.enumerated() { for a in m { rankOf[l][a] = ranks.lowerBound } }
            return
        }
        let s = p.statistics, e = s.experts, n = members[0].count, layers = s.layers
        guard n > 0 else { return }  // more ranks than experts: these ranks stay empty
        // Whole nodes first: a range of several nodes splits between nodes, a range within one node between ranks.
        let perNode = p.objective.ranksPerNode
        let leftRanks = ranks.count > perNode ? ranks.count / perNode / 2 * perNode : ranks.count / 2
        let rightRanks = ranks.count - leftRanks
        // Experts in proportion to ranks, within what each side can hold (n ≤ capacity × ranks.count, so this fits).
        let proportional = Int((Double(n * leftRanks) / Double(ranks.count)).rounded())
        let leftExperts = min(p.capacity * leftRanks, max(n - p.capacity * rightRanks, proportional))
        // The two-rank problem over this range's experts, relabelled 0..<n per layer.
        var transitions = [[Double]](repeating: [Double](repeating: 0, count: n * n), count: max(layers - 1, 0))
        var coactivation = [[Double]](repeating: [Double](repeating: 0, count: n * n), count: layers)
        var load = [[Double]](repeating: [Double](repeating: 0, count: n), count: layers)
        for l in 0..<layers {
            for (i, a) in members[l].enumerated() {
                load[l][i] = s.load[l][a]
                for (j, b) in members[l].enumerated() { coactivation[l][i * n + j] = s.coactivation[l][a * e + b] }
                if l + 1 < layers { for (j, b) in members[l + 1].enumerated() { transitions[l][i * n + j] = s.transitions[l][a * e + b] } }
            }
        }
        let sub = TraceStatistics(layers: layers, experts: n, transitions: transitions, coactivation: coactivation, load: load)
        var half = PlacementProblem(statistics: sub, ranks: 2, capacity: max(leftExperts, n - leftExperts),
                                    coactivationWeight: p.objective.coactivationWeight)
        half.maxLoadFactor = p.maxLoadFactor
        // This subtree makes ranks.count - 1 splits: this one gets its share of the time left.
        let share = deadline.map { Date().addingTimeInterval(max(0, $0.timeIntervalSinceNow) / Double(ranks.count - 1)) }
        let even = leftRanks == rightRanks && 2 * leftExperts == n
        if even {
            // Each side stands for leftRanks ranks: it may take that many ranks' worth of the bound.
            half.loadLimits = p.loadLimits.map { $0.map { $0 * Double(leftRanks) } }
        } else {
            half.loadLimits = p.loadLimits
            half.rankShares = [Double(leftRanks), Double(rightRanks)]
        }
        // The last split (one rank a side) meets the bound itself, so a plan made of feasible splits is feasible.
        let start = Placement(rankOf: Array(repeating: (0..<n).map { $0 < leftExperts ? 0 : 1 }, count: layers), ranks: 2)
        func solveSplit(_ q: PlacementProblem) -> PlacementSolution? {
            (even ? try? ExactSolver().solve(q) : nil) ?? (try? LocalSearchSolver(start: start, deadline: share, keepsCounts: true, shouldStop: shouldStop).solve(q))
        }
        var free = half
        free.loadLimits = nil
        guard let two = solveSplit(half) ?? solveSplit(free) else { throw PlacementError.invalid("bisection could not split \(n) experts") }
        let middle = ranks.lowerBound + leftRanks
        var left = [[Int]](repeating: [], count: layers), right = left
        for l in 0..<layers {
            for (i, a) in members[l].enumerated() {
                if two.placement.rankOf[l][i] == 0 { left[l].append(a) } else { right[l].append(a) }
            }
        }
        try split(p, members: left, ranks: ranks.lowerBound..<middle, into: &rankOf)
        try split(p, members: right, ranks: middle..<ranks.upperBound, into: &rankOf)
    }
}
