import Foundation
@testable import Kernels
import Testing

/// Causal softmax attention in Double, the plain definition.
func referenceAttention(q: [Float], tokens: Int, first: Int, keys: [Float], values: [Float],
                        shape: Attention.Shape, window: Int?) -> [Double] {
    var out = [Double](repeating: 0, count: tokens * shape.qDim)
    let group = shape.heads / shape.kvHeads
    for t in 0..<tokens {
        let p = first + t
        let lo = window.map { max(0, p - $0 + 1) } ?? 0
        for h in 0..<shape.heads {
            let g = h / group
            var scores: [Double] = []
            for j in lo...p {
                var s = 0.0
                for d in 0..<shape.headDim {
                    s += Double(q[t * shape.qDim + h * shape.headDim + d]) * Double(keys[j * shape.kvDim + g * shape.headDim + d])
                }
                scores.append(s * Double(shape.scale))
            }
            let m = scores.max()!
            let e = scores.map { Foundation.exp($0 - m) }
            let total = e.reduce(0, +)
            for (i, j) in (lo...p).enumerated() {
                for d in 0..<shape.headDim {
                    out[t * shape.qDim + h * shape.headDim + d] += e[i] / total * Double(values[j * shape.kvDim + g * shape.headDim + d])
                }
            }
        }
    }
    return out
}

@Suite struct AttentionTests {
    @Test(arguments: [(1, 0, nil), (5, 0, nil), (1, 40, nil), (7, 20, 6), (3, 100, 32)] as [(Int, Int, Int?)])
    func causalGroupedQueryAttentionMatchesDefinition(tokens: Int, first: Int, window: Int?) {
        let shape = Attention.Shape(heads: 4, kvHeads: 2, headDim: 24)
        let context = first + tokens
        let q = randomFloats(tokens * shape.qDim, seed: 20)
        let k = randomFloats(context * shape.kvDim, seed: 21), v = randomFloats(context * shape.kvDim, seed: 22)
        var out = [Float](repeating: .nan, count: tokens * shape.qDim)
        Attention.causal(q: q, tokens: tokens, first: first, keys: k, values: v, shape: shape, window: window, into: &out)
        let want = referenceAttention(q: q, tokens: tokens, first: first, keys: k, values: v, shape: shape, window: window)
        for i in out.indices { #expect(abs(Double(out[i]) - want[i]) < 1e-5, "element \(i)") }
    }

    /// The tiled prefill and the split decode on shapes that cross their tiles: several query and key tiles
    /// (prefill tiles of 128 score rows, key tiles of 256), query tiles cut short, group sizes 1, 2 and 4, windows
    /// whose edge falls inside a tile, and decode contexts long enough to split across threads.
    @Test(arguments: [(300, 0, nil, 2), (130, 390, nil, 4), (257, 0, 100, 1), (200, 333, 290, 2), (1, 3000, nil, 4),
                      (1, 2049, 700, 2), (1, 1023, nil, 1), (2, 600, nil, 2)] as [(Int, Int, Int?, Int)])
    func tiledAndSplitAttentionMatchDefinition(tokens: Int, first: Int, window: Int?, group: Int) {
        let shape = Attention.Shape(heads: 2 * group, kvHeads: 2, headDim: 40)
        let context = first + tokens
        let q = randomFloats(tokens * shape.qDim, seed: 30)
        let k = randomFloats(context * shape.kvDim, seed: 31), v = randomFloats(context * shape.kvDim, seed: 32)
        var out = [Float](repeating: .nan, count: tokens * shape.qDim)
        Attention.causal(q: q, tokens: tokens, first: first, keys: k, values: v, shape: shape, window: window, into: &out)
        let want = referenceAttention(q: q, tokens: tokens, first: first, keys: k, values: v, shape: shape, window: window)
        let worst = zip(out, want).map { abs(Double($0) - $1) }.max()!
        #expect(worst < 1e-5, "largest difference \(worst)")
    }

    /// bf16 rows: the definition on the rounded keys and values (to 1e-5), prefill and split decode.
    @Test(arguments: [(37, 0), (1, 2500)])
    func bf16RowsMatchTheDefinitionOnRoundedValues(tokens: Int, first: Int) {
        let shape = Attention.Shape(heads: 4, kvHeads: 2, headDim: 32)
        let context = first + tokens
        let q = randomFloats(tokens * shape.qDim, seed: 33)
        let k = randomFloats(context * shape.kvDim, seed: 34), v = randomFloats(context * shape.kvDim, seed: 35)
        let kb = k.map(Widen.toBF16), vb = v.map(Widen.toBF16)
        var out = [Float](repeating: .nan, count: tokens * shape.qDim)
        kb.withUnsafeBytes { kr in
            vb.withUnsafeBytes { vr in
                Attention.causal(q: q, tokens: tokens, first: first, rows: .init(keys: kr.baseAddress!, values: vr.baseAddress!, dtype: .bf16),
                                 shape: shape, into: &out)
            }
        }
        let want = referenceAttention(q: q, tokens: tokens, first: first, keys: kb.map(Widen.bf16), values: vb.map(Widen.bf16),
                                      shape: shape, window: nil)
        let worst = zip(out, want).map { abs(Double($0) - $1) }.max()!
        #expect(worst < 1e-5, "largest difference \(worst)")
        #expect(kb.map(Widen.bf16) != k, "the rounding is not the identity on these values")
    }

    @Test func windowCoveringTheContextEqualsFullAttention() {
        let shape = Attention.Shape(heads: 2, kvHeads: 1, headDim: 16)
        let q = randomFloats(6 * shape.qDim, seed: 23)
        let k = randomFloats(6 * shape.kvDim, seed: 24), v = randomFloats(6 * shape.kvDim, seed: 25)
        var full = [Float](repeating: 0, count: 6 * shape.qDim), windowed = full
        Attention.causal(q: q, tokens: 6, first: 0, keys: k, values: v, shape: shape, window: nil, into: &full)
        Attention.causal(q: q, tokens: 6, first: 0, keys: k, values: v, shape: shape, window: 6, into: &windowed)
        #expect(full == windowed)
    }

    @Test func ropeRotatesHalfPairs() {
        let rope = RoPE(theta: 10_000, headDim: 8)
        let positions = [0, 1, 7, 300]
        let (cos, sin) = rope.table(positions: positions)
        var x = randomFloats(positions.count * 2 * 8, seed: 26)
        let original = x
        rope.apply(&x, tokens: positions.count, heads: 2, cos: cos, sin: sin)
        for (t, p) in positions.enumerated() {
            for h in 0..<2 {
                for j in 0..<4 {
                    let inv = 1 / pow(10_000.0, Double(2 * j) / 8)
                    let angle = Double(p) * inv
                    let base = (t * 2 + h) * 8
                    let a = Double(original[base + j]), b = Double(original[base + j + 4])
                    #expect(abs(Double(x[base + j]) - (a * Foundation.cos(angle) - b * Foundation.sin(angle))) < 1e-5)
                    #expect(abs(Double(x[base + j + 4]) - (b * Foundation.cos(angle) + a * Foundation.sin(angle))) < 1e-5)
                }
            }
        }
        // Position 0 is the identity.
        #expect(Array(x[0..<16]) == Array(original[0..<16]))
    }
}

/// Softmax attention in Double over the keys `sees(p, j)` allows (j <= p assumed by the caller's predicate).
func referenceMasked(q: [Float], tokens: Int, first: Int, keys: [Float], values: [Float], shape: Attention.Shape,
                     sees: (Int, Int) -> Bool) -> [Double] {
    var out = [Double](repeating: 0, count: tokens * shape.qDim)
    for t in 0..<tokens {
        let p = first + t, visible = (0...p).filter { sees(p, $0) }
        for h in 0..<shape.heads {
            let g = h / shape.group
            let scores = visible.map { j in
                (0..<shape.headDim).reduce(0.0) { $0 + Double(q[t * shape.qDim + h * shape.headDim + $1]) * Double(keys[j * shape.kvDim + g * shape.headDim + $1]) }
                    * Double(shape.scale)
            }
            let m = scores.max()!, e = scores.map { Foundation.exp($0 - m) }, total = e.reduce(0, +)
            for (i, j) in visible.enumerated() {
                for d in 0..<shape.headDim {
                    out[t * shape.qDim + h * shape.headDim + d] += e[i] / total * Double(values[j * shape.kvDim + g * shape.headDim + d])
                }
            }
        }
    }
    return out
}

@Suite struct SparseWindowTests {
    /// Sink + window against dense attention with the explicit mask: j <= p and (floor(j/B) < S/B or
    /// floor(p/B) - floor(j/B) < W/B), prefill and decode, odd lengths, queries on block edges, S = 0, B = 1.
    @Test(arguments: [(53, 0, 8, 16, 4), (40, 31, 8, 16, 4), (1, 97, 8, 16, 4), (1, 96, 8, 16, 4), (29, 300, 0, 24, 8),
                      (1, 600, 0, 7, 1), (300, 0, 32, 64, 32), (1, 2500, 128, 1024, 128), (17, 1000, 128, 256, 128), (30, 0, 2, 4, 2)])
    func sinkAndWindowEqualTheMaskedDefinition(tokens: Int, first: Int, sink: Int, window: Int, block: Int) {
        let shape = Attention.Shape(heads: 4, kvHeads: 2, headDim: 16)
        let context = first + tokens
        let q = randomFloats(tokens * shape.qDim, seed: 40), k = randomFloats(context * shape.kvDim, seed: 41)
        let v = randomFloats(context * shape.kvDim, seed: 42)
        var out = [Float](repeating: .nan, count: tokens * shape.qDim)
        k.withUnsafeBytes { kr in
            v.withUnsafeBytes { vr in
                Attention.causal(q: q, tokens: tokens, first: first, rows: .init(keys: kr.baseAddress!, values: vr.baseAddress!, dtype: .f32),
                                 shape: shape, visibility: .sinkWindow(sink: sink, window: window, block: block), into: &out)
            }
        }
        let want = referenceMasked(q: q, tokens: tokens, first: first, keys: k, values: v, shape: shape) { p, j in
            j <= p && (j / block < sink / block || p / block - j / block < window / block)
        }
        let worst = zip(out, want).map { abs(Double($0) - $1) }.max()!
        #expect(worst < 1e-5, "largest difference \(worst)")
    }

    /// A window covering the whole context is full attention.
    @Test func aWindowCoveringTheContextIsFullAttention() {
        let shape = Attention.Shape(heads: 2, kvHeads: 1, headDim: 16)
        let q = randomFloats(70 * shape.qDim, seed: 43), k = randomFloats(70 * shape.kvDim, seed: 44), v = randomFloats(70 * shape.kvDim, seed: 45)
        var full = [Float](repeating: 0, count: 70 * shape.qDim), sparse = full
        Attention.causal(q: q, tokens: 70, first: 0, keys: k, values: v, shape: shape, into: &full)
        k.withUnsafeBytes { kr in
            v.withUnsafeBytes { vr in
                Attention.causal(q: q, tokens: 70, first: 0, rows: .init(keys: kr.baseAddress!, values: vr.baseAddress!, dtype: .f32),
                                 shape: shape, visibility: .sinkWindow(sink: 16, window: 80, block: 16), into: &sparse)
            }
        }
        #expect(full == sparse)
    }

    @Test func visibleRangesFollowTheDefinition() {
        let mask = Visibility.sinkWindow(sink: 4, window: 8, block: 4)
        // p = 21: block 5; recent blocks 4 and 5 (keys 16...21), the sink block 0 (keys 0..<4).
        #expect(mask.ranges(21) == (sink: 0..<4, recent: 16..<22))
        // p = 9: recent blocks 1 and 2 (keys 4...9) touch the sink: one range.
        #expect(mask.ranges(9) == (sink: 0..<0, recent: 0..<10))
        #expect(Visibility.slidingWindow(3).ranges(10) == (sink: 0..<0, recent: 8..<11))
    }

    /// YaRN with head_dim 8, base 10^4, 64 original positions, factor 4: the correction range is dimensions 0 to 2
    /// (beta_fast 32 turns at d = -0.5, floored and clamped to 0; beta_slow 1 at d = 1.008, ceiled to 2), so pair
    /// 0 keeps its frequency, pair 1 takes the mean of kept and interpolated, pairs 2 and 3 are divided by 4; cos
    /// and sin scale by 0.1 ln 4 + 1. Linear divides every pair by its factor.
    @Test func ropeScalingFrequenciesAsWorkedOut() {
        let plain = RoPE(theta: 10_000, headDim: 8).inverseFrequencies
        let yarn = RoPE(theta: 10_000, headDim: 8, scaling: .yarn(factor: 4, originalContext: 64, betaFast: 32, betaSlow: 1,
                                                                 attentionFactor: RoPEScaling.yarnAttentionFactor(factor: 4, mscale: nil, mscaleAllDim: nil),
                                                                 truncate: true))
        let want: [Float] = [plain[0], (plain[1] + plain[1] / 4) / 2, plain[2] / 4, plain[3] / 4]
        for j in 0..<4 { #expect(abs(yarn.inverseFrequencies[j] - want[j]) <= 1e-6 * want[j]) }
        #expect(abs(yarn.attentionScaling - Float(0.1 * Foundation.log(4.0) + 1)) < 1e-6)
        let (cos, _) = yarn.table(positions: [0])
        #expect(cos.allSatisfy { abs($0 - yarn.attentionScaling) < 1e-6 })
        let linear = RoPE(theta: 10_000, headDim: 8, scaling: .linear(factor: 2)).inverseFrequencies
        #expect(zip(linear, plain).allSatisfy { $0 == $1 / 2 })
        #expect(RoPEScaling.yarnAttentionFactor(factor: 1, mscale: nil, mscaleAllDim: nil) == 1)
    }
}

/// Quest's page selection and the top-k decode over paged rows (a shuffled page table), against definitions.
@Suite struct TopKAttentionTests {
    /// Rows of `context` positions in pages of 4, stored out of order, with each page's key bounds.
    struct Paged {
        let shape = Attention.Shape(heads: 4, kvHeads: 2, headDim: 8)
        let pageSize = 4, context: Int
        let keys: [Float], values: [Float]  // logical positions
        let table: [Int32]
        var physicalKeys: [Float], physicalValues: [Float], minima: [Float], maxima: [Float]

        init(context: Int, seed: UInt64) {
            self.context = context
            let kvDim = shape.kvDim, pages = (context + pageSize - 1) / pageSize
            keys = randomFloats(context * kvDim, seed: seed)
            values = randomFloats(context * kvDim, seed: seed + 1)
            // Pages stored out of order: odd logical pages from the top of the pool down, even ones after.
            let order = Array(stride(from: pages - 1, through: 0, by: -2)) + Array(stride(from: pages - 2, through: 0, by: -2))
            table = order.map(Int32.init)
            physicalKeys = [Float](repeating: .nan, count: pages * pageSize * kvDim)
            physicalValues = physicalKeys
            minima = [Float](repeating: .infinity, count: pages * kvDim)
            maxima = [Float](repeating: -.infinity, count: pages * kvDim)
            for j in 0..<context {
                let page = Int(table[j / pageSize]), row = page * pageSize + j % pageSize
                for i in 0..<kvDim {
                    physicalKeys[row * kvDim + i] = keys[j * kvDim + i]
                    physicalValues[row * kvDim + i] = values[j * kvDim + i]
                    minima[page * kvDim + i] = min(minima[page * kvDim + i], keys[j * kvDim + i])
                    maxima[page * kvDim + i] = max(maxima[page * kvDim + i], keys[j * kvDim + i])
                }
            }
        }

        /// The pages KV head `kvHead` should read, by the definition (bounds in Double).
        func expectedPages(q: [Float], kvHead: Int, budget: Int, sinkPages: Int) -> [Int] {
            let pages = (context - 1) / pageSize + 1, d = shape.headDim, g = shape.group
            guard budget < pages else { return Array(0..<pages) }
            var chosen = Set(0..<min(sinkPages, pages)).union([pages - 1])
            let scored = (0..<pages).filter { !chosen.contains($0) }.map { k -> (Double, Int) in
                let base = Int(table[k]) * shape.kvDim + kvHead * d
                var s = 0.0
                for hh in 0..<g {
                    for i in 0..<d {
                        let qi: Double = Double(q[(kvHead * g + hh) * d + i])
                        let low: Double = qi * Double(minima[base + i]), high: Double = qi * Double(maxima[base + i])
                        s += Swift.max(low, high)
                    }
                }
                return (s, k)
            }.sorted { (a: (Double, Int), b: (Double, Int)) -> Bool in a.0 != b.0 ? a.0 > b.0 : a.1 > b.1 }
            for (_, k) in scored.prefix(budget - chosen.count) { chosen.insert(k) }
            return chosen.sorted()
        }

        func run(q: [Float], budget: Int, sinkPages: Int) -> (out: [Float], read: Int) {
            var out = [Float](repeating: .nan, count: shape.qDim)
            var read = 0
            physicalKeys.withUnsafeBytes { kr in
                physicalValues.withUnsafeBytes { vr in
                    table.withUnsafeBufferPointer { t in
                        minima.withUnsafeBufferPointer { lo in
                            maxima.withUnsafeBufferPointer { hi in
                                read = Attention.topKDecode(
                                    q: q, position: context - 1,
                                    rows: .init(keys: kr.baseAddress!, values: vr.baseAddress!, dtype: .f32, pages: t.baseAddress!, pageSize: pageSize),
                                    bounds: .init(minima: lo.baseAddress!, maxima: hi.baseAddress!), shape: shape,
                                    budgetPages: budget, sinkPages: sinkPages, into: &out)
                            }
                        }
                    }
                }
            }
            return (out, read)
        }
    }

    /// A page's bound Σ_i max(q_i·lo_i, q_i·hi_i) against Double, on head sizes around its 8-float stride, with
    /// queries of both signs (so either end of the box wins).
    @Test(arguments: [1, 7, 8, 13, 64, 70])
    func pageBoundIsTheBestCornerOfTheBox(d: Int) {
        let q = randomFloats(d, seed: UInt64(d)), a = randomFloats(d, seed: UInt64(d) + 1), b = randomFloats(d, seed: UInt64(d) + 2)
        let lo = zip(a, b).map { Swift.min($0, $1) }, hi = zip(a, b).map { Swift.max($0, $1) }
        let want = (0..<d).reduce(0.0) { $0 + Swift.max(Double(q[$1]) * Double(lo[$1]), Double(q[$1]) * Double(hi[$1])) }
        let got = Attention.pageBound(q, lo, hi, d)
        #expect(abs(Double(got) - want) <= 1e-5 * Swift.max(1, abs(want)), "d = \(d): \(got) against \(want)")
    }

    /// A budget covering every page is full attention; a smaller one reads per KV head exactly the pages the
    /// definition picks (the sink's, the last, the best bounds), and attends over just their positions.
    @Test(arguments: [(37, 100, 1), (37, 4, 1), (64, 5, 2), (9, 2, 1), (61, 3, 0)])
    func topKReadsThePagesTheDefinitionPicks(context: Int, budget: Int, sinkPages: Int) {
        let paged = Paged(context: context, seed: UInt64(context * 7 + budget))
        let shape = paged.shape, p = paged.pageSize
        let q = randomFloats(shape.qDim, seed: UInt64(budget))
        let (out, read) = paged.run(q: q, budget: budget, sinkPages: sinkPages)
        let pages = (0..<shape.kvHeads).map { paged.expectedPages(q: q, kvHead: $0, budget: budget, sinkPages: sinkPages) }
        #expect(read == pages.map(\.count).reduce(0, +))
        let all = (context - 1) / p + 1
        for kvPages in pages {
            #expect(kvPages.count == min(budget, all))
            #expect(kvPages.contains(all - 1) && (0..<min(sinkPages, all)).allSatisfy(kvPages.contains))
        }
        // Each query head against the positions of its KV head's pages.
        let want = referenceMasked(q: q, tokens: 1, first: context - 1, keys: paged.keys, values: paged.values, shape: shape) { _, _ in true }
        var masked = [Double](repeating: 0, count: shape.qDim)
        for h in 0..<shape.heads {
            let kvHead = h / shape.group
            let one = referenceMasked(q: q, tokens: 1, first: context - 1, keys: paged.keys, values: paged.values, shape: shape) { _, j in
                pages[kvHead].contains(j / p)
            }
            for x in 0..<shape.headDim { masked[h * shape.headDim + x] = one[h * shape.headDim + x] }
        }
        let worst = zip(out, masked).map { abs(Double($0) - $1) }.max()!
        #expect(worst < 1e-5, "largest difference \(worst)")
        if budget >= all { #expect(zip(out, want).map { abs(Double($0) - $1) }.max()! < 1e-5) }
    }
}
