import Kernels

/// Flux Attention's per-layer router (arXiv 2604.07394): from a request's pooled prompt queries, a small MLP picks
/// full or sparse attention for one layer; the choice holds for the request's decode steps.
///
/// The MLP is `Linear(d,8d) SiLU Linear(8d,2d)` (the feature extractor) then `Linear(2d,4d) SiLU Linear(4d,d)
/// SiLU Linear(d,2)` (the head), d = head_dim, with biases; class 1 of the argmax is full attention. In a
/// checkpoint its tensors sit under `model.layers.N.self_attn.mask_allocator.` as Flux names them:
/// `cls_feat_extractor.{0,2}.{weight,bias}` and `cls_router_head_agnostic.{0,2,4}.{weight,bias}`, weights
/// `[out, in]` as PyTorch stores them.
public struct RouterMLP: Sendable {
    public struct Linear: Sendable {
        public let weight: WeightMatrix
        public let bias: [Float]
        public init(weight: WeightMatrix, bias: [Float]) {
            self.weight = weight
            self.bias = bias
        }
    }

    /// The five linears in order.
    public let linears: [Linear]

    public init(linears: [Linear]) {
        precondition(linears.count == 5)
        self.linears = linears
    }

    /// Tensor name (below `model.layers.N.self_attn.mask_allocator.`) and shape `[out, in]` in multiples of d.
    public static let parts: [(name: String, out: Int, in: Int)] = [
        ("cls_feat_extractor.0", 8, 1), ("cls_feat_extractor.2", 2, 8),
        ("cls_router_head_agnostic.0", 4, 2), ("cls_router_head_agnostic.2", 1, 4), ("cls_router_head_agnostic.4", 0, 1),
    ]

    /// Rows of part `i` for head_dim d (the last linear has two outputs).
    public static func rows(part i: Int, d: Int) -> Int { i == 4 ? 2 : parts[i].out * d }

    /// SiLU follows linears 0, 2 and 3.
    static let activated: Set<Int> = [0, 2, 3]

    /// The two class logits for a pooled query `[d]`.
    public func logits(_ pooled: [Float]) -> [Float] {
        var x = pooled
        for (i, layer) in linears.enumerated() {
            var y = [Float](repeating: 0, count: layer.weight.rows)
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    GEMM.linear(xp.baseAddress!, tokens: 1, weight: layer.weight, into: yp.baseAddress!)
                }
            }
            for j in y.indices {
                y[j] += layer.bias[j]
                if Self.activated.contains(i) { y[j] = y[j] / (1 + VectorMath.exp(-y[j])) }
            }
            x = y
        }
        return x
    }
}

/// A deterministic rule for `--attention routed` without (or instead of) router weights (`--router-policy`).
///
/// Clauses separated by `;`: `layers=I,J,...` (these layers sparse), `fraction=F` (⌊F·L⌋ layers sparse, evenly
/// spaced: layer l is sparse when ⌊(l+1)F⌋ > ⌊lF⌋, so 0.5 picks layers 1, 3, 5, ...), and `min-prompt=N` (prompts
/// shorter than N tokens run every layer full; combines with either rule or with router weights).
public struct RouterPolicy: Sendable, Equatable {
    public enum Layers: Sendable, Equatable {
        case list(Set<Int>)
        case fraction(Double)
    }

    public var layers: Layers?
    public var minPrompt = 0

    public init(layers: Layers? = nil, minPrompt: Int = 0) {
        self.layers = layers
        self.minPrompt = minPrompt
    }

    /// Parses the `--router-policy` syntax; the message names the clause that is wrong.
    public init(parsing text: String) throws {
        for clause in text.split(separator: ";", omittingEmptySubsequences: true) {
            let parts = clause.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else { throw ModelError.invalidArgument("--router-policy: '\(clause)' is not key=value") }
            let (key, value) = (parts[0], parts[1])
            switch key {
            case "layers":
                guard layers == nil else { throw ModelError.invalidArgument("--router-policy: give layers= or fraction=, once") }
                var set = Set<Int>()
                for item in value.split(separator: ",", omittingEmptySubsequences: false) {
                    guard let l = Int(item.trimmingCharacters(in: .whitespaces)), l >= 0 else {
                        throw ModelError.invalidArgument("--router-policy: layers= takes layer indices, got '\(item)'")
                    }
                    set.insert(l)
                }
                layers = .list(set)
            case "fraction":
                guard layers == nil else { throw ModelError.invalidArgument("--router-policy: give layers= or fraction=, once") }
                guard let f = Double(value), f >= 0, f <= 1 else {
                    throw ModelError.invalidArgument("--router-policy: fraction= takes a number in [0, 1], got '\(value)'")
                }
                layers = .fraction(f)
            case "min-prompt":
                guard let n = Int(value), n >= 0 else {
                    throw ModelError.invalidArgument("--router-policy: min-prompt= takes a token count, got '\(value)'")
                }
                minPrompt = n
            default:
                throw ModelError.invalidArgument("--router-policy: unknown clause '\(key)' (layers=, fraction=, min-prompt=)")
            }
        }
    }

    /// Whether the rule sends `layer` (of `count`) to sparse attention; nil when it has no layer rule.
    public func sparse(layer l: Int, of count: Int) -> Bool? {
        switch layers {
        case nil: return nil
        case .list(let set): return set.contains(l)
        case .fraction(let f):
            // A hair above the exact product so that 0.1 · 10 counts as 1.
            func filled(_ n: Int) -> Int { Int((Double(n) * f + 1e-9).rounded(.down)) }
            return filled(l + 1) > filled(l)
        }
    }
}

/// Decides full or sparse attention per request and layer (`--attention routed`).
public struct LayerRouter: Sendable {
    /// The router weights of each layer (from the checkpoint), or nil where a policy decides.
    public let weights: [RouterMLP]?
    public let policy: RouterPolicy
    /// Tokens pooled from each end of the prompt (`--router-pool`).
    public let pool: Int

    public init(weights: [RouterMLP]?, policy: RouterPolicy, pool: Int = 100) {
        self.weights = weights
        self.policy = policy
        self.pool = pool
    }

    /// The router's input: queries `[tokens, heads * headDim]` averaged over the first and last `pool` tokens
    /// (over all of them when there are fewer than `2 · pool`), then over heads: `[headDim]`.
    public func pooled(queries q: UnsafePointer<Float>, tokens t: Int, heads: Int, headDim d: Int) -> [Float] {
        let rows = t < 2 * pool ? Array(0..<t) : Array(0..<pool) + Array((t - pool)..<t)
        var sum = [Double](repeating: 0, count: d)
        for r in rows {
            for hd in 0..<heads {
                let p = q + (r * heads + hd) * d
                for j in 0..<d { sum[j] += Double(p[j]) }
            }
        }
        let scale = 1 / Double(max(rows.count * heads, 1))
        return sum.map { Float($0 * scale) }
    }

    /// Whether `layer` of a request with `promptLength` tokens runs sparse, and the router's pooled input when
    /// its weights decided. `queries` are that request's first prefill pass's queries at the layer, after any
    /// q-norm and before RoPE.
    public func decide(layer l: Int, of count: Int, promptLength: Int, queries: UnsafePointer<Float>, tokens: Int,
                       heads: Int, headDim: Int) -> (sparse: Bool, pooled: [Float]?) {
        if promptLength < policy.minPrompt { return (false, nil) }
        if let rule = policy.sparse(layer: l, of: count) { return (rule, nil) }
        guard let weights else { return (false, nil) }
        let input = pooled(queries: queries, tokens: tokens, heads: heads, headDim: headDim)
        let logits = weights[l].logits(input)
        return (!(logits[1] > logits[0]), input)  // class 1 is full attention; a tie goes to class 0, as argmax does
    }

    public func sparse(layer l: Int, of count: Int, promptLength: Int, queries: UnsafePointer<Float>, tokens: Int,
                       heads: Int, headDim: Int) -> Bool {
        decide(layer: l, of: count, promptLength: promptLength, queries: queries, tokens: tokens, heads: heads, headDim: headDim).sparse
    }
}
