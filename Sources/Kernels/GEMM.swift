import COpenBLAS

/// Dense products through OpenBLAS, split by output features over the worker threads.
public enum GEMM {
    /// Below this many multiply-adds a product runs on the calling thread alone.
    @usableFromInline static let parallelThreshold = 1 << 18

    /// Up to this many tokens, products run in `SmallBatchGEMM`, which streams the weights once (measured
    /// faster than sgemm up to 24-32 tokens on the development machine, `moe kernel-bench`).
    @usableFromInline static let smallBatch = 32

    /// From this many tokens on, 16-bit weights are widened a whole chunk at a time.
    @usableFromInline static let wideTileTokens = 128

    /// Floats in one widened weight tile: 256 KiB, so a tile and its GEMM stay in a core's L2.
    @usableFromInline static let tileFloats = 1 << 16

    /// `y = x · Wᵀ` (or `y += x · Wᵀ` with `accumulate`): x `[tokens, W.cols]` with row stride `ldx` (default
    /// `W.cols`), y `[tokens, W.rows]` with row stride `ldy` (default `W.rows`).
    ///
    /// f32 weights go straight to `sgemm`/`sgemv`; bf16, f16, q8 and fp8 weights are widened to f32 a tile of rows at a
    /// time on the thread that multiplies them, so they stay small in memory and results equal the f32 path on
    /// the widened values. Up to `smallBatch` tokens, f32, bf16, q8 and fp8 weights stream through `SmallBatchGEMM`.
    ///
    /// `threads`: how many worker threads may split it (1: the calling thread alone, for callers that already run
    /// products side by side); default: all, for products large enough to pay for the split. The split only
    /// divides the output rows, so results do not depend on it.
    public static func linear(
        _ x: UnsafePointer<Float>, tokens: Int, ldx: Int? = nil, weight w: WeightMatrix,
        into y: UnsafeMutablePointer<Float>, ldy: Int? = nil, accumulate: Bool = false, threads: Int? = nil
    ) {
        guard tokens > 0, w.rows > 0 else { return }
        let ldy = ldy ?? w.rows, ldx = ldx ?? w.cols
        let work = tokens * w.rows * w.cols
        let parts = threads ?? (work < parallelThreshold ? 1 : Parallel.workers)
        let chunks = Parallel.ranges(w.rows, parts: parts)
        nonisolated(unsafe) let (xp, yp) = (x, y)
        Parallel.run(chunks.count) { c in
            let rows = chunks[c]
            if tokens <= smallBatch && w.type == .f32 {
                SmallBatchGEMM.f32(x: xp, tokens: tokens, ldx: ldx, weights: w.base.assumingMemoryBound(to: Float.self),
                                   cols: w.cols, rows: rows, into: yp, ldy: ldy, accumulate: accumulate)
                return
            }
            if tokens <= smallBatch && w.type == .bf16 {
                let xr = ThreadScratch.buffer(.activations, count: tokens * w.cols)
                SmallBatchGEMM.interleave(xp, tokens: tokens, ldx: ldx, cols: w.cols, into: xr)
                SmallBatchGEMM.bf16(xp: xr, tokens: tokens, weights: w.base.assumingMemoryBound(to: UInt16.self),
                                    cols: w.cols, rows: rows, into: yp, ldy: ldy, accumulate: accumulate)
                return
            }
            if tokens <= smallBatch && w.type == .q8 {
                SmallBatchGEMM.blocked(Q8.self, x: xp, tokens: tokens, ldx: ldx, weights: w.base, cols: w.cols, rows: rows,
                                       into: yp, ldy: ldy, accumulate: accumulate)
                return
            }
            if tokens <= smallBatch && w.type == .fp8 {
                SmallBatchGEMM.blocked(FP8.self, x: xp, tokens: tokens, ldx: ldx, weights: w.base, cols: w.cols, rows: rows,
                                       into: yp, ldy: ldy, accumulate: accumulate)
                return
            }
            if w.type == .f32 {
                multiply(xp, tokens: tokens, ldx: ldx, cols: w.cols,
                         weights: w.base.assumingMemoryBound(to: Float.self) + rows.lowerBound * w.cols,
                         rows: rows.count, into: yp + rows.lowerBound, ldy: ldy, accumulate: accumulate)
                return
            }
            // 16-bit and block weights: widened (dequantized) to f32 a tile of rows at a time and multiplied by BLAS;
            // results equal the f32 path on the widened values, since widening is exact. Many tokens amortise
            // widening, so the whole chunk goes at once (sgemm is faster on wide shapes); fewer tokens take
            // L2-sized tiles so the widened rows stay cached.
            let tileRows = tokens >= wideTileTokens ? rows.count : max(8, min(rows.count, tileFloats / max(w.cols, 1)))
            let tile = ThreadScratch.buffer(.weightTile, count: tileRows * w.cols)
            var r = rows.lowerBound
            while r < rows.upperBound {
                let n = min(tileRows, rows.upperBound - r)
                w.widen(rows: r..<(r + n), into: tile)
                multiply(xp, tokens: tokens, ldx: ldx, cols: w.cols, weights: tile, rows: n,
                         into: yp + r, ldy: ldy, accumulate: accumulate)
                r += n
            }
        }
    }

    /// One single-threaded BLAS call: `y[:, 0..<rows] (+)= x · W[0..<rows]ᵀ`.
    @inlinable
    static func multiply(
        _ x: UnsafePointer<Float>, tokens: Int, ldx: Int, cols: Int, weights: UnsafePointer<Float>, rows: Int,
        into y: UnsafeMutablePointer<Float>, ldy: Int, accumulate: Bool
    ) {
        let beta: Float = accumulate ? 1 : 0
        if tokens == 1 {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, blasint(rows), blasint(cols), 1, weights, blasint(cols),
                        x, 1, beta, y, 1)
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(tokens), blasint(rows), blasint(cols),
                        1, x, blasint(ldx), weights, blasint(cols), beta, y, blasint(ldy))
        }
    }
}
