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
    public func apply(_ x: UnsafePointer<Float>, rows: Int, scratch: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        let i = intermediate
        GEMM.linear(x, tokens: rows, weight: gate, into: scratch, ldy: 2 * i)
        GEMM.linear(x, tokens: rows, weight: up, into: scratch + i, ldy: 2 * i)
        Elementwise.siluGLU(scratch, rows: rows, n: i)
        GEMM.linear(scratch, tokens: rows, ldx: 2 * i, weight: down, into: out)
    }
}

/// Runs every expert in this process: tokens are grouped by expert so each expert is one GEMM over all the
/// tokens routed to it, then weighted rows are added back in expert order (as transformers' `index_add_`).
public final class LocalDispatcher: ExpertDispatcher {
    /// `experts[layer][expert]`; nil for a dense layer or an expert this process does not hold.
    public let experts: [[FeedForwardWeights?]]
    let hiddenSize: Int
    private var gathered = GrowableBuffer<Float>()
    private var results = GrowableBuffer<Float>()
    private var scratch = GrowableBuffer<Float>()
    private var order: [(token: Int32, weight: Float)] = []
    private var counts: [Int] = []
    /// Experts that received at least one token in the last `combine` of each layer (for bandwidth figures).
    public private(set) var activeExperts: [Int]

    public init(experts: [[FeedForwardWeights?]], hiddenSize: Int) {
        self.experts = experts
        self.hiddenSize = hiddenSize
        activeExperts = Array(repeating: 0, count: experts.count)
    }

    public func combine(layer: Int, hidden: UnsafePointer<Float>, routing: RoutingDecision, into output: UnsafeMutablePointer<Float>) {
        let h = hiddenSize, n = routing.tokens * routing.topK
        let bank = experts[layer]
        output.update(repeating: 0, count: routing.tokens * h)
        // Counting sort of (token, weight) pairs by expert id.
        counts.removeAll(keepingCapacity: true)
        counts.append(contentsOf: repeatElement(0, count: bank.count + 1))
        for p in 0..<n { counts[Int(routing.ids[p]) + 1] += 1 }
        for e in 0..<bank.count { counts[e + 1] += counts[e] }
        order.removeAll(keepingCapacity: true)
        order.append(contentsOf: repeatElement((token: Int32(0), weight: Float(0)), count: n))
        var fill = counts
        for p in 0..<n {
            let e = Int(routing.ids[p])
            order[fill[e]] = (Int32(p / routing.topK), routing.weights[p])
            fill[e] += 1
        }
        var active = 0
        for e in 0..<bank.count {
            let start = counts[e], rows = counts[e + 1] - start
            guard rows > 0 else { continue }
            guard let ffn = bank[e] else {
                preconditionFailure("layer \(layer) expert \(e) is not held by this process")
            }
            active += 1
            let x = gathered.reserve(rows * h), y = results.reserve(rows * h)
            for r in 0..<rows { (x + r * h).update(from: hidden + Int(order[start + r].token) * h, count: h) }
            ffn.apply(x, rows: rows, scratch: scratch.reserve(rows * 2 * ffn.intermediate), into: y)
            for r in 0..<rows {
                let (t, w) = order[start + r]
                Elementwise.axpy(w, y + r * h, output + Int(t) * h, h)
            }
        }
        activeExperts[layer] = active
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
