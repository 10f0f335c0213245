import CCbc
import Foundation

/// The placement as an integer program, solved by CBC within a time limit.
///
/// One binary x[l,e,r] per (layer, expert, rank); every expert on one rank, at most `capacity` and (when there are
/// enough experts) at least one per rank and layer, and under a load bound at most its limit of each layer's load.
/// Kept mass is linearised: for each pair with weight C (transition a→b between layers l and l+1, or
/// co-activation within a layer) a continuous s[·,r] ≤ x[·,a,r], s[·,r] ≤ x[·,b,r] per rank, and on several nodes
/// a t[·,n] on the node sums. Maximising C·(Σ_r s + Σ_n t) is minimising Σ C·hop, since hop = 2 − same node −
/// same rank (1 − same rank on one node). CBC reports the incumbent and a proven bound (raised to the
/// combinatorial bound where that is higher), so the gap is known. When CBC finds nothing better than the start
/// in the time, the start is returned ("ilp (start kept)").
public struct ILPSolver: PlacementSolver {
    public var timeLimit: Double
    /// A plan to start from (its objective is the incumbent CBC must beat).
    public var start: Placement?
    /// Called every few seconds while CBC runs, with the seconds so far (a progress line).
    public var progress: ((Double) -> Void)?
    /// Polled while CBC runs: true returns the start at once ("ilp (interrupted, start kept)"), as does passing the
    /// time limit ("ilp (time limit, start kept)"); CBC's C interface cannot be stopped, so it runs on to its own
    /// limit on its thread and then frees its model.
    public var shouldStop: () -> Bool

    public init(timeLimit: Double, start: Placement? = nil, progress: ((Double) -> Void)? = nil,
                shouldStop: @escaping () -> Bool = { false }) {
        self.timeLimit = timeLimit
        self.start = start
        self.progress = progress
        self.shouldStop = shouldStop
    }

    public var name: String { "ilp" }

    /// Columns the integer program of `p` would have.
    public static func columns(_ p: PlacementProblem) -> Int {
        let s = p.statistics, g = p.ranks, nodes = g / p.objective.ranksPerNode
        let perPair = g + (nodes > 1 ? nodes : 0)
        var pairs = s.transitions.reduce(0) { $0 + $1.filter { $0 > 0 }.count }
        if p.objective.coactivationWeight > 0 { pairs += s.coactivation.reduce(0) { $0 + $1.filter { $0 > 0 }.count } / 2 }
        return s.layers * s.experts * g + pairs * perPair
    }

    /// CBC keeps process-wide state (message handlers, the COIN random seed), so one model is solved at a time. A
    /// semaphore, not a lock: an abandoned run releases it from CBC's thread.
    static let turn = DispatchSemaphore(value: 1)

    public func solve(_ p: PlacementProblem) throws -> PlacementSolution {
        guard p.rankShares == nil else { throw PlacementError.invalid("the ILP takes one load share per rank") }
        // CBC checks its own limit only between search nodes (its root can run far past it): this one is kept by
        // giving up on CBC, as for Ctrl-C.
        let hardDeadline = Date().addingTimeInterval(timeLimit)
        Self.turn.wait()
        let s = p.statistics, e = s.experts, g = p.ranks, layers = s.layers
        let perNode = p.objective.ranksPerNode, nodes = g / perNode
        guard let model = Cbc_newModel() else { Self.turn.signal(); throw PlacementError.invalid("CBC could not create a model") }
        let job = CBCJob(model: model)
        defer { if job.release() { Cbc_deleteModel(model); Self.turn.signal() } }
        Cbc_setLogLevel(model, 0)
        Cbc_setObjSense(model, -1)  // maximise kept mass
        var columns: Int32 = 0
        func column(_ obj: Double, integer: Bool) -> Int32 {
            Cbc_addCol(model, "", 0, 1, obj, integer ? 1 : 0, 0, nil, nil)
            defer { columns += 1 }
            return columns
        }
        func row(_ cols: [Int32], _ coefs: [Double], _ sense: Character, _ rhs: Double) {
            cols.withUnsafeBufferPointer { c in
                coefs.withUnsafeBufferPointer { v in
                    Cbc_addRow(model, "", Int32(cols.count), c.baseAddress, v.baseAddress, CChar(sense.asciiValue!), rhs)
                }
            }
        }
        var x = Array(repeating: Array(repeating: [Int32](), count: e), count: layers)
        for l in 0..<layers { for a in 0..<e { x[l][a] = (0..<g).map { _ in column(0, integer: true) } } }
        for l in 0..<layers {
            for a in 0..<e { row(x[l][a], Array(repeating: 1, count: g), "E", 1) }
            for r in 0..<g {
                row((0..<e).map { x[l][$0][r] }, Array(repeating: 1, count: e), "L", Double(p.capacity))
                if e >= g { row((0..<e).map { x[l][$0][r] }, Array(repeating: 1, count: e), "G", 1) }  // every rank holds experts
                if let limits = p.loadLimits { row((0..<e).map { x[l][$0][r] }, s.load[l], "L", limits[l]) }
            }
        }
        row([x[0][0][0]], [1], "E", 1)  // ranks are interchangeable: pin one expert
        // Kept mass of a pair (layer la, expert a) – (layer lb, expert b) with weight w.
        var total = 0.0
        func keep(_ la: Int, _ a: Int, _ lb: Int, _ b: Int, _ w: Double) {
            guard w > 0 else { return }
            total += w * (nodes > 1 ? 2 : 1)
            for r in 0..<g {
                let c = column(w, integer: false)
                row([c, x[la][a][r]], [1, -1], "L", 0)
                row([c, x[lb][b][r]], [1, -1], "L", 0)
            }
            guard nodes > 1 else { return }
            for n in 0..<nodes {
                let c = column(w, integer: false), ranks = (n * perNode)..<((n + 1) * perNode)
                row([c] + ranks.map { x[la][a][$0] }, [1] + Array(repeating: -1, count: perNode), "L", 0)
                row([c] + ranks.map { x[lb][b][$0] }, [1] + Array(repeating: -1, count: perNode), "L", 0)
            }
        }
        for l in 0..<(layers - 1) { for a in 0..<e { for b in 0..<e { keep(l, a, l + 1, b, s.transitions[l][a * e + b]) } } }
        if p.objective.coactivationWeight > 0 {
            for l in 0..<layers {
                for a in 0..<e { for b in (a + 1)..<e { keep(l, a, l, b, p.objective.coactivationWeight * s.coactivation[l][a * e + b]) } }
            }
        }
        if let start {
            // Relabel so expert 0 of layer 0 sits on rank 0, as pinned above (swap whole ranks, cost unchanged).
            let r0 = start.rankOf[0][0]
            let relabel = { (r: Int) -> Int in r == r0 ? 0 : (r == 0 ? r0 : r) }
            var idx: [Int32] = [], val: [Double] = []
            for l in 0..<layers { for a in 0..<e { for r in 0..<g { idx.append(x[l][a][r]); val.append(relabel(start.rankOf[l][a]) == r ? 1 : 0) } } }
            if nodes == 1 || r0 / perNode == 0 { Cbc_setMIPStartI(model, Int32(idx.count), idx, val) }
        }
        Cbc_setMaximumSeconds(model, max(0.5, hardDeadline.timeIntervalSinceNow))
        let startFits = start.map { (try? $0.validate(layers: layers, experts: e, ranks: g, capacity: p.capacity)) != nil && p.overload($0) == 0 } ?? false
        if !job.run(progress: progress, shouldStop: { shouldStop() || Date() > hardDeadline }) {
            let why = shouldStop() ? "interrupted" : "time limit"
            guard let start, startFits else { throw PlacementError.unsolved("\(why) before CBC found a placement") }
            return PlacementSolution(placement: start, objective: p.objective.cost(start, s), lowerBound: CombinatorialBound.lowerBound(p),
                                     solver: "ilp (\(why), start kept)")
        }
        // With a start, CBC may call the model infeasible when it finds nothing better than the start: trust our
        // own check of the start over that.
        let infeasible = Cbc_isProvenInfeasible(model).isTrue
        var placement: Placement
        if !infeasible, Cbc_bestSolution(model) != nil, let solution = Cbc_getColSolution(model), Cbc_getNumCols(model) == columns {
            var rankOf = Array(repeating: Array(repeating: 0, count: e), count: layers)
            for l in 0..<layers {
                for a in 0..<e { rankOf[l][a] = (0..<g).max { solution[Int(x[l][a][$0])] < solution[Int(x[l][a][$1])] }! }
            }
            placement = Placement(rankOf: rankOf, ranks: g)
            try placement.validate(layers: layers, experts: e, ranks: g, capacity: p.capacity)
            guard p.overload(placement) == 0 else { throw p.loadBoundMissed(name) }
        } else if let start, startFits {
            placement = start  // CBC found nothing better within the time: the start stands
        } else if infeasible {
            throw PlacementError.invalid("CBC proved that no placement fits the constraints" + (p.loadLimits == nil ? "" : " (with the load bound)"))
        } else {
            throw PlacementError.invalid(String(format: "CBC found no feasible placement within %.0f s", timeLimit))
        }
        if let start, startFits, p.objective.cost(start, s) < p.objective.cost(placement, s) { placement = start }
        let cost = p.objective.cost(placement, s)
        // CBC's bound on kept mass, used only when it is consistent with the plan in hand (a run stopped before its
        // root relaxation can report a meaningless one).
        let cbcBound = infeasible ? 0 : total - Cbc_getBestPossibleObjValue(model)
        let proven = max(0, cbcBound <= cost + 1e-6 ? cbcBound : 0, CombinatorialBound.lowerBound(p))
        return PlacementSolution(placement: placement, objective: cost, lowerBound: min(proven, cost),
                                 solver: placement == start ? "ilp (start kept)" : name)
    }
}

/// One CBC solve on its own thread, so that the caller can give up on it (Ctrl-C). Whoever finishes last frees the
/// model and CBC's turn: the caller when CBC finished first, CBC's thread when the caller gave up.
final class CBCJob: @unchecked Sendable {
    private let model: UnsafeMutableRawPointer
    private let state = NSLock()
    private var finished = false, abandoned = false
    private let done = DispatchSemaphore(value: 0)

    init(model: UnsafeMutableRawPointer) { self.model = model }

    /// Runs CBC and waits for it, calling `progress` every 5 s; false when `shouldStop` asked to give up first.
    func run(progress: ((Double) -> Void)?, shouldStop: () -> Bool) -> Bool {
        let started = Date()
        let thread = Thread { [self] in
            Cbc_solve(model)
            state.lock()
            finished = true
            let orphan = abandoned
            state.unlock()
            if orphan {
                Cbc_deleteModel(model)
                ILPSolver.turn.signal()
            }
            done.signal()
        }
        thread.stackSize = 64 << 20  // CBC recurses deeply in presolve and cut generation
        thread.start()
        var reported = started
        while done.wait(timeout: .now() + .milliseconds(100)) == .timedOut {
            if shouldStop() {
                state.lock()
                defer { state.unlock() }
                if finished { break }
                abandoned = true
                return false
            }
            if Date().timeIntervalSince(reported) >= 5 {
                reported = Date()
                progress?(reported.timeIntervalSince(started))
            }
        }
        return true
    }

    /// True when the caller is to free the model (CBC finished and was not abandoned).
    func release() -> Bool {
        state.lock()
        defer { state.unlock() }
        return !abandoned
    }
}

extension Int32 {
    var isTrue: Bool { self != 0 }
}
