/// Conversions between f32 and the 16-bit weight formats of Hugging Face checkpoints.
///
/// bf16 → f32 is exact (the top 16 bits of the f32 pattern); f16 → f32 is exact too. Narrowing rounds to
/// nearest, ties to even, as PyTorch does.
public enum Widen {
    /// f32 value of one bf16 bit pattern.
    @inlinable
    public static func bf16(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    /// bf16 bit pattern nearest to `x` (ties to even; NaN stays NaN).
    @inlinable
    public static func toBF16(_ x: Float) -> UInt16 {
        let u = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: (u >> 16) | 0x40) }
        let rounding = 0x7FFF + ((u >> 16) & 1)
        return UInt16(truncatingIfNeeded: (u &+ rounding) >> 16)
    }

    /// f32 value of one IEEE half bit pattern.
    @inlinable
    public static func f16(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }

    /// Widens `count` bf16 values at `src` into `dst`.
    @inlinable
    public static func bf16(_ src: UnsafePointer<UInt16>, into dst: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        let s = UnsafeRawPointer(src), d = UnsafeMutableRawPointer(dst)
        while i + 16 <= count {
            let h = s.loadUnaligned(fromByteOffset: 2 * i, as: SIMD16<UInt16>.self)
            let w = SIMD16<UInt32>(truncatingIfNeeded: h) &<< 16
            d.storeBytes(of: w, toByteOffset: 4 * i, as: SIMD16<UInt32>.self)
            i += 16
        }
        while i < count { dst[i] = bf16(src[i]); i += 1 }
    }

    /// Widens `count` f16 values at `src` into `dst`.
    @inlinable
    public static func f16(_ src: UnsafePointer<UInt16>, into dst: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        let s = UnsafeRawPointer(src), d = UnsafeMutableRawPointer(dst)
        while i + 16 <= count {
            let h = s.loadUnaligned(fromByteOffset: 2 * i, as: SIMD16<Float16>.self)
            d.storeBytes(of: SIMD16<Float>(h), toByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        while i < count { dst[i] = f16(src[i]); i += 1 }
    }
}
