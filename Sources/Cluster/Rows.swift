import Kernels

/// How activation rows (hidden states, expert outputs) travel between ranks.
public enum WireDType: String, Sendable, CaseIterable {
    /// As computed: bit-identical to one process.
    case f32
    /// Rounded to bf16 (nearest, ties to even) on the wire: half the bytes, not bit-identical.
    case bf16
}

/// What an expert rank sends back for a token: one row per expert, or one per rank (the sum of its experts'
/// weighted rows, in expert order).
public enum CombineRows: String, Sendable, CaseIterable {
    /// One weighted row per (token, expert), summed where the token is in expert order: bit-identical to one process.
    case perExpert = "per-expert"
    /// One partial sum per (token, rank): fewer bytes where a rank holds several of a token's experts; the
    /// token's sum is then taken over ranks, so rounding differs from one process where its experts are split.
    case perRank = "per-rank"
}

/// Writes, reads and accumulates rows of `width` floats in the wire's dtype.
struct RowCodec {
    let dtype: WireDType
    let width: Int

    /// Bytes of one row on the wire.
    var rowBytes: Int { width * (dtype == .f32 ? 4 : 2) }

    func write(_ row: UnsafePointer<Float>, into w: inout ByteWriter) {
        switch dtype {
        case .f32: w.floats(row, count: width)
        case .bf16: w.bf16s(row, count: width)
        }
    }

    func read(_ r: inout ByteReader, into dst: UnsafeMutablePointer<Float>) {
        switch dtype {
        case .f32: r.floats(count: width, into: dst)
        case .bf16: r.bf16s(count: width, into: dst)
        }
    }

    /// dst += the row at `raw` (wire layout).
    func add(_ raw: UnsafeRawPointer, into dst: UnsafeMutablePointer<Float>) {
        switch dtype {
        case .f32:
            Elementwise.add(raw.assumingMemoryBound(to: Float.self), into: dst, width)
        case .bf16:
            for i in 0..<width { dst[i] += Widen.bf16(raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        }
    }
}
