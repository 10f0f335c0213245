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
    /// `threads`: as `GEMM.linear` takes it (1 for a caller that already runs products side by side).
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

    /// Up to this many rows an expert gets in a step (decode), the experts' products are cut into pieces of about
    /// `pieceBytes` of weights that the threads take one at a time from a shared counter, in two passes per layer:
    /// first gate and up (with SiLU-GLU on the piece's columns), then down. Each thread streams long runs of
    /// weights, a thread that drew light pieces takes more, and a layer synchronises the threads twice. Above it
    /// (prefill), each product is split over the threads by rows.
    public static let piecewiseRows = 8

    /// Weight bytes of one piece (of each of gate and up, or of down): some tens of microseconds of streaming, so
    /// that a layer's pieces (8 experts of `medium`: 192 in bf16, 432 in f32) keep the threads busy to within one
    /// piece, while each piece still streams long runs of rows.
    public static let pieceBytes = 512 << 10

    /// Sorts `assignments` by expert (stable), then writes `weight · expert(hidden[row])` for each into `output`
    /// (`[assignments.count, hiddenSize]`, in the sorted order). Every expert named must be held. Results do not
    /// depend on how the products are cut: each output is one row of one product, summed in one order.
    public func apply(layer: Int, hidden: UnsafePointer<Float>, assignments: inout [ExpertAssignment],
                      into output: UnsafeMutablePointer<Float>) {
        let h = hiddenSize, bank = experts[layer]
        assignments.sort { $0.expert < $1.expert || ($0.expert == $1.expert && $0.row < $1.row) }
        // Each expert's rows: a run of the sorted assignments.
        var groups: [Group] = []
        var start = 0, scratchFloats = 0
        while start < assignments.count {
            let e = Int(assignments[start].expert)
            var end = start
            while end < assignments.count && Int(assignments[end].expert) == e { end += 1 }
            guard let ffn = bank[e] else { preconditionFailure("layer \(layer) expert \(e) is not held by this process") }
            groups.append(Group(ffn: ffn, rows: start..<end, scratch: scratchFloats))
            scratchFloats += (end - start) * 2 * ffn.intermediate
            start = end
        }
        activeExperts[layer] = groups.count
        let x = gathered.reserve(assignments.count * h), y = results.reserve(assignments.count * h)
        let work = scratch.reserve(scratchFloats)
        for (r, a) in assignments.enumerated() { (x + r * h).update(from: hidden + Int(a.row) * h, count: h) }
        if Parallel.workers > 1 && groups.allSatisfy({ $0.rows.count <= Self.piecewiseRows }) {
            Self.piecewise(groups, hidden: x, hiddenSize: h, scratch: work, into: y)
        } else {
            for g in groups {
                g.ffn.apply(x + g.rows.lowerBound * h, rows: g.rows.count, scratch: work + g.scratch,
                            into: y + g.rows.lowerBound * h)
            }
        }
        for (r, a) in assignments.enumerated() {
            let src = y + r * h, dst = output + r * h
            for i in 0..<h { dst[i] = a.weight * src[i] }
        }
    }
}

extension ExpertBank {
    /// One expert's share of a layer: its weights, its run of the sorted assignments, its scratch offset.
    struct Group {
        let ffn: FeedForwardWeights
        let rows: Range<Int>
        let scratch: Int
    }

    /// `matrix`'s rows in pieces of about `bytes` of weights: at least 16 rows, bounds at multiples of 16 (the
    /// last at the end), so that SiLU-GLU over a piece's columns computes what it computes over the whole row.
    static func pieces(_ matrix: WeightMatrix, bytes: Int) -> [Range<Int>] {
        let rows = max(16, bytes / max(matrix.rowBytes, 1) / 16 * 16)
        return Parallel.ranges(matrix.rows, parts: (matrix.rows + rows - 1) / rows)
    }

    /// The experts of `groups` in two passes of pieces (see `piecewiseRows`): every output the sum that
    /// `FeedForwardWeights.apply` gives it. x: the groups' rows `[*, h]`; scratch: each group's `[rows, 2·intermediate]`
    /// at its offset; y: `[*, h]`, overwritten.
    static func piecewise(_ groups: [Group], hidden x: UnsafeMutablePointer<Float>, hiddenSize h: Int,
                          scratch: UnsafeMutablePointer<Float>, into y: UnsafeMutablePointer<Float>, pieceBytes: Int = pieceBytes) {
        var first: [(group: Int, rows: Range<Int>)] = [], second: [(group: Int, rows: Range<Int>)] = []
        for (g, group) in groups.enumerated() {
            for r in pieces(group.ffn.gate, bytes: pieceBytes) { first.append((g, r)) }
            for r in pieces(group.ffn.down, bytes: pieceBytes) { second.append((g, r)) }
        }
        nonisolated(unsafe) let (xp, yp, sp) = (x, y, scratch)
        // Gate and up rows r of an expert, then SiLU-GLU on those columns of its scratch rows.
        Parallel.run(first.count) { k in
            let (g, r) = first[k]
            let group = groups[g], ffn = group.ffn, n = ffn.intermediate, tokens = group.rows.count
            let input = xp + group.rows.lowerBound * h, gu = sp + group.scratch
            GEMM.linear(input, tokens: tokens, weight: ffn.gate.rows(r), into: gu + r.lowerBound, ldy: 2 * n, threads: 1)
            GEMM.linear(input, tokens: tokens, weight: ffn.up.rows(r), into: gu + n + r.lowerBound, ldy: 2 * n, threads: 1)
            Elementwise.siluGLU(gu, rows: tokens, n: n, columns: r)
        }
        // Down rows r (output features r of hidden).
        Parallel.run(second.count) { k in
            let (g, r) = second[k]
            let group = groups[g], ffn = group.ffn, n = ffn.intermediate
            GEMM.linear(sp + group.scratch, tokens: group.rows.count, ldx: 2 * n, weight: ffn.down.rows(r),
                        into: yp + group.rows.lowerBound * h + r.lowerBound, ldy: h, threads: 1)
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
