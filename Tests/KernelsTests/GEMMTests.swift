import Foundation
import Kernels
import Testing

/// Deterministic pseudo-random floats in [-1, 1).
func randomFloats(_ n: Int, seed: UInt64) -> [Float] {
    var s = seed &+ 0x9E37_79B9_7F4A_7C15
    return (0..<n).map { _ in
        s = s &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int64(bitPattern: s) >> 40) / Float(1 << 23)
    }
}

/// y = x · Wᵀ in Double, the plain loop the kernels must agree with.
func referenceLinear(_ x: [Float], tokens: Int, _ w: [Float], rows: Int, cols: Int) -> [Double] {
    var y = [Double](repeating: 0, count: tokens * rows)
    for t in 0..<tokens {
        for r in 0..<rows {
            var s = 0.0
            for c in 0..<cols { s += Double(x[t * cols + c]) * Double(w[r * cols + c]) }
            y[t * rows + r] = s
        }
    }
    return y
}

/// A weight matrix in `type` holding `values` (rounded to that type), and the values it really holds.
func weightMatrix(_ values: [Float], rows: Int, cols: Int, type: ElementType) -> (WeightMatrix, [Float]) {
    switch type {
    case .f32:
        let s = FloatStorage(values)
        return (s.matrix(rows: rows, cols: cols), values)
    case .bf16, .f16:
        let bits = values.map { type == .bf16 ? Widen.toBF16($0) : Float16($0).bitPattern }
        let box = Box(bits)
        let held = bits.map { type == .bf16 ? Widen.bf16($0) : Widen.f16($0) }
        return (WeightMatrix(rows: rows, cols: cols, type: type, base: UnsafeRawPointer(box.pointer), owner: box), held)
    case .q8, .fp8:
        let m = FloatStorage(values).matrix(rows: rows, cols: cols)
        let q = type == .q8 ? m.quantized(Q8.self) : m.quantized(FP8.self)
        return (q, q.toFloatArray())
    }
}

final class Box: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<UInt16>
    init(_ v: [UInt16]) {
        pointer = .allocate(capacity: v.count)
        pointer.initialize(from: v, count: v.count)
    }
    deinit { pointer.deallocate() }
}

@Suite struct GEMMTests {
    // Token counts cover one-token, the streaming small-batch kernel (odd and even), and BLAS (narrow and wide tiles).
    @Test(arguments: [ElementType.f32, .bf16, .f16, .q8, .fp8], [1, 2, 3, 8, 33, 130])
    func linearMatchesPlainLoops(type: ElementType, tokens: Int) {
        let rows = 70, cols = 45  // neither a multiple of 4 rows nor of 16 columns: every tail path runs
        let (w, held) = weightMatrix(randomFloats(rows * cols, seed: 1), rows: rows, cols: cols, type: type)
        let x = randomFloats(tokens * cols, seed: 2)
        var y = [Float](repeating: .nan, count: tokens * rows)
        GEMM.linear(x, tokens: tokens, weight: w, into: &y)
        let expected = referenceLinear(x, tokens: tokens, held, rows: rows, cols: cols)
        for i in y.indices { #expect(abs(Double(y[i]) - expected[i]) < 1e-4, "element \(i)") }
    }

    /// The streaming kernels sum every token in one order whatever the batch (q8 four at a time, then two, then
    /// one): each token's outputs beside others equal, bit for bit, its outputs alone, so a sequence's tokens do
    /// not depend on what else runs in its step. Columns past the last full vector and rows not a multiple of 4.
    @Test(arguments: [ElementType.f32, .bf16, .q8, .fp8], [3, 4, 6, 7, 9, 32])
    func aTokenGetsTheSameOutputsInAnyBatch(type: ElementType, tokens: Int) {
        let rows = 37, cols = 300
        let (w, _) = weightMatrix(randomFloats(rows * cols, seed: 21), rows: rows, cols: cols, type: type)
        let x = randomFloats(tokens * cols, seed: 22)
        var together = [Float](repeating: .nan, count: tokens * rows)
        GEMM.linear(x, tokens: tokens, weight: w, into: &together)
        for t in 0..<tokens {
            var alone = [Float](repeating: .nan, count: rows)
            let xt = Array(x[(t * cols)..<((t + 1) * cols)])
            GEMM.linear(xt, tokens: 1, weight: w, into: &alone)
            #expect(Array(together[(t * rows)..<((t + 1) * rows)]) == alone, "\(type) token \(t) of \(tokens)")
        }
    }

    @Test(arguments: [ElementType.f32, .bf16, .q8, .fp8], [1, 5, 64])
    func stridesAndAccumulate(type: ElementType, tokens: Int) {
        let rows = 33, cols = 40, ldx = 48, ldy = 50
        let (w, held) = weightMatrix(randomFloats(rows * cols, seed: 3), rows: rows, cols: cols, type: type)
        var x = [Float](repeating: .nan, count: tokens * ldx)  // padding must never be read
        let dense = randomFloats(tokens * cols, seed: 4)
        for t in 0..<tokens { for c in 0..<cols { x[t * ldx + c] = dense[t * cols + c] } }
        let start = randomFloats(tokens * ldy, seed: 5)
        var y = start
        GEMM.linear(x, tokens: tokens, ldx: ldx, weight: w, into: &y, ldy: ldy, accumulate: true)
        let product = referenceLinear(dense, tokens: tokens, held, rows: rows, cols: cols)
        for t in 0..<tokens {
            for r in 0..<ldy {
                let want = r < rows ? Double(start[t * ldy + r]) + product[t * rows + r] : Double(start[t * ldy + r])
                #expect(abs(Double(y[t * ldy + r]) - want) < 1e-4, "token \(t) column \(r)")
            }
        }
    }

    @Test func largeProductsSplitAcrossWorkersAgree() {
        // Big enough to be split over the worker threads; each worker's rows must land in the right place.
        let rows = 300, cols = 512, tokens = 40
        let (w, held) = weightMatrix(randomFloats(rows * cols, seed: 6), rows: rows, cols: cols, type: .bf16)
        let x = randomFloats(tokens * cols, seed: 7)
        var y = [Float](repeating: 0, count: tokens * rows)
        GEMM.linear(x, tokens: tokens, weight: w, into: &y)
        let expected = referenceLinear(x, tokens: tokens, held, rows: rows, cols: cols)
        let worst = zip(y, expected).map { abs(Double($0) - $1) }.max()!
        #expect(worst < 1e-3)
    }

    @Test func bf16RoundingTiesToEvenAndWidensExactly() {
        #expect(Widen.toBF16(1.0) == 0x3F80)
        // 1 + 2^-8 lies exactly between two bf16 values: ties go to the even mantissa (1.0).
        #expect(Widen.toBF16(1 + 0x1p-8) == 0x3F80)
        // 1 + 3·2^-8 lies between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up to even.
        #expect(Widen.toBF16(1 + 3 * 0x1p-8) == 0x3F82)
        for bits: UInt16 in [0x0000, 0x3F80, 0xC2F7, 0x7F7F, 0x0001] {
            #expect(Widen.toBF16(Widen.bf16(bits)) == bits)
        }
        let values = randomFloats(37, seed: 8).map { Widen.toBF16($0) }
        var out = [Float](repeating: 0, count: 37)
        values.withUnsafeBufferPointer { Widen.bf16($0.baseAddress!, into: &out, count: 37) }
        #expect(out == values.map { Widen.bf16($0) })
    }

    @Test func interleaveSeparatesEvenAndOddWithinBlocks() {
        let x = (0..<40).map(Float.init)
        var out = [Float](repeating: -1, count: 40)
        SmallBatchGEMM.interleave(x, tokens: 1, ldx: 40, cols: 40, into: &out)
        #expect(Array(out[0..<8]) == [0, 2, 4, 6, 8, 10, 12, 14])
        #expect(Array(out[8..<16]) == [1, 3, 5, 7, 9, 11, 13, 15])
        #expect(Array(out[32..<40]) == Array(x[32..<40]))
    }
}
