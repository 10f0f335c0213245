import COpenBLAS

/// How K/V rows are stored: f32, or bf16 (rounded to nearest, ties to even, when written; half the bytes).
public enum KVDType: String, Sendable, CaseIterable {
    case f32, bf16

    public var byteSize: Int { self == .f32 ? 4 : 2 }
}

/// Which keys a query at position p sees: always j <= p, and within that a window.
public enum Visibility: Sendable, Equatable {
    /// Every earlier key.
    case causal
    /// Keys p - w + 1 ... p (a config's `sliding_window`, as Mistral and Hugging Face define it).
    case slidingWindow(Int)
    /// Flux's sink + window, block-aligned: j is seen iff floor(j/B) < S/B or floor(p/B) - floor(j/B) < W/B
    /// (S and W multiples of B; B = 1 gives token granularity, and S = 0 with B = 1 is a sliding window of W).
    case sinkWindow(sink: Int, window: Int, block: Int)

    /// The keys position p sees as two ascending ranges, a sink (possibly empty) and the recent keys; they never
    /// touch (where they would, the second holds both).
    @inlinable
    public func ranges(_ p: Int) -> (sink: Range<Int>, recent: Range<Int>) {
        switch self {
        case .causal: return (0..<0, 0..<(p + 1))
        case .slidingWindow(let w): return (0..<0, max(0, p - w + 1)..<(p + 1))
        case .sinkWindow(let sink, let window, let block):
            let recent = max(0, (p / block - window / block + 1) * block)
            return recent <= sink ? (0..<0, 0..<(p + 1)) : (0..<min(sink, p + 1), recent..<(p + 1))
        }
    }

    /// Keys no position from `next` on sees: between the sink and the window of `next` (windows only move
    /// forward). Empty for full causal attention.
    public func unread(from next: Int) -> Range<Int> {
        let (sink, recent) = ranges(next)
        return sink.upperBound < recent.lowerBound ? sink.upperBound..<recent.lowerBound : 0..<0
    }

    /// Keys some position of `positions` sees, as at most two ascending, disjoint ranges.
    func ranges(covering positions: ClosedRange<Int>) -> [Range<Int>] {
        let sink = ranges(positions.upperBound).sink, lowest = ranges(positions.lowerBound).recent.lowerBound
        if sink.isEmpty || sink.upperBound >= lowest { return [(sink.isEmpty ? lowest : 0)..<(positions.upperBound + 1)] }
        return [sink, lowest..<(positions.upperBound + 1)]
    }
}

/// Causal grouped-query attention over one sequence's cached keys and values, exact (softmax in f32 with a
/// running maximum, as FlashAttention computes it).
///
/// Both phases run one block routine: the query rows of one KV head's group (every query head that shares it, for
/// one or more tokens) against a range of keys, in key tiles, scores and the weighted sum of values by
/// single-threaded OpenBLAS sgemm (so a key tile is read once for the whole group), the softmax online (per row a
/// running maximum and sum; the output rescaled when the maximum grows). Prefill gives each thread whole query
/// tiles. Decode (one query) splits the context across the threads (flash-decoding), each streaming its K rows and
/// then its V rows once for all heads, and merges the partial results by their maxima. bf16 rows are widened as
/// they are read.
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
        /// Query heads per KV head.
        public var group: Int { heads / kvHeads }
    }

    /// One layer's cached keys and values, `[positions, kvHeads * headDim]` each: contiguous, or in pages of
    /// `pageSize` rows, position j at physical row `pages[j / pageSize] · pageSize + j % pageSize`.
    public struct Rows {
        public let keys: UnsafeRawPointer
        public let values: UnsafeRawPointer
        public let dtype: KVDType
        public let pages: UnsafePointer<Int32>?
        public let pageSize: Int

        public init(keys: UnsafeRawPointer, values: UnsafeRawPointer, dtype: KVDType, pages: UnsafePointer<Int32>? = nil,
                    pageSize: Int = 1) {
            self.keys = keys
            self.values = values
            self.dtype = dtype
            self.pages = pages
            self.pageSize = pageSize
        }

        /// The physical row of position j.
        @inline(__always)
        public func row(_ j: Int) -> Int {
            guard let pages else { return j }
            return Int(pages[j / pageSize]) * pageSize + j % pageSize
        }

        /// Positions from j to the end of j's page (or to `end`): rows that are adjacent in memory.
        @inline(__always)
        func run(from j: Int, end: Int) -> Int {
            guard pages != nil else { return end - j }
            return min(end, (j / pageSize + 1) * pageSize) - j
        }
    }

    /// Keys per tile, and the fewest keys a decode thread takes.
    static let keyTile = 256
    static let keysPerDecodeThread = 512
    /// Query tokens per prefill tile: about 128 score rows whatever the group size.
    static func queryTile(group: Int) -> Int { max(8, 128 / max(group, 1)) }
    /// Below this many multiply-adds a call runs on the calling thread.
    static let parallelWork = 1 << 17

    /// Full causal attention for `tokens` queries of one sequence at positions `first ..< first + tokens`, over
    /// f32 keys and values `[first + tokens, kvHeads * headDim]`. See `causal(q:tokens:first:rows:shape:visibility:into:)`.
    public static func causal(
        q: UnsafePointer<Float>, tokens: Int, first: Int,
        keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
        shape: Shape, window: Int? = nil, into out: UnsafeMutablePointer<Float>
    ) {
        causal(q: q, tokens: tokens, first: first, rows: Rows(keys: keys, values: values, dtype: .f32), shape: shape,
               visibility: window.map { .slidingWindow($0) } ?? .causal, into: out)
    }

    /// Full causal attention for `tokens` queries of one sequence at positions `first ..< first + tokens`.
    ///
    /// - q: `[tokens, heads * headDim]`; rows: keys and values of positions `0 ..< first + tokens`;
    ///   out: `[tokens, heads * headDim]`.
    /// - visibility: which earlier keys each position sees (masked, so positions keep their RoPE positions).
    public static func causal(
        q: UnsafePointer<Float>, tokens: Int, first: Int, rows: Rows,
        shape: Shape, visibility: Visibility = .causal, into out: UnsafeMutablePointer<Float>
    ) {
        guard tokens > 0 else { return }
        if tokens == 1 {
            decode(q: q, position: first, rows: rows, shape: shape, keys: visibility.ranges(covering: first...first), into: out)
        } else {
            prefill(q: q, tokens: tokens, first: first, rows: rows, shape: shape, visibility: visibility, into: out)
        }
    }

    // MARK: Prefill

    static func prefill(
        q: UnsafePointer<Float>, tokens: Int, first: Int, rows kv: Rows, shape: Shape, visibility: Visibility,
        into out: UnsafeMutablePointer<Float>
    ) {
        let tq = queryTile(group: shape.group), g = shape.group, d = shape.headDim
        let tiles = (tokens + tq - 1) / tq
        let tasks = tiles * shape.kvHeads
        let last = visibility.ranges(first + tokens - 1)  // about the most keys any row sees
        let work = tokens * min(first + tokens, last.sink.count + last.recent.count + tq) * shape.heads * d
        let parts = work < parallelWork ? 1 : min(Parallel.workers, tasks)
        nonisolated(unsafe) let (qp, op) = (q, out)
        // Task i: the latest query tiles first (they see the most keys), dealt round-robin to the threads so each
        // gets a like share of long and short tiles.
        Parallel.run(parts) { part in
            var task = part
            while task < tasks {
                let tile = tiles - 1 - task / shape.kvHeads, kvHead = task % shape.kvHeads
                let t0 = tile * tq, span = t0..<min(tokens, t0 + tq), n = span.count * g
                let state = ThreadScratch.buffer(.attentionRows, count: n * (d + 2))
                let acc = state, maxima = acc + n * d, sums = maxima + n
                let keys = visibility.ranges(covering: (first + span.lowerBound)...(first + span.upperBound - 1))
                block(q: qp, tokens: span, first: first, kvHead: kvHead, keys: keys, rows: kv,
                      shape: shape, visibility: visibility, acc: acc, maxima: maxima, sums: sums)
                for (i, t) in span.enumerated() {
                    for hh in 0..<g {
                        let r = i * g + hh, dst = op + t * shape.qDim + (kvHead * g + hh) * d
                        let inv = 1 / sums[r]
                        for x in 0..<d { dst[x] = acc[r * d + x] * inv }
                    }
                }
                task += parts
            }
        }
    }

    // MARK: Decode

    /// How many threads one decode query against `keys` visible keys is split over (1: it runs on the calling
    /// thread, so several such queries can run side by side).
    public static func decodeParts(keys n: Int, shape: Shape) -> Int {
        n * shape.heads * shape.headDim < parallelWork ? 1 : min(Parallel.workers, (n + keysPerDecodeThread - 1) / keysPerDecodeThread)
    }

    /// One query at `position` against the keys of `visible` (ascending, disjoint ranges), split across the
    /// worker threads.
    static func decode(
        q: UnsafePointer<Float>, position: Int, rows kv: Rows, shape: Shape, keys visible: [Range<Int>], into out: UnsafeMutablePointer<Float>
    ) {
        let n = visible.reduce(0) { $0 + $1.count }, d = shape.headDim, heads = shape.heads
        let parts = decodeParts(keys: n, shape: shape)
        // Each thread's share of the visible keys, as position ranges.
        let chunks = Parallel.ranges(n, parts: parts, align: 16).map { share -> [Range<Int>] in
            var out: [Range<Int>] = [], skipped = 0
            for r in visible {
                let lo = max(share.lowerBound - skipped, 0), hi = min(share.upperBound - skipped, r.count)
                if lo < hi { out.append((r.lowerBound + lo)..<(r.lowerBound + hi)) }
                skipped += r.count
            }
            return out
        }
        // Per chunk: every head's unnormalised output, then its maximum and sum.
        let stride = heads * (d + 2)
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: chunks.count * stride)
        defer { partial.deallocate() }
        nonisolated(unsafe) let (qp, pp) = (q, partial)
        Parallel.run(chunks.count) { c in
            let base = pp + c * stride
            decodeBlock(q: qp, keys: chunks[c], rows: kv, shape: shape,
                        acc: base, maxima: base + heads * d, sums: base + heads * d + heads)
        }
        // Merge: each chunk's sum and output weighted by e^(its maximum - the overall maximum).
        for h in 0..<heads {
            var m = -Float.infinity
            for c in chunks.indices { m = max(m, partial[c * stride + heads * d + h]) }
            let dst = out + h * d
            dst.update(repeating: 0, count: d)
            var total: Float = 0
            for c in chunks.indices {
                let base = partial + c * stride
                let w = VectorMath.exp(base[heads * d + h] - m)
                total += w * base[heads * d + heads + h]
                Elementwise.axpy(w, base + h * d, dst, d)
            }
            scale(dst, by: 1 / total, d)
        }
    }

    /// Every head of one query against key positions `keys`, one pass over their K rows and one over their V
    /// rows in memory order (decode is bound by reading them): per head the maximum score, the sum of
    /// e^(score - maximum) and Σ e^(score - maximum)·v. Each K/V row serves every query head of its KV heads.
    static func decodeBlock(
        q: UnsafePointer<Float>, keys ranges: [Range<Int>], rows kv: Rows, shape: Shape,
        acc: UnsafeMutablePointer<Float>, maxima: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Float>
    ) {
        let heads = shape.heads, g = shape.group, d = shape.headDim, kvDim = shape.kvDim
        let positions = ranges.joined(), n = positions.count
        let scratch = ThreadScratch.buffer(.attentionScores, count: heads * n + kvDim + heads * d)
        let scores = scratch, row = scores + heads * n, qs = row + kvDim
        for i in 0..<(heads * d) { qs[i] = q[i] * shape.scale }
        for (i, j) in positions.enumerated() {
            let k = rowAt(kv.keys, kv.dtype, kv.row(j), kvDim: kvDim, into: row)
            for h in 0..<heads { scores[h * n + i] = Elementwise.dot(qs + h * d, k + (h / g) * d, d) }
        }
        for h in 0..<heads {
            maxima[h] = rowMax(scores + h * n, 0..<n)
            sums[h] = expInPlace(scores + h * n, 0..<n, minus: maxima[h])
        }
        acc.update(repeating: 0, count: heads * d)
        for (i, j) in positions.enumerated() {
            let v = rowAt(kv.values, kv.dtype, kv.row(j), kvDim: kvDim, into: row)
            for h in 0..<heads { Elementwise.axpy(scores[h * n + i], v + (h / g) * d, acc + h * d, d) }
        }
    }

    /// Physical row j (every KV head) as f32: in place, or widened from bf16 into `scratch`.
    @inline(__always)
    static func rowAt(_ base: UnsafeRawPointer, _ dtype: KVDType, _ j: Int, kvDim: Int,
                      into scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
        switch dtype {
        case .f32: return base.assumingMemoryBound(to: Float.self) + j * kvDim
        case .bf16:
            Widen.bf16(base.assumingMemoryBound(to: UInt16.self) + j * kvDim, into: scratch, count: kvDim)
            return UnsafePointer(scratch)
        }
    }

    // MARK: The block

    /// Query tokens `tokens` (positions `first + t`) for the query heads of `kvHead`, against key positions
    /// `keys` (ascending, disjoint ranges), each row masked to what its position sees. Leaves per row r = (token
    /// `tokens.lowerBound + r / g`, head `kvHead·g + r % g`) the running maximum score, the sum of e^(score -
    /// maximum) and Σ e^(score - maximum)·v in `acc[r]`; a row that sees no key has maximum -∞ and sum 0.
    static func block(
        q: UnsafePointer<Float>, tokens: Range<Int>, first: Int, kvHead: Int, keys ranges: [Range<Int>], rows kv: Rows,
        shape: Shape, visibility: Visibility, acc: UnsafeMutablePointer<Float>, maxima: UnsafeMutablePointer<Float>,
        sums: UnsafeMutablePointer<Float>
    ) {
        let g = shape.group, d = shape.headDim, tile = keyTile
        let n = tokens.count * g
        let scratch = ThreadScratch.buffer(.attentionScores, count: n * (d + tile) + 2 * tile * d)
        let qs = scratch, scores = qs + n * d, kTile = scores + n * tile, vTile = kTile + tile * d
        // Row r's query, scaled, contiguous: the g heads of one token are adjacent in q.
        for (i, t) in tokens.enumerated() {
            let src = q + t * shape.qDim + kvHead * g * d
            for x in 0..<(g * d) { qs[i * g * d + x] = src[x] * shape.scale }
        }
        acc.update(repeating: 0, count: n * d)
        maxima.update(repeating: -.infinity, count: n)
        sums.update(repeating: 0, count: n)
        for range in ranges {
          var j0 = range.lowerBound
          while j0 < range.upperBound {
            let j1 = min(range.upperBound, j0 + tile), width = j1 - j0
            let (k, ldk) = tileRows(kv, kv.keys, j0..<j1, kvHead: kvHead, shape: shape, into: kTile)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(n), blasint(width), blasint(d),
                        1, qs, blasint(d), k, blasint(ldk), 0, scores, blasint(tile))
            for r in 0..<n {
                let p = first + tokens.lowerBound + r / g
                // What row r sees of this tile: its sink and its recent keys, as column ranges (empty or not).
                let (sink, recent) = visibility.ranges(p)
                let c1 = columns(sink, j0, j1), c2 = columns(recent, j0, j1)
                let row = scores + r * tile
                guard !c1.isEmpty || !c2.isEmpty else {
                    row.update(repeating: 0, count: width)
                    continue
                }
                let m = max(maxima[r], c1.isEmpty ? -.infinity : rowMax(row, c1), c2.isEmpty ? -.infinity : rowMax(row, c2))
                let alpha = maxima[r] == -.infinity ? 0 : VectorMath.exp(maxima[r] - m)
                let s = (c1.isEmpty ? 0 : expInPlace(row, c1, minus: m)) + (c2.isEmpty ? 0 : expInPlace(row, c2, minus: m))
                // Zero the columns the row does not see (c1 precedes c2).
                var from = 0
                func zeroUpTo(_ c: Range<Int>) {
                    guard !c.isEmpty else { return }
                    if c.lowerBound > from { (row + from).update(repeating: 0, count: c.lowerBound - from) }
                    from = c.upperBound
                }
                zeroUpTo(c1)
                zeroUpTo(c2)
                if from < width { (row + from).update(repeating: 0, count: width - from) }
                sums[r] = sums[r] * alpha + s
                if alpha != 1 { scale(acc + r * d, by: alpha, d) }
                maxima[r] = m
            }
            let (v, ldv) = tileRows(kv, kv.values, j0..<j1, kvHead: kvHead, shape: shape, into: vTile)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(n), blasint(d), blasint(width),
                        1, scores, blasint(tile), v, blasint(ldv), 1, acc, blasint(d))
            j0 = j1
          }
        }
    }

    /// The part of key positions `keys` inside the tile `j0 ..< j1`, as tile columns.
    @inline(__always)
    static func columns(_ keys: Range<Int>, _ j0: Int, _ j1: Int) -> Range<Int> {
        let lo = max(keys.lowerBound, j0), hi = min(keys.upperBound, j1)
        return lo < hi ? (lo - j0)..<(hi - j0) : 0..<0
    }

    /// Positions `range` of KV head `kvHead` (keys or values at `base`) as f32: a pointer into f32 storage (row
    /// stride kvDim) when they are adjacent there, else gathered, or widened from bf16, into `scratch` (stride
    /// headDim).
    @inline(__always)
    static func tileRows(_ kv: Rows, _ base: UnsafeRawPointer, _ range: Range<Int>, kvHead: Int, shape: Shape,
                         into scratch: UnsafeMutablePointer<Float>) -> (UnsafePointer<Float>, Int) {
        let d = shape.headDim, kvDim = shape.kvDim
        switch kv.dtype {
        case .f32:
            let src = base.assumingMemoryBound(to: Float.self) + kvHead * d
            if kv.run(from: range.lowerBound, end: range.upperBound) == range.count {
                return (src + kv.row(range.lowerBound) * kvDim, kvDim)
            }
            for (i, j) in range.enumerated() { (scratch + i * d).update(from: src + kv.row(j) * kvDim, count: d) }
            return (UnsafePointer(scratch), d)
        case .bf16:
            let src = base.assumingMemoryBound(to: UInt16.self) + kvHead * d
            for (i, j) in range.enumerated() { Widen.bf16(src + kv.row(j) * kvDim, into: scratch + i * d, count: d) }
            return (UnsafePointer(scratch), d)
        }
    }

    // MARK: Row helpers

    @inline(__always)
    static func rowMax(_ row: UnsafeMutablePointer<Float>, _ r: Range<Int>) -> Float {
        VectorMath.maximum(row + r.lowerBound, count: r.count)
    }

    /// row[i] = e^(row[i] - m) over `r`; returns their sum.
    @inline(__always)
    static func expInPlace(_ row: UnsafeMutablePointer<Float>, _ r: Range<Int>, minus m: Float) -> Float {
        var i = r.lowerBound
        var total = SIMD16<Float>(repeating: 0)
        let shift = SIMD16<Float>(repeating: m)
        while i + 16 <= r.upperBound {
            let e = VectorMath.exp(Elementwise.load(row + i) - shift)
            Elementwise.store(e, row + i)
            total += e
            i += 16
        }
        var sum = total.sum()
        while i < r.upperBound { row[i] = VectorMath.exp(row[i] - m); sum += row[i]; i += 1 }
        return sum
    }

    @inline(__always)
    static func scale(_ x: UnsafeMutablePointer<Float>, by a: Float, _ n: Int) {
        var i = 0
        while i + 16 <= n {
            Elementwise.store(Elementwise.load(x + i) * a, x + i)
            i += 16
        }
        while i < n { x[i] *= a; i += 1 }
    }
}
