import Kernels

/// The router's decision for a block of tokens: for each token, `topK` expert ids (router order, highest
/// probability first) and the weights that scale their outputs.
public struct RoutingDecision {
    public let tokens: Int
    public let topK: Int
    /// `[tokens, topK]` expert ids.
    public let ids: UnsafePointer<Int32>
    /// `[tokens, topK]` weights.
    public let weights: UnsafePointer<Float>
    /// `[tokens, experts]` the router's softmax probabilities of every expert, before top-k.
    public let probabilities: UnsafePointer<Float>
    /// Whether the top-k weights are the probabilities renormalised to sum 1 (else the probabilities themselves).
    public let renormalised: Bool
    public let experts: Int

    public init(tokens: Int, topK: Int, ids: UnsafePointer<Int32>, weights: UnsafePointer<Float>, probabilities: UnsafePointer<Float>,
                renormalised: Bool, experts: Int) {
        self.tokens = tokens
        self.topK = topK
        self.ids = ids
        self.weights = weights
        self.probabilities = probabilities
        self.renormalised = renormalised
        self.experts = experts
    }

    /// The weights this router gives token `t` for `ids` (`count` experts), into `weights`: their probabilities,
    /// renormalised to sum 1 when the router renormalises its top-k (replaying a trace that records ids only).
    public func routerWeights(token t: Int, for ids: UnsafePointer<Int32>, count: Int, into weights: UnsafeMutablePointer<Float>) {
        var sum: Float = 0
        for j in 0..<count {
            weights[j] = probabilities[t * experts + Int(ids[j])]
            sum += weights[j]
        }
        if renormalised && sum > 0 { for j in 0..<count { weights[j] /= sum } }
    }
}

/// Moves tokens to their experts and brings the results back (route → dispatch → experts → combine).
///
/// Model code calls only this; whether experts run in this process or on other MPI ranks is the
/// implementation's business, chosen once at start-up.
public protocol ExpertDispatcher: AnyObject {
    /// Writes `Σ_j weight[t, j] · expert_{id[t, j]}(hidden[t])` into `output[t]` for every token of `routing`.
    /// - hidden, output: `[tokens, hiddenSize]`; output is overwritten.
    func combine(layer: Int, hidden: UnsafePointer<Float>, routing: RoutingDecision, into output: UnsafeMutablePointer<Float>)
}

/// The weights of one SiLU-GLU feed-forward: `down(silu(gate·x) * (up·x))`.
public struct FeedForwardWeights: Sendable {
    public let gate: WeightMatrix  // [intermediate, hidden]
    public let up: WeightMatrix    // [intermediate, hidden]
    public let down: WeightMatrix  // [hidden, intermediate]

    public var intermediate: Int { gate.rows }
    public var byteCount: Int { gate.byteCount + up.byteCount + down.byteCount }

    /// `out = down(silu(gate·x) * (up·x))` for `rows` tokens; `scratch` holds at least `rows * 2 * intermediate`.
    /// `threads`: as `GEMM.linear` takes it (1 when experts run side by side).
    public func apply(_ x: UnsafePointer<Float>, rows: Int, scratch: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>,
                      threads: Int? = nil) {
        let i = intermediate
        GEMM.linear(x, tokens: rows, weight: gate, into: scratch, ldy: 2 * i, threads: threads)
        GEMM.linear(x, tokens: rows, weight: up, into: scratch + i, ldy: 2 * i, threads: threads)
        Elementwise.siluGLU(scratch, rows: rows, n: i)
        GEMM.linear(scratch, tokens: rows, ldx: 2 * i, weight: down, into: out, threads: threads)
    }
}

/// One routed (token row, expert, weight) assignment.
public struct ExpertAssignment: Sendable, Equatable {
    public var row: Int32
    public var expert: Int32
    public var weight: Float
    public init(row: Int32, expert: Int32, weight: Float) { self.row = row; self.expert = expert; self.weight = weight }
}

/// The routed experts this process holds, run as one GEMM per expert over all rows assigned to it.
public final class ExpertBank {
    /// `experts[layer][expert]`; nil for a dense layer or an expert this process does not hold.
    public let experts: [[FeedForwardWeights?]]
    let hiddenSize: Int
    private var gathered = GrowableBuffer<Float>()
    private var results = GrowableBuffer<Float>()
    private var scratch = GrowableBuffer<Float>()
    /// Experts that received at least one row in the last `apply` of each layer (for bandwidth figures).
    public private(set) var activeExperts: [Int]

    public init(experts: [[FeedForwardWeights?]], hiddenSize: Int) {
        self.experts = experts
        self.hiddenSize = hiddenSize
        activeExperts = Array(repeating: 0, count: experts.count)
    }

    /// Whether this process holds `expert` of `layer`.
    public func holds(layer: Int, expert: Int) -> Bool { experts[layer].indices.contains(expert) && experts[layer][expert] != nil }

    /// Bytes of the routed experts held.
    public var byteCount: Int { experts.joined().reduce(0) { $0 + ($1?.byteCount ?? 0) } }

    /// Up to this many rows an expert gets in a step, the experts of a layer run side by side, one whole expert
    /// on one thread each, instead of one after another with each product split over the threads: each thread
    /// streams whole matrices, and a layer synchronises the threads once, not three times per expert. The experts
    /// left over after whole rounds (7 experts on 2 threads: the 7th) are split, so no thread idles through a
    /// whole expert (`medium` bf16 batch 8, alternated: 204.9 -> 229.6 tok/s, medians of three).
    public static let sideBySideRows = 8

    /// Sorts `assignments` by expert (stable), then writes `weight · expert(hidden[row])` for each into `output`
    /// (`[assignments.count, hiddenSize]`, in the sorted order). Every expert named must be held. Results do not
    /// depend on whether the experts run side by side.
    public func apply(layer: Int, hidden: UnsafePointer<Float>, assignments: inout [ExpertAssignment],
                      into output: UnsafeMutablePointer<Float>) {
        let h = hiddenSize, bank = experts[layer]
        assignments.sort { $0.expert < $1.expert || ($0.expert == $1.expert && $0.row < $1.row) }
        // Each expert's rows: a run of the sorted assignments.
        var groups: [(ffn: FeedForwardWeights, rows: Range<Int>, scratch: Int)] = []
        var start = 0, scratchFloats = 0
        while start < assignments.count {
            let e = Int(assignments[start].expert)
            var end = start
            while end < assignments.count && Int(assignments[end].expert) == e { end += 1 }
            guard let ffn = bank[e] else { preconditionFailure("layer \(layer) expert \(e) is not held by this process") }
            groups.append((ffn, start..<end, scratchFloats))
            scratchFloats += (end - start) * 2 * ffn.intermediate
            start = end
        }
        activeExperts[layer] = groups.count
        let x = gathered.reserve(assignments.count * h), y = results.reserve(assignments.count * h)
        let work = scratch.reserve(scratchFloats)
        for (r, a) in assignments.enumerated() { (x + r * h).update(from: hidden + Int(a.row) * h, count: h) }
        let sideBySide = groups.count > 1 && Parallel.workers > 1 && groups.allSatisfy { $0.rows.count <= Self.sideBySideRows }
        nonisolated(unsafe) let (xp, yp, sp) = (x, y, work)
        let list = groups
        func run(_ g: Int, threads: Int?) {
            let (ffn, rows, offset) = list[g]
            ffn.apply(xp + rows.lowerBound * h, rows: rows.count, scratch: sp + offset, into: yp + rows.lowerBound * h, threads: threads)
        }
        if sideBySide {
            // At most `Parallel.workers` at once (the kernel threads asked for): lane i takes experts i, i + lanes, ...
            // of the first whole rounds; the experts left over (fewer than the lanes) split their products over the
            // threads, so that no lane waits out a whole expert's stream at the end of the layer.
            let lanes = min(groups.count, Parallel.workers)
            let rounds = groups.count / lanes * lanes
            Parallel.run(lanes) { lane in
                for g in stride(from: lane, to: rounds, by: lanes) { run(g, threads: 1) }
            }
            for g in rounds..<groups.count { run(g, threads: nil) }
        } else {
            for g in groups.indices { run(g, threads: nil) }
        }
        for (r, a) in assignments.enumerated() {
            let src = y + r * h, dst = output + r * h
            for i in 0..<h { dst[i] = a.weight * src[i] }
        }
    }
}

/// Runs every routed expert in this process: tokens are grouped by expert so each expert is one GEMM over all
/// the tokens routed to it, then weighted rows are added back in expert order (as transformers' `index_add_`).
public final class LocalDispatcher: ExpertDispatcher {
    public let bank: ExpertBank
    private var assignments: [ExpertAssignment] = []
    private var pairOutputs = GrowableBuffer<Float>()

    public init(bank: ExpertBank) { self.bank = bank }

    public func combine(layer: Int, hidden: UnsafePointer<Float>, routing: RoutingDecision, into output: UnsafeMutablePointer<Float>) {
        let h = bank.hiddenSize
        assignments.removeAll(keepingCapacity: true)
        for p in 0..<(routing.tokens * routing.topK) {
            assignments.append(ExpertAssignment(row: Int32(p / routing.topK), expert: routing.ids[p], weight: routing.weights[p]))
        }
        let y = pairOutputs.reserve(assignments.count * h)
        bank.apply(layer: layer, hidden: hidden, assignments: &assignments, into: y)
        output.update(repeating: 0, count: routing.tokens * h)
        for (i, a) in assignments.enumerated() { Elementwise.add(y + i * h, into: output + Int(a.row) * h, h) }
    }
}

/// A grow-only buffer for per-step scratch, so steady-state steps do not allocate.
public struct GrowableBuffer<T> {
    private var pointer: UnsafeMutablePointer<T>?
    private var count = 0
    private var box: Box?

    final class Box {
        let pointer: UnsafeMutablePointer<T>
        init(_ p: UnsafeMutablePointer<T>) { pointer = p }
        deinit { pointer.deallocate() }
    }

    public init() {}

    /// Room for at least `n` elements (contents undefined after growing).
    public mutating func reserve(_ n: Int) -> UnsafeMutablePointer<T> {
        if n > count || pointer == nil {
            let grown = max(n, count * 3 / 2, 16)
            let p = UnsafeMutablePointer<T>.allocate(capacity: grown)
            box = Box(p)
            pointer = p
            count = grown
        }
        return pointer!
    }
}
