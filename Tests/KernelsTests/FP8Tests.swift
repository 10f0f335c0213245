import Kernels
import Testing

/// e4m3fn from its definition: sign, 4 exponent bits with bias 7, 3 mantissa bits; exponent 0 is subnormal
/// (m/8 · 2⁻⁶), and S.1111.111 is NaN.
func e4m3Definition(_ code: UInt8) -> Double {
    let s: Double = code & 0x80 != 0 ? -1 : 1, e = Int(code >> 3) & 15, m = Double(code & 7)
    if e == 15 && m == 7 { return .nan }
    return e == 0 ? s * m / 8 * 0x1p-6 : s * (1 + m / 8) * Double(sign: .plus, exponent: e - 7, significand: 1)
}

@Suite struct FP8Tests {
    /// Every code decodes to its defined value, one at a time (`value`) and eight at a time (the kernels' widening
    /// through IEEE halves, scaled by the stored 2⁸).
    @Test func everyCodeDecodesToItsValue() {
        for c in 0...255 {
            let code = UInt8(c), want = e4m3Definition(code)
            if want.isNaN { #expect(FP8.value(code).isNaN && FP8.isNaN(code)); continue }
            #expect(Double(FP8.value(code)) == want, "code \(c)")
        }
        var codes = (0...255).map(UInt8.init).filter { !FP8.isNaN($0) }
        while codes.count % 8 != 0 { codes.append(0) }
        for i in stride(from: 0, to: codes.count, by: 8) {
            let v = codes.withUnsafeBytes { FP8.widen8($0.baseAddress! + i) } * 256
            for j in 0..<8 { #expect(Double(v[j]) == e4m3Definition(codes[i + j]), "code \(codes[i + j])") }
        }
        #expect(FP8.value(0x7E) == 448 && FP8.value(0x01) == 0x1p-9 && FP8.value(0x08) == 0x1p-6)
    }

    /// `code` finds the nearest value: every value maps back to its own code, a midpoint goes to the even code,
    /// anything between two values to the nearer one, and beyond 448 it saturates.
    @Test func roundingIsToNearestEven() {
        let positive = (0...126).map { UInt8($0) }
        for c in positive {
            #expect(FP8.code(FP8.value(c)) == c && FP8.code(-FP8.value(c)) == c | 0x80, "code \(c)")
        }
        for c in positive.dropLast() {
            let lo = FP8.value(c), hi = FP8.value(c + 1), mid = (lo + hi) / 2
            #expect(FP8.code(mid) == (c % 2 == 0 ? c : c + 1), "midpoint above code \(c)")
            #expect(FP8.code(lo + (hi - lo) * 0.3) == c && FP8.code(lo + (hi - lo) * 0.7) == c + 1, "between \(c) and \(c + 1)")
        }
        #expect(FP8.code(1e6) == 0x7E && FP8.code(-500) == 0xFE && FP8.code(0x1p-12) == 0)
    }

    /// `pack` gives each row's block the scale of its (row, column) block in the checkpoint's grid, whatever the
    /// grid's block size (here 3 rows by 256 columns over a 7 x 300 matrix), pads short blocks, and reports the
    /// first NaN code.
    @Test func packingTakesEachBlocksScale() {
        let rows = 7, cols = 300, blockRows = 3, blockCols = 256
        let grid = (rows: 3, cols: 2)
        var codes = (0..<(rows * cols)).map { UInt8(($0 * 37 + 11) % 256) }
        for i in codes.indices where FP8.isNaN(codes[i]) { codes[i] = 0x42 }
        let scales = (0..<(grid.rows * grid.cols)).map { Float($0 + 1) * 0.125 }
        let out = UnsafeMutableRawPointer.allocate(byteCount: rows * FP8.rowBytes(cols), alignment: 64)
        defer { out.deallocate() }
        let nan = codes.withUnsafeBytes {
            FP8.pack(codes: $0.baseAddress!, rows: rows, cols: cols, blockRows: blockRows, blockCols: blockCols,
                     scale: { scales[$0 * grid.cols + $1] }, into: out)
        }
        #expect(nan == nil)
        let m = WeightMatrix(rows: rows, cols: cols, type: .fp8, base: UnsafeRawPointer(out), owner: nil)
        let back = m.toFloatArray()
        for r in 0..<rows {
            for c in 0..<cols {
                let want = Float(e4m3Definition(codes[r * cols + c])) * scales[(r / blockRows) * grid.cols + c / blockCols]
                #expect(back[r * cols + c] == want, "row \(r) column \(c)")
            }
            for j in (cols % 128)..<128 {
                #expect(FP8.quants(m.base + r * m.rowBytes, 2).load(fromByteOffset: j, as: UInt8.self) == 0)
            }
        }
        codes[2 * cols + 5] = 0xFF
        let found = codes.withUnsafeBytes {
            FP8.pack(codes: $0.baseAddress!, rows: rows, cols: cols, blockRows: blockRows, blockCols: blockCols,
                     scale: { _, _ in 1 }, into: out)
        }
        #expect(found == 2 * cols + 5)
    }

    /// Quantizing f32 rows (`--weights-dtype fp8`): the block's largest magnitude comes back exactly, and every
    /// weight within half a step of e4m3 at its magnitude (relative 2⁻⁴, or 2⁻⁹ of the scale near zero).
    @Test func quantizedRowsComeBackWithinHalfAStep() {
        let rows = 5, cols = 200
        let values = randomFloats(rows * cols, seed: 41)
        let q = FloatStorage(values).matrix(rows: rows, cols: cols).quantized(FP8.self)
        #expect(q.type == .fp8 && q.byteCount == rows * 2 * 132)
        let back = q.toFloatArray()
        for r in 0..<rows {
            for b in 0..<2 {
                let block = (b * 128)..<min(cols, (b + 1) * 128)
                let amax = block.map { abs(values[r * cols + $0]) }.max()!
                let scale = amax / 448
                for c in block {
                    let i = r * cols + c
                    let step = max(abs(values[i]) / 16, scale * 0x1p-9)
                    #expect(abs(back[i] - values[i]) <= step * 1.0001, "row \(r) column \(c)")
                    if abs(values[i]) == amax { #expect(abs(back[i] - values[i]) <= amax * 1e-6) }
                }
            }
        }
    }
}
