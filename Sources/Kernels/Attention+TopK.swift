/// Quest's query-aware page selection for decode (`--sparse-kind topk`): each KV page keeps the per-dimension
/// minimum and maximum of its keys; a query head bounds a page's scores by Σ_i max(q_i·min_i, q_i·max_i); the
/// query heads of one KV head share one selection (their bounds summed), and the best pages within the budget are
/// read, always with the sink pages and the page of the query's own position.
extension Attention {
    /// Per-page key bounds of one layer: `[pages, kvDim]` minima and maxima, indexed by physical page.
    public struct KeyBounds {
        public let minima: UnsafePointer<Float>
        public let maxima: UnsafePointer<Float>
        public init(minima: UnsafePointer<Float>, maxima: UnsafePointer<Float>) {
            self.minima = minima
            self.maxima = maxima
        }
    }

    /// The logical pages KV head `kvHead` reads for a query at `position`, ascending: all of them when the budget
    /// covers them, else the sink pages, the query's page and the best-bounded others up to `budgetPages`.
    public static func selectPages(q: UnsafePointer<Float>, position: Int, rows kv: Rows, bounds: KeyBounds, shape: Shape,
                                   kvHead: Int, budgetPages: Int, sinkPages: Int) -> [Int] {
        let pages = position / kv.pageSize + 1
        guard budgetPages < pages else { return Array(0..<pages) }
        let g = shape.group, d = shape.headDim, kvDim = shape.kvDim
        var chosen = [Bool](repeating: false, count: pages)
        for k in 0..<min(sinkPages, pages) { chosen[k] = true }
        chosen[pages - 1] = true
        var taken = chosen.lazy.filter { $0 }.count
        var scored: [(score: Float, page: Int)] = []
        scored.reserveCapacity(pages)
        for k in 0..<pages where !chosen[k] {
            let base = (kv.pages.map { Int($0[k]) } ?? k) * kvDim + kvHead * d
            let lo = bounds.minima + base, hi = bounds.maxima + base
            var score: Float = 0
            for hh in 0..<g { score += pageBound(q + (kvHead * g + hh) * d, lo, hi, d) }
            scored.append((score, k))
        }
        // Highest bound first; equal bounds to the later page (the more recent context).
        scored.sort { $0.score != $1.score ? $0.score > $1.score : $0.page > $1.page }
        for s in scored where taken < budgetPages {
            chosen[s.page] = true
            taken += 1
        }
        return (0..<pages).filter { chosen[$0] }
    }

    /// Σ_i max(q_i·lo_i, q_i·hi_i) over `d` dimensions: the most q·k can be for a key within [lo, hi].
    /// Lanes pick by compare-and-blend (the standard library's `pointwiseMax` goes one lane at a time).
    @inline(__always)
    static func pageBound(_ q: UnsafePointer<Float>, _ lo: UnsafePointer<Float>, _ hi: UnsafePointer<Float>, _ d: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= d {
            let qi = UnsafeRawPointer(q + i).loadUnaligned(as: SIMD8<Float>.self)
            var a = qi * UnsafeRawPointer(lo + i).loadUnaligned(as: SIMD8<Float>.self)
            let b = qi * UnsafeRawPointer(hi + i).loadUnaligned(as: SIMD8<Float>.self)
            a.replace(with: b, where: b .> a)
            acc += a
            i += 8
        }
        var score = acc.sum()
        while i < d {
            let a = q[i] * lo[i], b = q[i] * hi[i]
            score += a > b ? a : b
            i += 1
        }
        return score
    }

    /// One decode query at `position` against the pages `selectPages` picks for each KV head (position's own page
    /// up to `position`). Returns the pages read, summed over KV heads.
    @discardableResult
    public static func topKDecode(q: UnsafePointer<Float>, position: Int, rows kv: Rows, bounds: KeyBounds, shape: Shape,
                                  budgetPages: Int, sinkPages: Int, into out: UnsafeMutablePointer<Float>) -> Int {
        let g = shape.group, d = shape.headDim, kvDim = shape.kvDim, p = kv.pageSize
        let parts = min(Parallel.workers, shape.kvHeads)
        nonisolated(unsafe) let (qp, op) = (q, out)
        let read = UnsafeMutablePointer<Int>.allocate(capacity: shape.kvHeads)  // each thread writes its heads' counts
        defer { read.deallocate() }
        Parallel.run(parts) { part in
            var kvHead = part
            while kvHead < shape.kvHeads {
                let pages = selectPages(q: qp, position: position, rows: kv, bounds: bounds, shape: shape, kvHead: kvHead,
                                        budgetPages: budgetPages, sinkPages: sinkPages)
                read[kvHead] = pages.count
                var positions: [Int] = []
                for k in pages { positions.append(contentsOf: (k * p)..<min((k + 1) * p, position + 1)) }
                let n = positions.count
                let scratch = ThreadScratch.buffer(.attentionScores, count: g * n + kvDim + g * d)
                let scores = scratch, row = scores + g * n, acc = row + kvDim
                for (i, j) in positions.enumerated() {
                    let k = rowAt(kv.keys, kv.dtype, kv.row(j), kvDim: kvDim, into: row) + kvHead * d
                    for hh in 0..<g { scores[hh * n + i] = Elementwise.dot(qp + (kvHead * g + hh) * d, k, d) * shape.scale }
                }
                var sums = [Float](repeating: 0, count: g)
                for hh in 0..<g {
                    let m = rowMax(scores + hh * n, 0..<n)
                    sums[hh] = expInPlace(scores + hh * n, 0..<n, minus: m)
                }
                acc.update(repeating: 0, count: g * d)
                for (i, j) in positions.enumerated() {
                    let v = rowAt(kv.values, kv.dtype, kv.row(j), kvDim: kvDim, into: row) + kvHead * d
                    for hh in 0..<g { Elementwise.axpy(scores[hh * n + i], v, acc + hh * d, d) }
                }
                for hh in 0..<g {
                    let dst = op + (kvHead * g + hh) * d, inv = 1 / sums[hh]
                    for x in 0..<d { dst[x] = acc[hh * d + x] * inv }
                }
                kvHead += parts
            }
        }
        return (0..<shape.kvHeads).reduce(0) { $0 + read[$1] }
    }
}
