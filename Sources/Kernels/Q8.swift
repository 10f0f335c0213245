#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// 8-bit weights in blocks (`--weights-dtype q8`): each row of a `[rows, cols]` matrix is cut into blocks of 32
/// columns, and each block keeps one scale `d` (an IEEE half) and 32 signed bytes `q`, the weight being `d · q`.
/// A block is 34 bytes, scale first, so a row streams as one run of 1.0625 bytes a weight (the layout idea of
/// llama.cpp's Q8_0). A row whose length is not a multiple of 32 ends in a short block, padded with zeros.
///
/// `d · q` is exact in f32 (an 11-bit by 8-bit product), so larger batches, which dequantize tiles for sgemm, get
/// exactly the f32 product with the dequantized weights; the small-batch kernel (`SmallBatchGEMM.q8`) applies
/// each block's scale to the block's sum, which regroups that sum (within 1e-6 of its magnitude).
public enum Q8: BlockQuantized {
    /// Columns per block.
    @inlinable public static var block: Int { 32 }
    /// The f16 scale's bytes.
    @inlinable public static var scaleBytes: Int { 2 }
    /// Bytes per block: the f16 scale, then the 32 quants.
    @inlinable public static var blockBytes: Int { 2 + block }
    public static var elementType: ElementType { .q8 }

    /// The f16 scale at the start of `block`.
    @inlinable @inline(__always)
    public static func scale(_ block: UnsafeRawPointer) -> Float {
        Float(Float16(bitPattern: block.loadUnaligned(as: UInt16.self)))
    }

    /// Eight signed quants at `p` as floats.
    @inlinable @inline(__always)
    public static func widen8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
        // Lane by lane: LLVM makes one sign-extending load and one conversion of it, where the standard library's
        // vector conversions stayed calls to a generic specialisation.
        let v = p.loadUnaligned(as: SIMD8<Int8>.self)
        return SIMD8(Float(v[0]), Float(v[1]), Float(v[2]), Float(v[3]), Float(v[4]), Float(v[5]), Float(v[6]), Float(v[7]))
    }

    /// One signed quant at `p` as a float.
    @inlinable @inline(__always)
    public static func widen1(_ p: UnsafeRawPointer) -> Float { Float(p.load(as: Int8.self)) }

    /// Quantizes one row of `cols` f32 values into `dst` (`rowBytes(cols)` bytes): per block, the scale is the
    /// largest magnitude over 127, rounded to f16 (and raised to the next f16 where rounding down would put the
    /// largest value beyond 127.5 steps: small blocks have subnormal scales, a few bits wide), and each quant the
    /// value over that scale, rounded to nearest (ties away from zero) and kept within ±127; so every weight comes
    /// back within half a step. An all-zero block has scale 0.
    public static func quantize(row src: UnsafePointer<Float>, cols: Int, into dst: UnsafeMutableRawPointer) {
        for b in 0..<blocks(cols) {
            let lo = b * block, n = min(block, cols - lo)
            var amax: Float = 0
            for i in 0..<n { amax = max(amax, abs(src[lo + i])) }
            var d = Float16(amax / 127)
            if amax > 0 && d == 0 { d = .leastNonzeroMagnitude }
            while amax > 0 && amax / Float(d) > 127.5 { d = d.nextUp }
            let block = dst + b * blockBytes
            block.storeBytes(of: d.bitPattern, as: UInt16.self)
            let q = (block + scaleBytes).assumingMemoryBound(to: Int8.self)
            let inverse: Float = d == 0 ? 0 : 1 / Float(d)
            for i in 0..<n { q[i] = Int8(max(-127, min(127, (src[lo + i] * inverse).rounded()))) }
            for i in n..<Self.block { q[i] = 0 }
        }
    }
}

/// Owns bytes that weight matrices point into (quantized weights, the built-in presets' tensors).
public final class ByteStorage: @unchecked Sendable {
    // @unchecked: written once at creation, read-only afterwards.
    public let pointer: UnsafeMutableRawPointer
    public let byteCount: Int

    public init(byteCount: Int) {
        // Huge pages where the kernel gives them: fewer TLB misses when decode streams the weights.
        pointer = .allocate(byteCount: max(byteCount, 1), alignment: byteCount >= 1 << 21 ? 1 << 21 : 64)
        if byteCount >= 1 << 21 { madvise(pointer, byteCount, MADV_HUGEPAGE) }
        self.byteCount = byteCount
    }

    deinit { pointer.deallocate() }
}
