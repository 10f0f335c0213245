/// 8-bit float weights (`float8_e4m3fn`, as Hugging Face FP8 checkpoints store them) in blocks of 128 columns,
/// each block one f32 scale and 128 one-byte codes: 132 bytes, 1.03 bytes a weight.
///
/// A checkpoint keeps the codes as a `[rows, cols]` tensor and their scales (`weight_scale_inv`, a multiplier
/// despite the name) as a separate `[⌈rows/br⌉, ⌈cols/bc⌉]` tensor; `pack` copies each row's codes behind the
/// scale of its block, so rows stay self-contained (a range of rows is a view) and stream as one run.
///
/// e4m3fn: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, codes 0x7F and 0xFF are NaN,
/// the largest value is 448. Shifted left by 7 (and the sign by 8) a code becomes the IEEE half of its value
/// times 2⁻⁸, subnormals included, so the hardware's f16 conversion widens 8 codes at once; the stored scale is
/// the checkpoint's times 2⁸, so `scale · widen8` is the weight, and dequantized weights are one f32 product
/// each, exactly as the code times the checkpoint's scale rounds.
public enum FP8: BlockQuantized {
    @inlinable public static var block: Int { 128 }
    @inlinable public static var scaleBytes: Int { 4 }
    @inlinable public static var blockBytes: Int { 4 + block }
    public static var elementType: ElementType { .fp8 }

    /// The largest finite e4m3fn value.
    public static let maxValue: Float = 448

    /// The stored scale at the start of `block` (the checkpoint's scale times 2⁸).
    @inlinable @inline(__always)
    public static func scale(_ block: UnsafeRawPointer) -> Float { block.loadUnaligned(as: Float.self) }

    /// Eight codes at `p` as their values times 2⁻⁸.
    @inlinable @inline(__always)
    public static func widen8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
        // Sign-extended and shifted by 7, a code has its sign in bits 15 and 14; clearing bit 14 leaves the half.
        let v = p.loadUnaligned(as: SIMD8<Int8>.self)
        let w = SIMD8<Int16>(Int16(v[0]), Int16(v[1]), Int16(v[2]), Int16(v[3]),
                             Int16(v[4]), Int16(v[5]), Int16(v[6]), Int16(v[7]))
        let h = unsafeBitCast((w &<< 7) & Int16(bitPattern: 0xBFFF), to: SIMD8<Float16>.self)
        return SIMD8(Float(h[0]), Float(h[1]), Float(h[2]), Float(h[3]), Float(h[4]), Float(h[5]), Float(h[6]), Float(h[7]))
    }

    /// One code at `p` as its value times 2⁻⁸.
    @inlinable @inline(__always)
    public static func widen1(_ p: UnsafeRawPointer) -> Float { half(p.load(as: UInt8.self)) }

    @inlinable @inline(__always)
    static func half(_ code: UInt8) -> Float {
        let c = UInt16(code)
        return Float(Float16(bitPattern: ((c & 0x80) << 8) | ((c & 0x7F) << 7)))
    }

    /// The value of an e4m3fn code (NaN for 0x7F and 0xFF).
    public static func value(_ code: UInt8) -> Float {
        isNaN(code) ? .nan : half(code) * 256
    }

    /// Whether `code` is one of e4m3fn's two NaN codes.
    @inlinable public static func isNaN(_ code: UInt8) -> Bool { code & 0x7F == 0x7F }

    /// The e4m3fn code nearest to `x` (ties to even; beyond ±448 it saturates to ±448, as PyTorch's conversion
    /// of finite values does not: callers scale first so that nothing exceeds 448).
    public static func code(_ x: Float) -> UInt8 {
        let sign: UInt8 = x.sign == .minus ? 0x80 : 0
        let a = min(abs(x), maxValue)
        if a < 0x1p-6 {
            // Subnormal steps of 2⁻⁹; rounding up to 8 steps gives code 8, the smallest normal, as it should.
            return sign | UInt8((a * 0x1p9).rounded(.toNearestOrEven))
        }
        var e = Int(a.exponent)                               // 2^e <= a < 2^(e+1), e in -6...8
        var m = (a * Float(sign: .plus, exponent: 3 - e, significand: 1)).rounded(.toNearestOrEven)  // 8...16
        if m == 16 { e += 1; m = 8 }
        return sign | UInt8((e + 7) << 3) | UInt8(Int(m) - 8)
    }

    /// Quantizes one row: per block the scale is the largest magnitude over 448, and each code the value over
    /// that scale, rounded to the nearest e4m3fn value (`--weights-dtype fp8`).
    public static func quantize(row src: UnsafePointer<Float>, cols: Int, into dst: UnsafeMutableRawPointer) {
        for b in 0..<blocks(cols) {
            let lo = b * block, n = min(block, cols - lo)
            var amax: Float = 0
            for i in 0..<n { amax = max(amax, abs(src[lo + i])) }
            let d = amax / maxValue
            let out = dst + b * blockBytes
            out.storeBytes(of: d * 256, as: Float.self)
            let q = (out + scaleBytes).assumingMemoryBound(to: UInt8.self)
            for i in 0..<n { q[i] = d == 0 ? 0 : code(src[lo + i] / d) }
            for i in n..<block { q[i] = 0 }
        }
    }

    /// Copies a checkpoint's `[rows, cols]` codes into rows of blocks at `dst` (`rows × rowBytes(cols)` bytes);
    /// row r's block b takes `scale(r / blockRows, b × 128 / blockCols)` (the checkpoint's scales; `blockCols` a
    /// multiple of 128). Returns the index of the first NaN code, if any (nothing meaningful is computed from one).
    public static func pack(codes: UnsafeRawPointer, rows: Int, cols: Int, blockRows: Int, blockCols: Int,
                            scale: (Int, Int) -> Float, into dst: UnsafeMutableRawPointer) -> Int? {
        precondition(blockRows > 0 && blockCols > 0 && blockCols % block == 0, "FP8 blocks must be r x 128k")
        let src = codes.assumingMemoryBound(to: UInt8.self)
        let rowBytes = rowBytes(cols)
        var firstNaN: Int?
        for r in 0..<rows {
            for b in 0..<blocks(cols) {
                let lo = b * block, n = min(block, cols - lo)
                let out = dst + r * rowBytes + b * blockBytes
                out.storeBytes(of: scale(r / blockRows, lo / blockCols) * 256, as: Float.self)
                let q = (out + scaleBytes).assumingMemoryBound(to: UInt8.self)
                q.update(from: src + r * cols + lo, count: n)
                for i in n..<block { q[i] = 0 }
                if firstNaN == nil, let i = (0..<n).first(where: { isNaN(q[$0]) }) { firstNaN = r * cols + lo + i }
            }
        }
        return firstNaN
    }
}
