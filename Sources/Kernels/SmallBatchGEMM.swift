/// `y = x · Wᵀ` for a few tokens, reading each weight once from memory.
///
/// With few tokens a product is bound by the bytes of W, not by arithmetic. These kernels walk four rows of W
/// at a time and multiply them with every token (two tokens per pass, so x and the four rows stay in L1; f32
/// runs an odd last token alone, which made batch-1 decode 5 % faster; bf16 alone measured no faster):
/// W streams from DRAM exactly once, in its stored type, with nothing packed or copied. Four row streams keep
/// loads in flight; 4 × 2 accumulators hide the FMA latency.
public enum SmallBatchGEMM {
    /// f32 weights `[rows, cols]` at `w`; writes rows `rows` of y.
    @inlinable
    public static func f32(
        x: UnsafePointer<Float>, tokens: Int, ldx: Int, weights w: UnsafePointer<Float>, cols: Int,
        rows: Range<Int>, into y: UnsafeMutablePointer<Float>, ldy: Int, accumulate: Bool
    ) {
        let quarters = Quarters(rows)
        for step in 0..<quarters.steps {
            let r = quarters.rows(step)
            let w0 = w + r.0 * cols, w1 = w + r.1 * cols, w2 = w + r.2 * cols, w3 = w + r.3 * cols
            var t = 0
            while t + 1 < tokens {
                let x0 = x + t * ldx, x1 = x0 + ldx
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
                var k = 0
                while k + 8 <= cols {
                    let p = load(x0 + k), q = load(x1 + k)
                    let u0 = load(w0 + k), u1 = load(w1 + k)
                    a0.addProduct(u0, p); b0.addProduct(u0, q)
                    a1.addProduct(u1, p); b1.addProduct(u1, q)
                    let u2 = load(w2 + k), u3 = load(w3 + k)
                    a2.addProduct(u2, p); b2.addProduct(u2, q)
                    a3.addProduct(u3, p); b3.addProduct(u3, q)
                    k += 8
                }
                var s = (a0.sum(), a1.sum(), a2.sum(), a3.sum()), z = (b0.sum(), b1.sum(), b2.sum(), b3.sum())
                while k < cols {
                    s.0 += w0[k] * x0[k]; s.1 += w1[k] * x0[k]; s.2 += w2[k] * x0[k]; s.3 += w3[k] * x0[k]
                    z.0 += w0[k] * x1[k]; z.1 += w1[k] * x1[k]; z.2 += w2[k] * x1[k]; z.3 += w3[k] * x1[k]
                    k += 1
                }
                quarters.store(s, step, y + t * ldy, accumulate)
                quarters.store(z, step, y + (t + 1) * ldy, accumulate)
                t += 2
            }
            if t < tokens {
                // The last token alone, summed in the pair loop's order (it used to run as a pair with itself,
                // every multiply-add twice).
                let x0 = x + t * ldx
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                var k = 0
                while k + 8 <= cols {
                    let p = load(x0 + k)
                    a0.addProduct(load(w0 + k), p); a1.addProduct(load(w1 + k), p)
                    a2.addProduct(load(w2 + k), p); a3.addProduct(load(w3 + k), p)
                    k += 8
                }
                var s = (a0.sum(), a1.sum(), a2.sum(), a3.sum())
                while k < cols {
                    s.0 += w0[k] * x0[k]; s.1 += w1[k] * x0[k]; s.2 += w2[k] * x0[k]; s.3 += w3[k] * x0[k]
                    k += 1
                }
                quarters.store(s, step, y + t * ldy, accumulate)
            }
        }
    }

    /// bf16 weights `[rows, cols]` at `w`; `xp` is x rearranged by `interleave` (row stride `cols`).
    ///
    /// 16 bf16 weights load as 8 UInt32 lanes, each holding an even element in its low half and the next odd
    /// element in its high half; a shift and a mask turn them into two f32 vectors with no conversion, and
    /// x, rearranged once per call into the same even/odd order, meets them lane for lane.
    @inlinable
    public static func bf16(
        xp: UnsafePointer<Float>, tokens: Int, weights w: UnsafePointer<UInt16>, cols: Int,
        rows: Range<Int>, into y: UnsafeMutablePointer<Float>, ldy: Int, accumulate: Bool
    ) {
        let mask = SIMD8<UInt32>(repeating: 0xFFFF_0000)
        @inline(__always) func pair(_ p: UnsafePointer<UInt16>) -> (SIMD8<Float>, SIMD8<Float>) {
            let v = UnsafeRawPointer(p).loadUnaligned(as: SIMD8<UInt32>.self)
            return (unsafeBitCast(v &<< 16, to: SIMD8<Float>.self), unsafeBitCast(v & mask, to: SIMD8<Float>.self))
        }
        let quarters = Quarters(rows)
        for step in 0..<quarters.steps {
            let r = quarters.rows(step)
            let w0 = w + r.0 * cols, w1 = w + r.1 * cols, w2 = w + r.2 * cols, w3 = w + r.3 * cols
            var t = 0
            while t < tokens {
                let x0 = xp + t * cols, x1 = t + 1 < tokens ? x0 + cols : x0
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
                var k = 0
                while k + 16 <= cols {
                    let pe = load(x0 + k), po = load(x0 + k + 8), qe = load(x1 + k), qo = load(x1 + k + 8)
                    var (ue, uo) = pair(w0 + k)
                    a0.addProduct(ue, pe); a0.addProduct(uo, po); b0.addProduct(ue, qe); b0.addProduct(uo, qo)
                    (ue, uo) = pair(w1 + k)
                    a1.addProduct(ue, pe); a1.addProduct(uo, po); b1.addProduct(ue, qe); b1.addProduct(uo, qo)
                    (ue, uo) = pair(w2 + k)
                    a2.addProduct(ue, pe); a2.addProduct(uo, po); b2.addProduct(ue, qe); b2.addProduct(uo, qo)
                    (ue, uo) = pair(w3 + k)
                    a3.addProduct(ue, pe); a3.addProduct(uo, po); b3.addProduct(ue, qe); b3.addProduct(uo, qo)
                    k += 16
                }
                var s = (a0.sum(), a1.sum(), a2.sum(), a3.sum()), z = (b0.sum(), b1.sum(), b2.sum(), b3.sum())
                while k < cols {
                    let u = (Widen.bf16(w0[k]), Widen.bf16(w1[k]), Widen.bf16(w2[k]), Widen.bf16(w3[k]))
                    s.0 += u.0 * x0[k]; s.1 += u.1 * x0[k]; s.2 += u.2 * x0[k]; s.3 += u.3 * x0[k]
                    z.0 += u.0 * x1[k]; z.1 += u.1 * x1[k]; z.2 += u.2 * x1[k]; z.3 += u.3 * x1[k]
                    k += 1
                }
                quarters.store(s, step, y + t * ldy, accumulate)
                if t + 1 < tokens { quarters.store(z, step, y + (t + 1) * ldy, accumulate) }
                t += 2
            }
        }
    }

    /// Block-quantized weights (`Q8`, `FP8`; `F.rowBytes(cols)` bytes a row) at `w`; writes rows `rows` of y.
    ///
    /// Per block, the quants (widened to f32) meet x unscaled, and the block's sum takes the scale once: a
    /// conversion and a multiply-add per weight and token, against a widening, a scaling and a multiply-add. Every
    /// token's sums run in one order whatever the token count, so a sequence gets the same result alone or beside
    /// others; the order differs from the f32 kernel's on the dequantized values by that per-block grouping.
    /// Tokens go four at a time (short blocks), then two at a time, the last alone, each form in a loop of its own
    /// so that the accumulators stay in registers; the four rows' blocks stay in L1 while every pair reads them, so the weights stream from memory
    /// once. (Dequantizing L2 tiles for the f32 kernel instead decoded 8 sequences of `medium` q8 at 156-165 tok/s
    /// against 213-223 this way.)
    @inlinable
    public static func blocked<F: BlockQuantized>(
        _ format: F.Type, x: UnsafePointer<Float>, tokens: Int, ldx: Int, weights w: UnsafeRawPointer, cols: Int,
        rows: Range<Int>, into y: UnsafeMutablePointer<Float>, ldy: Int, accumulate: Bool
    ) {
        let rowBytes = F.rowBytes(cols), full = cols / F.block
        let quarters = Quarters(rows)
        for step in 0..<quarters.steps {
            let r = quarters.rows(step)
            let w4 = (w + r.0 * rowBytes, w + r.1 * rowBytes, w + r.2 * rowBytes, w + r.3 * rowBytes)
            var t = 0
            // Short blocks (q8's 32), four tokens at a time: each quant is widened once for four tokens instead of
            // two. The rows go in two pairs (two rows' accumulators for four tokens, eight vectors, stay in registers;
            // all four rows' would not).
            while F.block <= 32 && t + 3 < tokens {
                let x0 = x + t * ldx, xs = (x0, x0 + ldx, x0 + 2 * ldx, x0 + 3 * ldx)
                let zero = (SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>())
                var r0 = zero, r1 = zero, r2 = zero, r3 = zero
                for k in 0..<full {
                    let o = k * F.blockBytes, c = k * F.block
                    let xk = (xs.0 + c, xs.1 + c, xs.2 + c, xs.3 + c)
                    block(F.self, w4.0 + o, xk, &r0)
                    block(F.self, w4.1 + o, xk, &r1)
                }
                for k in 0..<full {
                    let o = k * F.blockBytes, c = k * F.block
                    let xk = (xs.0 + c, xs.1 + c, xs.2 + c, xs.3 + c)
                    block(F.self, w4.2 + o, xk, &r2)
                    block(F.self, w4.3 + o, xk, &r3)
                }
                quarters.store(tail(F.self, w4, cols: cols, x: xs.0, (r0.0, r1.0, r2.0, r3.0)), step, y + t * ldy, accumulate)
                quarters.store(tail(F.self, w4, cols: cols, x: xs.1, (r0.1, r1.1, r2.1, r3.1)), step, y + (t + 1) * ldy, accumulate)
                quarters.store(tail(F.self, w4, cols: cols, x: xs.2, (r0.2, r1.2, r2.2, r3.2)), step, y + (t + 2) * ldy, accumulate)
                quarters.store(tail(F.self, w4, cols: cols, x: xs.3, (r0.3, r1.3, r2.3, r3.3)), step, y + (t + 3) * ldy, accumulate)
                t += 4
            }
            while t + 1 < tokens {
                let x0 = x + t * ldx, x1 = x0 + ldx
                var a = (SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>()), b = a
                for k in 0..<full {
                    let o = k * F.blockBytes, xa = x0 + k * F.block, xb = x1 + k * F.block
                    block(F.self, w4.0 + o, xa, xb, &a.0, &b.0)
                    block(F.self, w4.1 + o, xa, xb, &a.1, &b.1)
                    block(F.self, w4.2 + o, xa, xb, &a.2, &b.2)
                    block(F.self, w4.3 + o, xa, xb, &a.3, &b.3)
                }
                let s = tail(F.self, w4, cols: cols, x: x0, a), z = tail(F.self, w4, cols: cols, x: x1, b)
                quarters.store(s, step, y + t * ldy, accumulate)
                quarters.store(z, step, y + (t + 1) * ldy, accumulate)
                t += 2
            }
            if t < tokens {
                let x0 = x + t * ldx
                var a = (SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>(), SIMD8<Float>())
                for k in 0..<full {
                    let o = k * F.blockBytes, xa = x0 + k * F.block
                    block(F.self, w4.0 + o, xa, &a.0)
                    block(F.self, w4.1 + o, xa, &a.1)
                    block(F.self, w4.2 + o, xa, &a.2)
                    block(F.self, w4.3 + o, xa, &a.3)
                }
                quarters.store(tail(F.self, w4, cols: cols, x: x0, a), step, y + t * ldy, accumulate)
            }
        }
    }

    /// One full block at `block` against `F.block` values of x: `a += scale · Σ q·x`. A long block (FP8's 128)
    /// sums in two chains (even and odd eights), so that it is not one chain of 16 dependent multiply-adds; a short
    /// one (q8's 32) in one, which keeps the one-token loop's accumulators in registers (two chains there made
    /// `kernel-bench --dtype q8 --tokens 1` 4x slower).
    @inlinable @inline(__always)
    static func block<F: BlockQuantized>(_ format: F.Type, _ block: UnsafeRawPointer, _ x: UnsafePointer<Float>,
                                         _ a: inout SIMD8<Float>) {
        let q = block + F.scaleBytes
        if F.block <= 32 {
            var s = F.widen8(q) * load(x)
            for i in stride(from: 8, to: F.block, by: 8) { s.addProduct(F.widen8(q + i), load(x + i)) }
            a.addProduct(s, SIMD8(repeating: F.scale(block)))
            return
        }
        var s = F.widen8(q) * load(x), s1 = F.widen8(q + 8) * load(x + 8)
        for i in stride(from: 16, to: F.block, by: 16) {
            s.addProduct(F.widen8(q + i), load(x + i))
            s1.addProduct(F.widen8(q + i + 8), load(x + i + 8))
        }
        a.addProduct(s + s1, SIMD8(repeating: F.scale(block)))
    }

    /// The same block against two tokens' values, each summed as the one-token form sums it.
    @inlinable @inline(__always)
    static func block<F: BlockQuantized>(_ format: F.Type, _ block: UnsafeRawPointer, _ x: UnsafePointer<Float>,
                                         _ x1: UnsafePointer<Float>, _ a: inout SIMD8<Float>, _ b: inout SIMD8<Float>) {
        let q = block + F.scaleBytes
        if F.block <= 32 {
            var u = F.widen8(q)
            var s = u * load(x), z = u * load(x1)
            for i in stride(from: 8, to: F.block, by: 8) {
                u = F.widen8(q + i)
                s.addProduct(u, load(x + i)); z.addProduct(u, load(x1 + i))
            }
            let d = SIMD8<Float>(repeating: F.scale(block))
            a.addProduct(s, d)
            b.addProduct(z, d)
            return
        }
        var u = F.widen8(q), v = F.widen8(q + 8)
        var s = u * load(x), z = u * load(x1), s1 = v * load(x + 8), z1 = v * load(x1 + 8)
        for i in stride(from: 16, to: F.block, by: 16) {
            u = F.widen8(q + i); v = F.widen8(q + i + 8)
            s.addProduct(u, load(x + i)); z.addProduct(u, load(x1 + i))
            s1.addProduct(v, load(x + i + 8)); z1.addProduct(v, load(x1 + i + 8))
        }
        let d = SIMD8<Float>(repeating: F.scale(block))
        a.addProduct(s + s1, d)
        b.addProduct(z + z1, d)
    }

    /// A short block (at most 32 values) against four tokens' values, each summed as the one-token form sums it.
    @inlinable @inline(__always)
    static func block<F: BlockQuantized>(
        _ format: F.Type, _ block: UnsafeRawPointer,
        _ x: (UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>),
        _ a: inout (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>)
    ) {
        let q = block + F.scaleBytes
        var u = F.widen8(q)
        var s0 = u * load(x.0), s1 = u * load(x.1), s2 = u * load(x.2), s3 = u * load(x.3)
        for i in stride(from: 8, to: F.block, by: 8) {
            u = F.widen8(q + i)
            s0.addProduct(u, load(x.0 + i)); s1.addProduct(u, load(x.1 + i))
            s2.addProduct(u, load(x.2 + i)); s3.addProduct(u, load(x.3 + i))
        }
        let d = SIMD8<Float>(repeating: F.scale(block))
        a.0.addProduct(s0, d); a.1.addProduct(s1, d); a.2.addProduct(s2, d); a.3.addProduct(s3, d)
    }

    /// The four rows' sums of one token: the full blocks' accumulators `a`, plus the short last block (its whole
    /// eights summed as a block, then one column at a time).
    @inlinable @inline(__always)
    static func tail<F: BlockQuantized>(_ format: F.Type, _ w4: (UnsafeRawPointer, UnsafeRawPointer, UnsafeRawPointer, UnsafeRawPointer),
                                        cols: Int, x: UnsafePointer<Float>,
                                        _ a: (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>)) -> (Float, Float, Float, Float) {
        let full = cols / F.block, k0 = full * F.block
        guard k0 < cols else { return (a.0.sum(), a.1.sum(), a.2.sum(), a.3.sum()) }
        var a = a
        let eights = (cols - k0) & ~7
        if eights > 0 {
            func part(_ row: UnsafeRawPointer) -> SIMD8<Float> {
                let q = F.quants(row, full)
                var s = SIMD8<Float>()
                for i in stride(from: 0, to: eights, by: 8) { s.addProduct(F.widen8(q + i), load(x + k0 + i)) }
                return s * SIMD8(repeating: F.scale(row, full))
            }
            a.0 += part(w4.0); a.1 += part(w4.1); a.2 += part(w4.2); a.3 += part(w4.3)
        }
        var s = (a.0.sum(), a.1.sum(), a.2.sum(), a.3.sum())
        for k in (k0 + eights)..<cols {
            let j = k - k0
            s.0 += F.widen1(F.quants(w4.0, full) + j) * F.scale(w4.0, full) * x[k]
            s.1 += F.widen1(F.quants(w4.1, full) + j) * F.scale(w4.1, full) * x[k]
            s.2 += F.widen1(F.quants(w4.2, full) + j) * F.scale(w4.2, full) * x[k]
            s.3 += F.widen1(F.quants(w4.3, full) + j) * F.scale(w4.3, full) * x[k]
        }
        return s
    }

    /// Rearranges each row of x `[tokens, cols]` (stride `ldx`) into `out` (stride `cols`) so that every block of
    /// 16 holds its 8 even elements, then its 8 odd ones; a tail shorter than 16 stays in order.
    @inlinable
    public static func interleave(_ x: UnsafePointer<Float>, tokens: Int, ldx: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
        for t in 0..<tokens {
            let src = x + t * ldx, dst = out + t * cols
            var k = 0
            while k + 16 <= cols {
                let v = UnsafeRawPointer(src + k).loadUnaligned(as: SIMD16<Float>.self)
                UnsafeMutableRawPointer(dst + k).storeBytes(of: v.evenHalf, as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(dst + k + 8).storeBytes(of: v.oddHalf, as: SIMD8<Float>.self)
                k += 16
            }
            while k < cols { dst[k] = src[k]; k += 1 }
        }
    }

    @inlinable @inline(__always)
    static func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

}

/// Four long sequential row streams over a row range: step i reads rows lo+i, lo+q+i, lo+2q+i, lo+3q+i
/// (q = ⌈n/4⌉), so each stream runs through consecutive rows and the hardware prefetcher stays trained,
/// where four adjacent rows would start four short streams every step. Rows past the end repeat the last
/// row: computed, never stored.
@usableFromInline
struct Quarters {
    @usableFromInline let lo: Int, q: Int, last: Int

    @inlinable init(_ rows: Range<Int>) {
        lo = rows.lowerBound
        q = (rows.count + 3) / 4
        last = rows.upperBound - 1
    }

    @inlinable var steps: Int { q }

    @inlinable @inline(__always)
    func rows(_ i: Int) -> (Int, Int, Int, Int) {
        (lo + i, min(lo + q + i, last), min(lo + 2 * q + i, last), min(lo + 3 * q + i, last))
    }

    @inlinable @inline(__always)
    func store(_ v: (Float, Float, Float, Float), _ i: Int, _ y: UnsafeMutablePointer<Float>, _ accumulate: Bool) {
        put(v.0, lo + i, y, accumulate)
        if lo + q + i <= last { put(v.1, lo + q + i, y, accumulate) }
        if lo + 2 * q + i <= last { put(v.2, lo + 2 * q + i, y, accumulate) }
        if lo + 3 * q + i <= last { put(v.3, lo + 3 * q + i, y, accumulate) }
    }

    @inlinable @inline(__always)
    func put(_ v: Float, _ row: Int, _ y: UnsafeMutablePointer<Float>, _ accumulate: Bool) {
        y[row] = accumulate ? y[row] + v : v
    }
}
