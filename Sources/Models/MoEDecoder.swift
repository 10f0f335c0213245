import Foundation
import Kernels

/// The MoE decoder family (Mixtral, Qwen2-MoE, OLMoE, Qwen3-MoE): embeddings, L layers of
/// attention + (MoE or dense) feed-forward, final norm and LM head, with Hugging Face semantics in f32.
public final class MoEDecoder {
    /// Attention weights of one layer.
    public struct AttentionWeights: Sendable {
        public let q, k, v, o: WeightMatrix
        public let qBias, kBias, vBias: [Float]?
        /// RMSNorm weights for q and k (`[qDim]`/`[kvDim]` whole-projection or `[headDim]` per head).
        public let qNorm, kNorm: [Float]?
    }

    /// The feed-forward block of one layer.
    public enum FeedForward: Sendable {
        case moe(router: WeightMatrix, shared: FeedForwardWeights?, sharedGate: WeightMatrix?)
        case dense(FeedForwardWeights)
    }

    /// One decoder layer.
    public struct Layer: Sendable {
        public let inputNorm: [Float]
        public let postAttentionNorm: [Float]
        public let attention: AttentionWeights
        public let feedForward: FeedForward
    }

    public let spec: DecoderSpec
    public let layers: [Layer]
    public let embedding: WeightMatrix
    public let finalNorm: [Float]
    public let lmHead: WeightMatrix
    let rope: RoPE
    /// The routed experts this process holds.
    public let bank: ExpertBank
    /// Who runs the routed experts (in-process by default).
    public var dispatcher: ExpertDispatcher
    /// Called once per MoE layer with the router's decision (for `moe forward` and routing traces).
    public var routingObserver: ((_ layer: Int, _ routing: RoutingDecision) -> Void)?
    /// Called with each decision the layer router's weights make: the pooled queries it read and its choice.
    public var routerObserver: ((_ layer: Int, _ pooled: [Float], _ sparse: Bool) -> Void)?
    var work = Workspace()

    public init(spec: DecoderSpec, layers: [Layer], embedding: WeightMatrix, finalNorm: [Float], lmHead: WeightMatrix,
                bank: ExpertBank) {
        self.spec = spec
        self.layers = layers
        self.embedding = embedding
        self.finalNorm = finalNorm
        self.lmHead = lmHead
        self.bank = bank
        dispatcher = LocalDispatcher(bank: bank)
        rope = RoPE(theta: spec.ropeTheta, headDim: spec.headDim, scaling: spec.ropeScaling)
    }

    /// Positions one sequence may use, prompt and generated tokens together (`--max-model-len`; the command line
    /// sets the config's `max_position_embeddings` by default).
    public var maxModelLen = Int.max
    /// The most prompt tokens of one sequence a prefill pass takes (`--prefill-chunk`): longer prompts run as
    /// several passes, each attending to the chunks cached before it. Nil: the whole prompt at once.
    public var prefillChunk: Int?
    /// Sparse attention (`--attention sparse`, or `routed` where the router says so): masked, positions keep their
    /// RoPE positions. Nil: full attention, with a config's `sliding_window` where it has one.
    public var sparse: Visibility?
    /// Quest's top-k pages (`--sparse-kind topk`) for the layers that run sparse: decode reads the sink pages, the
    /// query's page and the best-bounded others within the budget; prefill runs full. Needs a pool that keeps
    /// key bounds.
    public var topK: TopKPages?
    /// Pages the top-k decode read (summed over layers and KV heads) since start.
    public var topKPagesRead = 0
    /// `--attention routed`: picks full or sparse per request and layer. Nil with `sparse` or `topK` set: every
    /// layer sparse.
    public var router: LayerRouter?
    /// Flux router weights found in the checkpoint, one per layer; nil when it has none.
    public var routerWeights: [RouterMLP]?
    /// Seconds spent in attention proper (writing K/V and attending, not the projections) since start: what the
    /// context length and sparse attention change.
    public var attentionSeconds = 0.0
    /// The pages every sequence's KV cache takes (`--kv-memory`, `--page-size`); nil: each cache a pool of its own.
    public var kvPool: KVPool?
    /// How new KV caches store keys and values (`--kv-dtype`).
    public var kvDType = KVDType.f32

    /// Whether `layer` runs sparse attention (window or top-k) for the sequence of `cache`.
    public func isSparse(layer l: Int, cache: KVCache) -> Bool {
        guard sparse != nil || topK != nil else { return false }
        return router == nil || cache.routedSparse[l] == true
    }

    /// The keys a query of `layer` sees in the sequence of `cache` (top-k layers: all, as their prefill runs full).
    public func visibility(layer l: Int, cache: KVCache) -> Visibility {
        let full = spec.slidingWindow[l].map { Visibility.slidingWindow($0) } ?? .causal
        guard let sparse, isSparse(layer: l, cache: cache) else { return full }
        return sparse
    }

    /// The layers that ran (or will run) sparse attention for the sequence of `cache`, or nil when attention is
    /// full everywhere (`--attention full`).
    public func sparseLayers(_ cache: KVCache) -> [Int]? {
        guard sparse != nil || topK != nil else { return nil }
        return (0..<spec.layers).filter { isSparse(layer: $0, cache: cache) }
    }

    /// With a router: decides, for every segment that starts its sequence (its first prefill pass, the whole
    /// prompt or its first chunk), from its queries `[tokens, qDim]` (after any q-norm, before RoPE). Later passes
    /// and decode steps keep the decision; a rank that did not prefill the sequence gets it with the K/V.
    func routeAttention(layer l: Int, batch: Batch, queries q: UnsafePointer<Float>) {
        guard let router, sparse != nil || topK != nil else { return }
        var row = 0
        for s in batch.segments {
            if s.cache.length == 0 && s.cache.routedSparse[l] == nil {
                let (sparse, pooled) = router.decide(
                    layer: l, of: spec.layers, promptLength: s.cache.promptLength ?? (s.cache.length + s.count),
                    queries: q + row * spec.qDim, tokens: s.count, heads: spec.heads, headDim: spec.headDim)
                s.cache.routedSparse[l] = sparse
                if let pooled { routerObserver?(l, pooled, sparse) }
            }
            row += s.count
        }
    }

    /// A new, empty KV cache for one sequence of this model, with pages of `kvPool` for `capacity` positions
    /// (admission reserves prompt and max_new_tokens, so a running sequence never runs out); throws
    /// `KVPoolExhausted` when too few are free. Without a pool (a library user that set none), the cache gets a
    /// pool of its own for `max(capacity, 256)` positions.
    /// `promptLength`: the prompt it will hold, as the layer router's `min-prompt` rule reads it.
    public func makeCache(capacity: Int = 64, promptLength: Int? = nil) throws -> KVCache {
        let pool = kvPool ?? KVPool(layers: spec.layers, kvDim: spec.kvDim, dtype: kvDType, pageSize: 16,
                                    pageCount: (max(capacity, 256) + 15) / 16, keyBounds: topK != nil)
        let cache = try KVCache(pool: pool, capacity: capacity)
        cache.promptLength = promptLength
        return cache
    }

    /// Pages that no layer of `cache`'s sequence reads again go back to the pool: where every layer's attention
    /// is windowed (sparse, or a config's sliding window), the keys between the sink and the oldest window.
    public func releaseUnread(_ cache: KVCache) {
        var lo = 0, hi = Int.max  // the keys no layer reads: the intersection of every layer's
        for l in 0..<spec.layers {
            let u = visibility(layer: l, cache: cache).unread(from: cache.length)
            lo = max(lo, u.lowerBound)
            hi = min(hi, u.upperBound)
            if lo >= hi { return }
        }
        cache.release(unread: lo..<hi)
    }

    /// Tokens of several sequences run through the model together; each sequence continues its own cache.
    public struct Batch {
        /// One sequence's share of the batch: `count` consecutive tokens appended to `cache`.
        public struct Segment {
            public let cache: KVCache
            public let count: Int
            public init(cache: KVCache, count: Int) { self.cache = cache; self.count = count }
        }

        /// Token ids of all segments, in segment order.
        public var tokens: [Int]
        public var segments: [Segment]

        public init(tokens: [Int], segments: [Segment]) {
            self.tokens = tokens
            self.segments = segments
        }

        /// One sequence: `tokens` appended to `cache`.
        public init(tokens: [Int], cache: KVCache) {
            self.init(tokens: tokens, segments: [Segment(cache: cache, count: tokens.count)])
        }
    }

    /// Which rows of the batch get logits.
    public enum LogitRows {
        case all
        case lastOfEachSegment
    }

    /// Runs the batch, appends its keys and values to each segment's cache, and returns logits
    /// `[rows, vocab]` for the chosen rows.
    public func forward(_ batch: Batch, logits rows: LogitRows) throws -> [Float] {
        let t = batch.tokens.count
        guard t > 0 else { throw ModelError.emptyPrompt }
        guard batch.segments.reduce(0, { $0 + $1.count }) == t else {
            throw ModelError.invalidArgument("batch segments cover \(batch.segments.reduce(0) { $0 + $1.count }) tokens, not \(t)")
        }
        for id in batch.tokens where id < 0 || id >= spec.vocabSize {
            throw ModelError.tokenOutOfRange(id: id, vocabulary: spec.vocabSize)
        }
        for s in batch.segments { try s.cache.reserve(s.cache.length + s.count) }
        let h = spec.hiddenSize
        let x = work.x.reserve(t * h)
        embed(batch.tokens, into: x)
        let table = rotaryTable(batch)
        for l in 0..<layers.count {
            attention(layer: l, batch: batch, x: x, rotary: table)
            feedForward(layer: l, tokens: t, x: x)
        }
        for s in batch.segments {
            s.cache.commit(s.count)
            releaseUnread(s.cache)
        }

        var selected: [Int]
        switch rows {
        case .all: selected = Array(0..<t)
        case .lastOfEachSegment:
            var end = 0
            selected = batch.segments.map { end += $0.count; return end - 1 }
        }
        return logits(x, rows: selected)
    }

    /// Embedding rows of `tokens` into x `[tokens.count, hidden]` (ids must be in the vocabulary).
    public func embed(_ tokens: [Int], into x: UnsafeMutablePointer<Float>) {
        let h = spec.hiddenSize
        for (i, id) in tokens.enumerated() { embedding.widen(rows: id..<(id + 1), into: x + i * h) }
    }

    /// cos and sin of the positions the batch's tokens take (each segment continues its cache).
    public func rotaryTable(_ batch: Batch) -> RotaryTable {
        var positions: [Int] = []
        positions.reserveCapacity(batch.tokens.count)
        for s in batch.segments {
            positions.append(contentsOf: s.cache.length..<(s.cache.length + s.count))
        }
        let (cos, sin) = rope.table(positions: positions)
        return RotaryTable(cos: cos, sin: sin)
    }

    /// Final norm and LM head for the chosen rows of x: logits `[rows.count, vocab]`.
    public func logits(_ x: UnsafePointer<Float>, rows selected: [Int]) -> [Float] {
        let h = spec.hiddenSize
        let xn = work.xn.reserve(selected.count * h)
        for (r, row) in selected.enumerated() {
            Elementwise.rmsNorm(x + row * h, weight: finalNorm, eps: spec.rmsNormEps, rows: 1, n: h, into: xn + r * h)
        }
        var logits = [Float](repeating: 0, count: selected.count * spec.vocabSize)
        logits.withUnsafeMutableBufferPointer { out in
            GEMM.linear(xn, tokens: selected.count, weight: lmHead, into: out.baseAddress!)
        }
        return logits
    }

    /// x += o_proj(attention(norm(x))) for every segment, writing the new keys and values to the caches at
    /// positions `cache.length ..< cache.length + count` (the caches advance only on `commit`).
    public func attention(layer l: Int, batch: Batch, x: UnsafeMutablePointer<Float>, rotary: RotaryTable) {
        let w = layers[l].attention, t = batch.tokens.count, h = spec.hiddenSize
        let qDim = spec.qDim, kvDim = spec.kvDim
        let xn = work.xn.reserve(t * h)
        Elementwise.rmsNorm(x, weight: layers[l].inputNorm, eps: spec.rmsNormEps, rows: t, n: h, into: xn)
        let q = work.q.reserve(t * qDim), k = work.k.reserve(t * kvDim), v = work.v.reserve(t * kvDim)
        GEMM.linear(xn, tokens: t, weight: w.q, into: q)
        GEMM.linear(xn, tokens: t, weight: w.k, into: k)
        GEMM.linear(xn, tokens: t, weight: w.v, into: v)
        if let b = w.qBias { addBias(b, q, rows: t) }
        if let b = w.kBias { addBias(b, k, rows: t) }
        if let b = w.vBias { addBias(b, v, rows: t) }
        switch spec.qkNorm {
        case .none: break
        case .wholeProjection:
            Elementwise.rmsNorm(q, weight: w.qNorm!, eps: spec.rmsNormEps, rows: t, n: qDim, into: q)
            Elementwise.rmsNorm(k, weight: w.kNorm!, eps: spec.rmsNormEps, rows: t, n: kvDim, into: k)
        case .perHead:
            Elementwise.rmsNorm(q, weight: w.qNorm!, eps: spec.rmsNormEps, rows: t * spec.heads, n: spec.headDim, into: q)
            Elementwise.rmsNorm(k, weight: w.kNorm!, eps: spec.rmsNormEps, rows: t * spec.kvHeads, n: spec.headDim, into: k)
        }
        if let c = spec.clipQKV {
            for (p, n) in [(q, t * qDim), (k, t * kvDim), (v, t * kvDim)] {
                for i in 0..<n { p[i] = min(max(p[i], -c), c) }
            }
        }
        routeAttention(layer: l, batch: batch, queries: q)
        rotary.cos.withUnsafeBufferPointer { cp in
            rotary.sin.withUnsafeBufferPointer { sp in
                rope.apply(q, tokens: t, heads: spec.heads, cos: cp.baseAddress!, sin: sp.baseAddress!)
                rope.apply(k, tokens: t, heads: spec.kvHeads, cos: cp.baseAddress!, sin: sp.baseAddress!)
            }
        }
        let out = work.attention.reserve(t * qDim)
        let shape = Attention.Shape(heads: spec.heads, kvHeads: spec.kvHeads, headDim: spec.headDim)
        let started = Clock.now
        defer { attentionSeconds += Clock.since(started) }
        var row = 0
        // Decode queries short enough to run on one thread each: run side by side after the loop, one sequence per
        // thread, instead of one after another on the calling thread (each gives the same result either way).
        var alone: [(row: Int, first: Int, rows: Attention.Rows, visibility: Visibility)] = []
        for s in batch.segments {
            let first = s.cache.length
            s.cache.write(layer: l, first: first, count: s.count, keys: k + row * kvDim, values: v + row * kvDim)
            // Decode steps only (past the prompt): prefill runs full, even a pass of one token.
            if let topK, s.count == 1, first >= (s.cache.promptLength ?? 0), s.cache.pool.keepsKeyBounds, isSparse(layer: l, cache: s.cache) {
                let pages = s.cache.pool.pages(for: topK.budget)
                topKPagesRead += Attention.topKDecode(
                    q: q + row * qDim, position: first, rows: s.cache.rows(l), bounds: s.cache.pool.keyBounds(l), shape: shape,
                    budgetPages: pages, sinkPages: s.cache.pool.pages(for: topK.sink), into: out + row * qDim)
                row += s.count
                continue
            }
            let seen = visibility(layer: l, cache: s.cache)
            if s.count == 1, case let keys = seen.ranges(first), Attention.decodeParts(keys: keys.sink.count + keys.recent.count, shape: shape) == 1 {
                alone.append((row, first, s.cache.rows(l), seen))
                row += 1
                continue
            }
            Attention.causal(q: q + row * qDim, tokens: s.count, first: first, rows: s.cache.rows(l),
                             shape: shape, visibility: seen, into: out + row * qDim)
            row += s.count
        }
        nonisolated(unsafe) let (qp, op) = (UnsafePointer(q), out)
        Parallel.run(alone.count) { i in
            let a = alone[i]
            Attention.causal(q: qp + a.row * qDim, tokens: 1, first: a.first, rows: a.rows, shape: shape,
                             visibility: a.visibility, into: op + a.row * qDim)
        }
        GEMM.linear(out, tokens: t, weight: w.o, into: x, accumulate: true)
    }

    /// x += ffn(norm(x)): routed experts (plus a gated shared expert) or a dense MLP.
    func feedForward(layer l: Int, tokens t: Int, x: UnsafeMutablePointer<Float>) {
        let h = spec.hiddenSize
        let xn = feedForwardNorm(layer: l, x: x, tokens: t)
        let y = work.ffn.reserve(t * h)
        switch layers[l].feedForward {
        case .dense:
            denseFeedForward(layer: l, normed: xn, tokens: t, into: y)
        case .moe(let router, _, _):
            let routing = route(layer: l, router: router, hidden: xn, tokens: t)
            routingObserver?(l, routing)
            dispatcher.combine(layer: l, hidden: xn, routing: routing, into: y)
            addSharedExpert(layer: l, normed: xn, tokens: t, into: y)
        }
        Elementwise.add(y, into: x, t * h)
    }

    /// The post-attention RMSNorm of x `[tokens, hidden]`, in a workspace buffer valid until the next call.
    public func feedForwardNorm(layer l: Int, x: UnsafePointer<Float>, tokens t: Int) -> UnsafeMutablePointer<Float> {
        let xn = work.xn.reserve(t * spec.hiddenSize)
        Elementwise.rmsNorm(x, weight: layers[l].postAttentionNorm, eps: spec.rmsNormEps, rows: t, n: spec.hiddenSize, into: xn)
        return xn
    }

    /// The dense MLP of a non-MoE layer: y = mlp(xn).
    public func denseFeedForward(layer l: Int, normed xn: UnsafePointer<Float>, tokens t: Int, into y: UnsafeMutablePointer<Float>) {
        guard case .dense(let mlp) = layers[l].feedForward else { preconditionFailure("layer \(l) is an MoE layer") }
        mlp.apply(xn, rows: t, scratch: work.scratch.reserve(t * 2 * mlp.intermediate), into: y)
    }

    /// The router's decision for `layer` on normed hidden states (buffers valid until the next call).
    public func route(layer l: Int, normed xn: UnsafePointer<Float>, tokens t: Int) -> RoutingDecision {
        guard case .moe(let router, _, _) = layers[l].feedForward else { preconditionFailure("layer \(l) is dense") }
        return route(layer: l, router: router, hidden: xn, tokens: t)
    }

    /// y += sigmoid(gate·xn) · shared(xn) when the layer has a shared expert (Qwen2-MoE); otherwise nothing.
    public func addSharedExpert(layer l: Int, normed xn: UnsafePointer<Float>, tokens t: Int, into y: UnsafeMutablePointer<Float>) {
        guard case .moe(_, let shared?, let sharedGate?) = layers[l].feedForward else { return }
        let h = spec.hiddenSize
        let s = work.shared.reserve(t * h), g = work.gate.reserve(t)
        shared.apply(xn, rows: t, scratch: work.scratch.reserve(t * 2 * shared.intermediate), into: s)
        GEMM.linear(xn, tokens: t, weight: sharedGate, into: g)
        for r in 0..<t { Elementwise.axpy(Elementwise.sigmoid(g[r]), s + r * h, y + r * h, h) }
    }

    /// Router: softmax over expert logits, top-k (ties to the lower id), renormalised if the model says so.
    func route(layer l: Int, router: WeightMatrix, hidden: UnsafePointer<Float>, tokens t: Int) -> RoutingDecision {
        let e = spec.experts, k = spec.topK
        let logits = work.routerLogits.reserve(t * e)
        GEMM.linear(hidden, tokens: t, weight: router, into: logits)
        let ids = work.topIds.reserve(t * k), weights = work.topWeights.reserve(t * k)
        for r in 0..<t {
            let p = logits + r * e
            Routing.softmax(p, e)
            Routing.topK(p, e, k: k, ids: ids + r * k, values: weights + r * k)
            if spec.normTopK {
                var sum: Float = 0
                for j in 0..<k { sum += weights[r * k + j] }
                for j in 0..<k { weights[r * k + j] /= sum }
            }
        }
        return RoutingDecision(tokens: t, topK: k, ids: ids, weights: weights, probabilities: logits, renormalised: spec.normTopK, experts: e)
    }

    private func addBias(_ bias: [Float], _ y: UnsafeMutablePointer<Float>, rows: Int) {
        let n = bias.count
        bias.withUnsafeBufferPointer { b in
            for r in 0..<rows { Elementwise.add(b.baseAddress!, into: y + r * n, n) }
        }
    }

    /// The type the linear layers keep (their first: all share it), what `bench` reports as the weights' type.
    public var linearType: ElementType { layers.first?.attention.q.type ?? embedding.type }

    /// Bytes of weights in memory: everything, and the routed experts' share.
    public var weightBytes: (total: Int, experts: Int) {
        var total = embedding.byteCount + (spec.tieWordEmbeddings ? 0 : lmHead.byteCount) + finalNorm.count * 4
        let experts = bank.byteCount
        total += experts
        for layer in layers {
            let a = layer.attention
            total += a.q.byteCount + a.k.byteCount + a.v.byteCount + a.o.byteCount
            total += (layer.inputNorm.count + layer.postAttentionNorm.count) * 4
            switch layer.feedForward {
            case .dense(let f): total += f.byteCount
            case .moe(let router, let shared, let gate):
                total += router.byteCount + (shared?.byteCount ?? 0) + (gate?.byteCount ?? 0)
            }
        }
        return (total, experts)
    }
}

/// Quest's decode budget: `budget` tokens of pages per KV head, always with the pages of the first `sink` tokens.
public struct TopKPages: Sendable, Equatable {
    public var budget: Int
    public var sink: Int
    public init(budget: Int, sink: Int) {
        self.budget = budget
        self.sink = sink
    }
}

/// cos and sin of a batch's positions, `[tokens, headDim/2]` each.
public struct RotaryTable {
    public let cos: [Float]
    public let sin: [Float]
}

/// Grow-only activation buffers reused across forward passes.
struct Workspace {
    var x = GrowableBuffer<Float>(), xn = GrowableBuffer<Float>()
    var q = GrowableBuffer<Float>(), k = GrowableBuffer<Float>(), v = GrowableBuffer<Float>()
    var attention = GrowableBuffer<Float>(), ffn = GrowableBuffer<Float>(), shared = GrowableBuffer<Float>()
    var gate = GrowableBuffer<Float>(), scratch = GrowableBuffer<Float>()
    var routerLogits = GrowableBuffer<Float>(), topWeights = GrowableBuffer<Float>()
    var topIds = GrowableBuffer<Int32>()
}
