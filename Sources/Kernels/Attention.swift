/// Causal grouped-query attention over one sequence's cached keys and values.
public enum Attention {
    /// Head layout of an attention layer.
    public struct Shape: Sendable, Equatable {
        public let heads: Int
        public let kvHeads: Int
        public let headDim: Int
        /// Multiplier of q·k before softmax (`headDim^-0.5` for every model here).
        public let scale: Float

        public init(heads: Int, kvHeads: Int, headDim: Int, scale: Float? = nil) {
            self.heads = heads
            self.kvHeads = kvHeads
            self.headDim = headDim
            self.scale = scale ?? 1 / Float(headDim).squareRoot()
        }

        public var qDim: Int { heads * headDim }
        public var kvDim: Int { kvHeads * headDim }
    }

    /// Full causal attention for `tokens` queries of one sequence at positions `first ..< first + tokens`.
    ///
    /// - q: `[tokens, heads * headDim]`; keys, values: `[first + tokens, kvHeads * headDim]` (positions 0...);
    ///   out: `[tokens, heads * headDim]`.
    /// - window: when set, query position p sees keys `max(0, p - window + 1) ... p` (Mistral's sliding window).
    public static func causal(
        q: UnsafePointer<Float>, tokens: Int, first: Int,
        keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
        shape: Shape, window: Int? = nil, into out: UnsafeMutablePointer<Float>
    ) {
        let pairs = tokens * shape.heads
        let context = first + tokens
        let work = pairs * context * shape.headDim
        let parts = work < (1 << 16) ? 1 : min(Parallel.workers, pairs)
        let chunks = Parallel.ranges(pairs, parts: parts, align: 1)
        nonisolated(unsafe) let (qp, kp, vp, op) = (q, keys, values, out)
        Parallel.run(chunks.count) { c in
            let scores = ThreadScratch.buffer(.attentionScores, count: context + 16)
            for pair in chunks[c] {
                let t = pair / shape.heads, h = pair % shape.heads
                let position = first + t
                let lo = window.map { max(0, position - $0 + 1) } ?? 0
                head(q: qp + t * shape.qDim + h * shape.headDim,
                     keys: kp, values: vp, kvOffset: (h / (shape.heads / shape.kvHeads)) * shape.headDim,
                     range: lo..<(position + 1), shape: shape, scores: scores,
                     into: op + t * shape.qDim + h * shape.headDim)
            }
        }
    }

    /// One query head against keys `range`: softmax(q·Kᵀ·scale)·V into `out[headDim]`.
    @inlinable
    static func head(
        q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, kvOffset: Int,
        range: Range<Int>, shape: Shape, scores: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>
    ) {
        let d = shape.headDim, stride = shape.kvDim, n = range.count
        var m = -Float.infinity
        for (i, j) in range.enumerated() {
            let s = Elementwise.dot(q, keys + j * stride + kvOffset, d) * shape.scale
            scores[i] = s
            m = max(m, s)
        }
        var sum: Float = 0
        var i = 0
        while i + 16 <= n {
            let e = VectorMath.exp(Elementwise.load(scores + i) - SIMD16(repeating: m))
            Elementwise.store(e, scores + i)
            sum += e.sum()
            i += 16
        }
        while i < n { scores[i] = VectorMath.exp(scores[i] - m); sum += scores[i]; i += 1 }
        out.update(repeating: 0, count: d)
        let inv = 1 / sum
        for (i, j) in range.enumerated() {
            Elementwise.axpy(scores[i] * inv, values + j * stride + kvOffset, out, d)
        }
    }
}
