import Foundation
@testable import Placement
import Testing

/// A random trace: `tokens` tokens through `layers` layers of `experts` experts, top-k with random weights.
func randomTrace(layers: Int, experts: Int, topK: Int, tokens: Int, seed: UInt64) -> RoutingTrace {
    var s = seed
    func next() -> UInt64 { s = s &* 6364136223846793005 &+ 1442695040888963407; return s >> 33 }
    let seq = (0..<tokens).map { _ in
        (0..<layers).map { _ -> RoutingTrace.Choice in
            var ids: [Int] = []
            while ids.count < topK { let e = Int(next() % UInt64(experts)); if !ids.contains(e) { ids.append(e) } }
            let w = Float(next() % 1000) / 2000 + 0.5
            return RoutingTrace.Choice(experts: ids, weights: topK == 1 ? [1] : [w] + Array(repeating: (1 - w) / Float(topK - 1), count: topK - 1))
        }
    }
    return RoutingTrace(sequences: [.init(name: "r", tokens: seq)], layers: layers, experts: experts, topK: topK)
}

/// A seedable generator for the bootstrap (a 64-bit LCG's high bits).
struct LCG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        let hi = state >> 32
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return hi << 32 | state >> 32
    }
}

/// Every placement with exactly E/G experts per rank in every layer, or with at most `capacity` (small instances only).
func allPlacements(layers: Int, experts: Int, ranks: Int, capacity: Int? = nil) -> [Placement] {
    let c = capacity ?? experts / ranks
    var rows: [[Int]] = []
    func fill(_ row: [Int], _ counts: [Int]) {
        if row.count == experts { rows.append(row); return }
        for r in 0..<ranks where counts[r] < c { var n = counts; n[r] += 1; fill(row + [r], n) }
    }
    fill([], Array(repeating: 0, count: ranks))
    var out: [[[Int]]] = [[]]
    for _ in 0..<layers { out = out.flatMap { prefix in rows.map { prefix + [$0] } } }
    return out.map { Placement(rankOf: $0, ranks: ranks) }
}

@Suite struct SolverTests {
    /// Also where the ranks have room to spare (5 experts on 2 or 3 ranks, 4 on 2 ranks of 3): groups of any size up
    /// to the capacity, none empty.
    /// And on several nodes (4 experts on 4 ranks in 2 nodes; 5 on 4 in 2; 6 on 3 ranks that are each a node).
    @Test(arguments: [(4, 2, 1, 0.0, nil, 1), (4, 2, 2, 0.0, nil, 1), (4, 2, 2, 0.7, nil, 1), (6, 3, 2, 0.3, nil, 1), (4, 4, 2, 0.0, nil, 1),
                      (6, 2, 2, 0.5, nil, 1), (5, 2, 2, 0.0, nil, 1), (5, 3, 2, 0.3, nil, 1), (4, 2, 2, 0.4, 3, 1),
                      (4, 4, 2, 0.0, nil, 2), (4, 4, 2, 0.6, nil, 2), (5, 4, 2, 0.3, nil, 2), (6, 3, 2, 0.4, nil, 3)] as [(Int, Int, Int, Double, Int?, Int)])
    func exactEqualsBruteForce(experts: Int, ranks: Int, topK: Int, coactivation: Double, capacity: Int?, nodes: Int) throws {
        for seed in 1...3 {
            let layers = experts >= 5 && ranks >= 3 || experts == 6 ? 2 : 3  // brute force over at most 240² or 24³ placements
            let trace = randomTrace(layers: layers, experts: experts, topK: topK, tokens: 40, seed: UInt64(seed * 7 + experts))
            let problem = PlacementProblem(statistics: TraceStatistics(trace), ranks: ranks, nodes: nodes, capacity: capacity, coactivationWeight: coactivation)
            let exact = try ExactSolver().solve(problem)
            let best = allPlacements(layers: layers, experts: experts, ranks: ranks, capacity: problem.capacity)
                .filter { p in p.rankOf.allSatisfy { Set($0).count == ranks } }  // no rank left without experts
                .map { problem.objective.cost($0, problem.statistics) }.min()!
            #expect(abs(exact.objective - best) < 1e-9, "seed \(seed): exact \(exact.objective), brute force \(best)")
            #expect(exact.lowerBound == exact.objective)
            #expect(abs(problem.objective.cost(exact.placement, problem.statistics) - exact.objective) < 1e-9)
            try exact.placement.validate(layers: layers, experts: experts, ranks: ranks, capacity: problem.capacity)
        }
    }

    /// Also with room to spare (7 experts on 3 ranks of 3, 10 on 4 of 3, and 8 on 2 of 6 by --experts-per-rank).
    @Test(arguments: [(8, 4, 1, nil), (8, 2, 2, nil), (12, 6, 2, nil), (7, 3, 1, nil), (10, 4, 2, nil), (8, 2, 1, 6)] as [(Int, Int, Int, Int?)])
    func localSearchStaysFeasibleAndNeverWorsens(experts: Int, ranks: Int, nodes: Int, capacity: Int?) throws {
        let trace = randomTrace(layers: 5, experts: experts, topK: 2, tokens: 200, seed: 11)
        let problem = PlacementProblem(statistics: TraceStatistics(trace), ranks: ranks, nodes: nodes, capacity: capacity, coactivationWeight: 0.3)
        let start = Placement.roundRobin(layers: 5, experts: experts, ranks: ranks)
        let improved = try LocalSearchSolver(start: start).solve(problem)
        try improved.placement.validate(layers: 5, experts: experts, ranks: ranks, capacity: problem.capacity)
        #expect(improved.objective <= problem.objective.cost(start, problem.statistics) + 1e-9)
        #expect(abs(problem.objective.cost(improved.placement, problem.statistics) - improved.objective) < 1e-9)
        // A descent ends where no swap of two experts of a layer lowers the cost (its incremental tables are right).
        for l in 0..<5 {
            for a in 0..<experts {
                for b in (a + 1)..<experts {
                    var swapped = improved.placement
                    swapped.rankOf[l].swapAt(a, b)
                    #expect(problem.objective.cost(swapped, problem.statistics) >= improved.objective - 1e-9, "layer \(l): swap \(a), \(b)")
                }
            }
            // Nor does a move of one expert to a rank with room (leaving no rank empty).
            var count = [Int](repeating: 0, count: ranks)
            for r in improved.placement.rankOf[l] { count[r] += 1 }
            for a in 0..<experts where count[improved.placement.rankOf[l][a]] > 1 {
                for r in 0..<ranks where count[r] < problem.capacity && r != improved.placement.rankOf[l][a] {
                    var moved = improved.placement
                    moved.rankOf[l][a] = r
                    #expect(problem.objective.cost(moved, problem.statistics) >= improved.objective - 1e-9, "layer \(l): move \(a) to \(r)")
                }
            }
        }
        if let capacity, capacity * ranks > experts + 2 {
            // Lots of room: the search uses it (some rank holds more than E/G).
            #expect((0..<5).contains { l in (0..<ranks).contains { r in improved.placement.rankOf[l].filter { $0 == r }.count > experts / ranks } })
        }
    }

    /// Set partitions into G non-empty groups of at most c, counted by hand: 5 into (3, 2): C(5, 3) = 10; into
    /// (2, 2, 1): 5!/(2!·2!·1!·2!) = 15; 8 into (3, 3, 2): 8!/(3!·3!·2!·2!) = 280; into (2, 2, 2, 1, 1): 420; 8 into
    /// pairs: 105; 4 into two groups of at most 3: (3, 1) 4 ways and (2, 2) 3 ways.
    @Test(arguments: [(5, 2, 3, 10), (5, 3, 2, 15), (8, 3, 3, 280), (8, 5, 2, 420), (8, 4, 2, 105), (4, 2, 3, 7)])
    func partitionsAreCountedAndDistinct(experts: Int, ranks: Int, capacity: Int, count: Int) throws {
        let all = try #require(ExactSolver.partitions(experts: experts, ranks: ranks, capacity: capacity, limit: 10_000))
        #expect(all.count == count)
        let canonical = Set(all.map { $0.map { $0.sorted() }.sorted { $0[0] < $1[0] } })
        #expect(canonical.count == count)
        for p in all {
            #expect(p.count == ranks && p.allSatisfy { !$0.isEmpty && $0.count <= capacity })
            #expect(p.flatMap { $0 }.sorted() == Array(0..<experts))
        }
        #expect(ExactSolver.partitions(experts: experts, ranks: ranks, capacity: capacity, limit: count - 1) == nil)
    }

    @Test func assignmentEqualsBruteForce() {
        var s: UInt64 = 5
        for n in 1...6 {
            let score = (0..<n).map { _ in (0..<n).map { _ -> Double in s = s &* 6364136223846793005 &+ 1; return Double(s >> 40) / 1000 } }
            var best = -Double.infinity
            func permute(_ used: [Bool], _ row: Int, _ acc: Double) {
                if row == n { best = max(best, acc); return }
                for j in 0..<n where !used[j] { var u = used; u[j] = true; permute(u, row + 1, acc + score[row][j]) }
            }
            permute(Array(repeating: false, count: n), 0, 0)
            let (match, value) = Assignment.maximum(score)
            #expect(abs(value - best) < 1e-9)
            #expect(Set(match).count == n)
        }
    }

    @Test func evaluationAgreesWithAHandCountedExample() {
        // Two tokens, three layers, four experts on two ranks: rank 0 holds {0, 1}, rank 1 holds {2, 3}.
        let c = { (a: Int, b: Int) in RoutingTrace.Choice(experts: [a, b], weights: [0.75, 0.25]) }
        let trace = RoutingTrace(sequences: [.init(name: "s", tokens: [
            [c(0, 1), c(2, 0), c(3, 2)],  // top-1 0→2 crosses, 2→3 stays
            [c(1, 3), c(0, 1), c(1, 0)],  // top-1 1→0 stays, 0→1 stays
        ])], layers: 3, experts: 4, topK: 2)
        let p = Placement.contiguous(layers: 3, experts: 4, ranks: 2)
        let e = Evaluation(placement: p, trace: trace)
        #expect(e.crossRankTopOne == 0.25)  // 1 of 4 transitions
        // Secondary away from primary: (0,1) no, (2,0) yes, (3,2) no, (1,3) yes, (0,1) no, (1,0) no → 2 of 6.
        #expect(abs(e.secondaryRemote - 2.0 / 6) < 1e-12)
        // Weighted top-k crossing, token 1 l0→l1: pairs (0,2) .5625 x, (0,0) .1875, (1,2) .1875 x, (1,0) .0625 → .75;
        // l1→l2: (2,3) .5625, (2,2) .1875, (0,3) .1875 x, (0,2) .0625 x → .25; token 2 l0→l1: (1,0) .5625, (1,1) .1875,
        // (3,0) .1875 x, (3,1) .0625 x → .25; l1→l2: all on rank 0 → 0. Total 1.25 of 4.
        #expect(abs(e.crossRankTopK - 1.25 / 4) < 1e-12)
        #expect(abs(e.hopsPerToken - 1.25 / 2) < 1e-12)
        // Load per layer (top-k assignments per rank): l0 [3, 1], l1 [3, 1], l2 [2, 2] → max/mean 1.5, 1.5, 1.
        #expect(abs(e.maxMeanLoad - 4.0 / 3) < 1e-12)
    }

    @Test func comparisonCountsEachSequencesSavingByHand() {
        // Three layers, four experts on two ranks. Plan A: {0, 1} | {2, 3} in every layer; plan B swaps experts 1
        // and 2 in layer 1, so B holds {0, 2} | {1, 3} there.
        let c = { (a: Int) in RoutingTrace.Choice(experts: [a], weights: [1]) }
        let trace = RoutingTrace(sequences: [
            .init(name: "x", tokens: [[c(0), c(1), c(1)],    // A: stays, stays; B: crosses, crosses
                                      [c(0), c(2), c(3)],    // A: crosses, stays; B: stays, crosses
                                      [c(1), c(1), c(1)]]),  // A: stays, stays; B: crosses, crosses
            .init(name: "y", tokens: [[c(2), c(1), c(3)]]),  // A: crosses, crosses; B: stays, stays
        ], layers: 3, experts: 4, topK: 1)
        let a = Placement.contiguous(layers: 3, experts: 4, ranks: 2)
        let b = Placement(rankOf: [[0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1]], ranks: 2)
        var g = LCG(seed: 3)
        let comparison = PlacementComparison(a, against: b, trace: trace, block: 1, resamples: 500, using: &g)
        // B crosses 5 of 8 transitions, A 3; in x B crosses 5 of 6 and A 1, in y B none of 2 and A both.
        #expect(abs(comparison.saving - 2.0 / 8) < 1e-12)
        let parts: [PlacementComparison.Part] = [.init(name: "x", transitions: 6, saving: 4.0 / 6), .init(name: "y", transitions: 2, saving: -2.0 / 2)]
        #expect(comparison.parts == parts)
        let difference: Double = Evaluation(placement: b, trace: trace).crossRankTopOne - Evaluation(placement: a, trace: trace).crossRankTopOne
        #expect(abs(comparison.saving - difference) < 1e-12)
        #expect(comparison.interval.low <= comparison.saving && comparison.saving <= comparison.interval.high)
        // Against itself nothing is saved and nothing varies.
        let same = PlacementComparison(a, against: a, trace: trace, using: &g)
        #expect(same.saving == 0)
        #expect(same.standardError == 0)
        #expect(same.interval.low == 0 && same.interval.high == 0)
    }

    @Test func bootstrapSpreadMatchesTheSamplingFormula() {
        let trace = randomTrace(layers: 5, experts: 6, topK: 1, tokens: 300, seed: 11)
        let halves = RoutingTrace(sequences: [.init(name: "a", tokens: Array(trace.sequences[0].tokens[..<120])),
                                              .init(name: "b", tokens: Array(trace.sequences[0].tokens[120...]))],
                                  layers: 5, experts: 6, topK: 1)
        let p = Placement.contiguous(layers: 5, experts: 6, ranks: 3), q = Placement.roundRobin(layers: 5, experts: 6, ranks: 3)
        var g = LCG(seed: 5)
        // One block per sequence: every resample is the trace itself.
        let whole = PlacementComparison(p, against: q, trace: halves, block: 1_000, resamples: 200, using: &g)
        #expect(whole.standardError < 1e-12)
        // Single tokens resampled within each sequence: the variance of a stratified mean, Σ_s n_s σ_s² / N².
        let single = PlacementComparison(p, against: q, trace: halves, block: 1, resamples: 8_000, using: &g)
        var variance = 0.0, n = 0.0
        for s in halves.sequences {
            let d = s.tokens.map { t in (0..<4).reduce(0.0) { acc, l in
                let a = t[l].experts[0], b = t[l + 1].experts[0]
                return acc + (q.rankOf[l][a] != q.rankOf[l + 1][b] ? 1 : 0) - (p.rankOf[l][a] != p.rankOf[l + 1][b] ? 1 : 0)
            } }
            let mean = d.reduce(0, +) / Double(d.count)
            variance += d.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }
            n += Double(d.count * 4)
        }
        let expected = variance.squareRoot() / n
        #expect(expected > 0)
        #expect(abs(single.standardError / expected - 1) < 0.06, "bootstrap sd \(single.standardError), formula \(expected)")
    }

    @Test func exflowCSVImportsAndRejectsBadRows() throws {
        let p = try Placement.importExFlow(csv: "Expert,Node\n0,1\n1,0\n2,0\n3,1\n", experts: 2, path: "x.csv")
        #expect(p.rankOf == [[1, 0], [0, 1]] && p.ranks == 2)
        // The published files end lines with CR LF.
        #expect(try Placement.importExFlow(csv: "Expert,Node\r\n0,1\r\n1,0\r\n2,0\r\n3,1\r\n", experts: 2, path: "x.csv") == p)
        #expect(throws: PlacementError.self) { try Placement.importExFlow(csv: "Expert,Node\n0,1\n1,x\n", experts: 2, path: "x.csv") }
        #expect(throws: PlacementError.self) { try Placement.importExFlow(csv: "0,1\n0,0\n", experts: 2, path: "x.csv") }
        #expect(throws: PlacementError.self) { try Placement.importExFlow(csv: "0,1\n1,0\n2,1\n", experts: 2, path: "x.csv") }
    }

    @Test func problemsThatCannotHoldTheExpertsAreRefused() {
        let stats = TraceStatistics(randomTrace(layers: 2, experts: 8, topK: 2, tokens: 5, seed: 1))
        #expect(throws: PlacementError.self) { try PlacementProblem(statistics: stats, ranks: 2, capacity: 3).validate() }
        #expect(throws: PlacementError.self) { try PlacementProblem(statistics: stats, ranks: 4, nodes: 3).validate() }
        #expect(throws: PlacementError.self) { try ExactSolver().solve(PlacementProblem(statistics: stats, ranks: 9)) }  // a rank would stay empty
    }
}

@Suite struct ILPTests {
    @Test(arguments: [(4, 2, 1, 0.0), (6, 3, 1, 0.4), (4, 2, 2, 0.0)])
    func ilpReportsItsObjectiveHonestlyAndBoundsIt(experts: Int, ranks: Int, nodes: Int, coactivation: Double) throws {
        let layers = experts == 6 ? 2 : 3  // keeps the brute force small
        let trace = randomTrace(layers: layers, experts: experts, topK: 2, tokens: 60, seed: 3)
        let problem = PlacementProblem(statistics: TraceStatistics(trace), ranks: ranks, nodes: nodes, coactivationWeight: coactivation)
        let ilp = try ILPSolver(timeLimit: 20).solve(problem)
        try ilp.placement.validate(layers: layers, experts: experts, ranks: ranks)
        #expect(abs(problem.objective.cost(ilp.placement, problem.statistics) - ilp.objective) < 1e-9)
        let bound = try #require(ilp.lowerBound)
        #expect(bound <= ilp.objective + 1e-9)
        // Small enough to be solved to optimality: it meets the brute-force optimum.
        let best = allPlacements(layers: layers, experts: experts, ranks: ranks).map { problem.objective.cost($0, problem.statistics) }.min()!
        #expect(abs(ilp.objective - best) < 1e-6)
        #expect(abs(bound - best) < 1e-4)
    }
}

@Suite struct BoundTests {
    /// Including experts that do not fill the ranks (5 on 2, 5 on 3, 7 on 2): the padded spectral bound.
    @Test(arguments: [(4, 2, 1, 0.0), (6, 3, 1, 0.5), (4, 2, 2, 0.0), (6, 2, 1, 0.3), (5, 2, 1, 0.0), (5, 3, 1, 0.3), (7, 2, 1, 0.2)])
    func combinatorialBoundNeverExceedsTheOptimum(experts: Int, ranks: Int, nodes: Int, coactivation: Double) {
        for seed in 1...3 {
            let trace = randomTrace(layers: 2, experts: experts, topK: 2, tokens: 50, seed: UInt64(seed))
            let problem = PlacementProblem(statistics: TraceStatistics(trace), ranks: ranks, nodes: nodes, coactivationWeight: coactivation)
            let best = allPlacements(layers: 2, experts: experts, ranks: ranks, capacity: problem.capacity)
                .map { problem.objective.cost($0, problem.statistics) }.min()!
            let bound = CombinatorialBound.lowerBound(problem)
            #expect(bound <= best + 1e-9, "seed \(seed): bound \(bound) above the optimum \(best)")
            #expect(bound > 0)
        }
    }

    /// Expert a of layer 0 goes to a+1 and a+3 (mod 6): every expert has only two partners, so the degree bound
    /// keeps everything and says 0, but no grouping into pairs keeps both targets of a pair together. The
    /// spectral part sees it: a positive bound, still no more than the brute-force optimum.
    @Test func spectralBoundSeesWhatDegreesMiss() {
        let e = 6
        var c = [Double](repeating: 0, count: e * e)
        for a in 0..<e { c[a * e + (a + 1) % e] += 1; c[a * e + (a + 3) % e] += 1 }
        let stats = TraceStatistics(layers: 2, experts: e, transitions: [c], coactivation: [[Double]](repeating: [Double](repeating: 0, count: e * e), count: 2))
        let problem = PlacementProblem(statistics: stats, ranks: 3)
        #expect(CombinatorialBound.degreeBound(c, experts: e, size: 2) == 12)
        let best = allPlacements(layers: 2, experts: e, ranks: 3).map { problem.objective.cost($0, stats) }.min()!
        let bound = CombinatorialBound.lowerBound(problem)
        #expect(bound > 0.5 && bound <= best + 1e-9, "bound \(bound), optimum \(best)")
    }

    @Test func singularValuesFromLAPACK() throws {
        // Column-major 3 × 2: [[3, 0], [0, -4], [0, 0]] has singular values 4 and 3.
        var a: [Double] = [3, 0, 0, 0, -4, 0]
        let s = try #require(CombinatorialBound.singularValues(&a, rows: 3, cols: 2))
        #expect(abs(s[0] - 4) < 1e-12 && abs(s[1] - 3) < 1e-12)
    }
}

@Suite struct BisectionTests {
    @Test(arguments: [(8, 2, 1), (8, 4, 1), (8, 4, 2), (16, 8, 2)])
    func bisectionReturnsFeasiblePlansWithHonestObjectives(experts: Int, ranks: Int, nodes: Int) throws {
        let trace = randomTrace(layers: 4, experts: experts, topK: 2, tokens: 150, seed: 21)
        let problem = PlacementProblem(statistics: TraceStatistics(trace), ranks: ranks, nodes: nodes, coactivationWeight: 0.2)
        let plan = try BisectionSolver(deadline: Date().addingTimeInterval(5)).solve(problem)
        try plan.placement.validate(layers: 4, experts: experts, ranks: ranks)
        #expect(abs(problem.objective.cost(plan.placement, problem.statistics) - plan.objective) < 1e-9)
        // On two ranks a bisection is one exact split: it is the optimum.
        if ranks == 2 { #expect(abs(plan.objective - (try ExactSolver().solve(problem)).objective) < 1e-9) }
    }

    /// Rank counts that do not halve evenly, and experts that do not fill every rank: each side takes experts in
    /// proportion to its ranks, so no rank goes over its capacity, and whole nodes are split first.
    @Test(arguments: [(6, 3, 1), (8, 3, 1), (10, 4, 1), (10, 6, 2), (16, 6, 3), (20, 5, 1), (3, 4, 1)])
    func bisectionHandlesAnyRankCount(experts: Int, ranks: Int, nodes: Int) throws {
        let trace = randomTrace(layers: 3, experts: experts, topK: 2, tokens: 120, seed: 8)
        let problem = PlacementProblem(statistics: TraceStatistics(trace), ranks: ranks, nodes: nodes, coactivationWeight: 0.1)
        let plan = try BisectionSolver(deadline: Date().addingTimeInterval(5)).solve(problem)
        try plan.placement.validate(layers: 3, experts: experts, ranks: ranks, capacity: problem.capacity)
        #expect(abs(problem.objective.cost(plan.placement, problem.statistics) - plan.objective) < 1e-9)
        let perNode = ranks / nodes
        for l in 0..<3 {
            var perRank = [Int](repeating: 0, count: ranks)
            for r in plan.placement.rankOf[l] { perRank[r] += 1 }
            // Proportional sides keep every rank within one expert of E/G, and each node within its share.
            #expect(perRank.max()! - perRank.min()! <= 1, "\(perRank)")
            let perNodeCounts = stride(from: 0, to: ranks, by: perNode).map { perRank[$0..<($0 + perNode)].reduce(0, +) }
            #expect(perNodeCounts.max()! - perNodeCounts.min()! <= 1, "\(perNodeCounts)")
        }
    }
}

/// A trace whose experts are unevenly popular (expert e drawn with weight e + 1), so load bounds bind.
func skewedTrace(layers: Int, experts: Int, tokens: Int, seed: UInt64) -> RoutingTrace {
    var s = seed
    func next() -> UInt64 { s = s &* 6364136223846793005 &+ 1442695040888963407; return s >> 33 }
    let total = experts * (experts + 1) / 2
    func draw() -> Int {
        var x = Int(next() % UInt64(total))
        for e in 0..<experts { x -= e + 1; if x < 0 { return e } }
        return experts - 1
    }
    let seq = (0..<tokens).map { _ in
        (0..<layers).map { _ -> RoutingTrace.Choice in
            var ids: [Int] = []
            while ids.count < 2 { let e = draw(); if !ids.contains(e) { ids.append(e) } }
            return RoutingTrace.Choice(experts: ids, weights: [0.6, 0.4])
        }
    }
    return RoutingTrace(sequences: [.init(name: "s", tokens: seq)], layers: layers, experts: experts, topK: 2)
}

@Suite struct LoadBoundTests {
    /// The best cost over the placements that keep the bound (nil: none does), by brute force.
    func constrainedOptimum(_ p: PlacementProblem) -> Double? {
        allPlacements(layers: p.statistics.layers, experts: p.statistics.experts, ranks: p.ranks)
            .filter { p.overload($0) == 0 }.map { p.objective.cost($0, p.statistics) }.min()
    }

    /// Exact and the ILP meet the brute-force optimum among placements within the bound, and say so when there is
    /// none; the bound changes the answer on these instances (the unbounded optimum breaks it).
    @Test(arguments: [(4, 2, 1.1), (6, 3, 1.2), (6, 2, 1.05), (6, 3, 1.0)])
    func exactAndILPKeepTheBoundAndMeetTheConstrainedOptimum(experts: Int, ranks: Int, maxLoad: Double) throws {
        let trace = skewedTrace(layers: 2, experts: experts, tokens: 80, seed: UInt64(experts * 10 + ranks))
        let p = PlacementProblem(statistics: TraceStatistics(trace), ranks: ranks, coactivationWeight: 0.2, maxLoad: maxLoad)
        let free = try ExactSolver().solve(PlacementProblem(statistics: p.statistics, ranks: ranks, coactivationWeight: 0.2))
        #expect(p.overload(free.placement) > 0, "the bound should bind on this instance")
        guard let best = constrainedOptimum(p) else {
            #expect(throws: PlacementError.self) { try ExactSolver().solve(p) }
            #expect(throws: PlacementError.self) { try ILPSolver(timeLimit: 20).solve(p) }
            return
        }
        let exact = try ExactSolver().solve(p)
        #expect(p.overload(exact.placement) == 0 && abs(exact.objective - best) < 1e-9)
        let ilp = try ILPSolver(timeLimit: 20).solve(p)
        #expect(p.overload(ilp.placement) == 0 && abs(ilp.objective - best) < 1e-6)
    }

    /// Local search repairs a start above the bound; bisection's plans keep it too.
    @Test(arguments: [(8, 2, 1), (8, 4, 1), (8, 4, 2), (12, 3, 1), (12, 6, 2)])
    func localSearchAndBisectionKeepTheBound(experts: Int, ranks: Int, nodes: Int) throws {
        let trace = skewedTrace(layers: 4, experts: experts, tokens: 300, seed: 5)
        let p = PlacementProblem(statistics: TraceStatistics(trace), ranks: ranks, nodes: nodes, maxLoad: 1.15)
        try p.validate()
        let contiguous = Placement.contiguous(layers: 4, experts: experts, ranks: ranks)
        #expect(p.overload(contiguous) > 0)
        let local = try LocalSearchSolver(start: contiguous, deadline: Date().addingTimeInterval(2)).solve(p)
        #expect(p.overload(local.placement) == 0)
        #expect(abs(local.objective - p.objective.cost(local.placement, p.statistics)) < 1e-9)
        let bisect = try BisectionSolver(deadline: Date().addingTimeInterval(2)).solve(p)
        #expect(p.overload(bisect.placement) == 0)
        try bisect.placement.validate(layers: 4, experts: experts, ranks: ranks)
    }

    @Test func boundsNoPlacementCanMeetAreRefusedUpFront() {
        let stats = TraceStatistics(skewedTrace(layers: 2, experts: 8, tokens: 200, seed: 3))
        #expect(throws: PlacementError.self) { try PlacementProblem(statistics: stats, ranks: 2, maxLoad: 0.9).validate() }
        // Eight ranks hold one expert each: the popular experts alone are above the mean; the first is named.
        let mean = stats.load[0].reduce(0, +) / 8
        let hot = stats.load[0].firstIndex { $0 > 1.2 * mean }!
        #expect(hot > 0)
        do {
            try PlacementProblem(statistics: stats, ranks: 8, maxLoad: 1.2).validate()
            Issue.record("a hot expert above the bound was accepted")
        } catch let error as PlacementError {
            #expect(error.description.contains("expert \(hot) of layer 0 alone carries"), "\(error)")
        } catch { Issue.record("\(error)") }
    }
}
