import Foundation
import Kernels
import Testing

/// `--weights-dtype q8`: the block format, and products with it against the f32 products on its values.
@Suite struct Q8Tests {
    /// Each block's scale is the f16 nearest its largest magnitude over 127 (or the next one up, where that keeps
    /// the largest within 127.5 steps: the 1e-4 among large values and the 3e-3 alone have subnormal scales); every
    /// weight comes back within half a step of the original, and zeros stay zero.
    @Test(arguments: [1, 7, 31, 32, 33, 70, 100])
    func quantizedWeightsComeBackWithinHalfAStep(cols: Int) {
        let rows = 5
        var values = randomFloats(rows * cols, seed: 11).map { $0 * 3 }
        for c in 0..<cols { values[2 * cols + c] = 0 }  // an all-zero row: scale 0, quants 0
        values[cols] = 1e-4  // with cols 1, a block of its own: a subnormal scale
        values[4 * cols] = 3e-3
        for c in 1..<cols { values[4 * cols + c] = 1e-3 * Float(c % 3) }  // a row of small values: subnormal scales
        let q = FloatStorage(values).matrix(rows: rows, cols: cols).quantized(Q8.self)
        #expect(q.type == .q8 && q.byteCount == rows * Q8.blocks(cols) * 34)
        let back = q.toFloatArray()
        for r in 0..<rows {
            let row = q.base + r * q.rowBytes
            for b in 0..<Q8.blocks(cols) {
                let block = (b * 32)..<min(cols, (b + 1) * 32)
                let amax = block.map { abs(values[r * cols + $0]) }.max()!
                let d = Q8.scale(row, b)
                let nearest = Float(Float16(amax / 127))
                #expect(d == nearest || (d == Float(Float16(nearest).nextUp) && amax / nearest > 127.5), "row \(r) block \(b)")
                #expect(amax == 0 ? d == 0 : amax / d <= 127.5, "row \(r) block \(b)")
                for c in block {
                    let i = r * cols + c
                    #expect(abs(back[i] - values[i]) <= d / 2 * 1.001 + 1e-30, "row \(r) column \(c): \(values[i]) came back \(back[i])")
                }
                for j in block.count..<32 { #expect(Q8.quants(row, b).load(fromByteOffset: j, as: Int8.self) == 0) }  // the short block's padding
            }
        }
        #expect(back[(2 * cols)..<(3 * cols)].allSatisfy { $0 == 0 })
    }

    /// The q8 and fp8 products equal the f32 product on the dequantized matrix (within 1e-6 of the sum of
    /// magnitudes) on odd shapes: rows not a multiple of 4, columns not a multiple of 8, 32 or 128, odd and even
    /// token counts, for the streaming kernel (up to 32 tokens) and the dequantized tiles through sgemm; with one
    /// worker and two.
    @Test(arguments: [(13, 45), (70, 100), (3, 257), (300, 512), (9, 392)], [1, 2, 5, 7, 8, 17, 32, 33, 64])
    func productEqualsDequantizedF32(shape: (rows: Int, cols: Int), tokens: Int) {
        for type in [ElementType.q8, .fp8] { product(type, rows: shape.rows, cols: shape.cols, tokens: tokens) }
    }

    func product(_ type: ElementType, rows: Int, cols: Int, tokens: Int) {
        let source = FloatStorage(randomFloats(rows * cols, seed: 12)).matrix(rows: rows, cols: cols)
        let q = type == .q8 ? source.quantized(Q8.self) : source.quantized(FP8.self)
        #expect(q.type == type)
        let dequantized = FloatStorage(q.toFloatArray()).matrix(rows: rows, cols: cols)
        let x = randomFloats(tokens * cols, seed: 13)
        var got = [Float](repeating: .nan, count: tokens * rows), want = got
        GEMM.linear(x, tokens: tokens, weight: q, into: &got)
        GEMM.linear(x, tokens: tokens, weight: dequantized, into: &want)
        let w = q.toFloatArray()
        for t in 0..<tokens {
            for r in 0..<rows {
                var magnitude: Float = 0
                for c in 0..<cols { magnitude += abs(w[r * cols + c] * x[t * cols + c]) }
                let i = t * rows + r
                #expect(abs(got[i] - want[i]) <= 1e-6 * magnitude, "\(type) token \(t) row \(r): \(got[i]) against \(want[i])")
            }
        }
    }

    /// A view of some rows of a q8 matrix (how fused expert tensors are split) reads the same blocks as the whole.
    @Test func rowViewsReadTheirOwnBlocks() {
        let rows = 12, cols = 40
        let q = FloatStorage(randomFloats(rows * cols, seed: 14)).matrix(rows: rows, cols: cols).quantized(Q8.self)
        let all = q.toFloatArray()
        #expect(q.rows(5..<9).toFloatArray() == Array(all[(5 * cols)..<(9 * cols)]))
    }
}
