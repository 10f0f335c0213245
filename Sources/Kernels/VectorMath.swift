#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Transcendentals over SIMD16, for activations and softmax where calling `expf` per element would dominate.
public enum VectorMath {
    /// e^x for 16 lanes, within 2 ulp of `expf` over [-87, 88]; inputs are clamped to that range, so results
    /// below e^-87 come out as e^-87 (≈1.6e-38) and above e^88 as e^88.
    @inlinable
    public static func exp(_ x: SIMD16<Float>) -> SIMD16<Float> {
        // pointwiseMin/Max lower to vminps/vmaxps; `clamped` is scalarised (it orders NaN).
        let clamped = pointwiseMax(pointwiseMin(x, SIMD16(repeating: 88)), SIMD16(repeating: -87))
        // n = round(x / ln 2) by the 1.5·2²³ trick: adding it leaves n in the low mantissa bits, which also gives
        // the integer without a (slow, unvectorised) generic conversion. r = x - n ln 2, ln 2 in two parts.
        let shifted = clamped * 1.44269504088896341 + 12582912
        let n = shifted - 12582912
        var r = clamped - n * 0.693359375
        r = r - n * -2.12194440e-4
        let z = r * r
        var p = SIMD16<Float>(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let y = p * z + r + 1
        let integer = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- 0x4B40_0000
        let bits = (integer &+ 127) &<< 23
        return y * unsafeBitCast(bits, to: SIMD16<Float>.self)
    }

    /// e^x for one value (the C library's `expf`).
    @inlinable
    public static func exp(_ x: Float) -> Float { expf(x) }
}
