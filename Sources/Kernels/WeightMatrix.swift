/// Element types that weights may keep in memory: the three plain ones of checkpoints, `q8` blocks made at load
/// (`Q8`), and `fp8` blocks (`FP8`: an FP8 checkpoint's codes and scales, or made at load).
public enum ElementType: String, Sendable, CaseIterable {
    case f32, bf16, f16, q8, fp8

    /// Bytes per element of the three plain types (a block type has none: use `rowBytes` or `bytesPerWeight`).
    public var byteSize: Int {
        precondition(!isBlocked, "\(rawValue) has no whole number of bytes per element")
        return self == .f32 ? 4 : 2
    }

    /// Whether elements come in blocks with scales (`q8`, `fp8`).
    public var isBlocked: Bool { self == .q8 || self == .fp8 }

    /// Bytes per weight, scales included, of long rows.
    public var bytesPerWeight: Double {
        switch self {
        case .q8: return Double(Q8.blockBytes) / Double(Q8.block)
        case .fp8: return Double(FP8.blockBytes) / Double(FP8.block)
        default: return Double(byteSize)
        }
    }

    /// Bytes of one row of `cols` elements.
    @inlinable
    public func rowBytes(_ cols: Int) -> Int {
        switch self {
        case .f32: return cols * 4
        case .bf16, .f16: return cols * 2
        case .q8: return Q8.rowBytes(cols)
        case .fp8: return FP8.rowBytes(cols)
        }
    }

    /// The types a checkpoint stores.
    public static let stored: [ElementType] = [.f32, .bf16, .f16]

    /// The stored type named `name` (`init-model --dtype` and the like); nil for anything else, block types included.
    public static func stored(_ name: String) -> ElementType? { stored.first { $0.rawValue == name } }
}

/// A read-only row-major weight matrix `[rows, cols]` in its stored element type (PyTorch `Linear.weight`
/// layout: `rows` = output features, `cols` = input features).
///
/// The matrix does not own its bytes: `owner` keeps the memory map or buffer that holds them alive.
public struct WeightMatrix: @unchecked Sendable {
    // @unchecked: the bytes are immutable after load and `owner` keeps them mapped; nothing writes through `base`.
    public let rows: Int
    public let cols: Int
    public let type: ElementType
    public let base: UnsafeRawPointer
    public let owner: AnyObject?

    public init(rows: Int, cols: Int, type: ElementType, base: UnsafeRawPointer, owner: AnyObject?) {
        self.rows = rows
        self.cols = cols
        self.type = type
        self.base = base
        self.owner = owner
    }

    /// Bytes the matrix occupies.
    public var byteCount: Int { rows * rowBytes }

    /// Bytes of one row.
    @inlinable public var rowBytes: Int { type.rowBytes(cols) }

    /// Rows `range` as a matrix of their own (a view, no copy).
    public func rows(_ range: Range<Int>) -> WeightMatrix {
        precondition(range.lowerBound >= 0 && range.upperBound <= rows, "row range out of bounds")
        return WeightMatrix(rows: range.count, cols: cols, type: type,
                            base: base + range.lowerBound * rowBytes, owner: owner)
    }

    /// Widens (or dequantizes) rows `range` into `dst` (`[range.count, cols]` f32).
    @inlinable
    public func widen(rows range: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
        let n = range.count * cols
        let start = range.lowerBound * cols
        switch type {
        case .f32:
            dst.update(from: base.assumingMemoryBound(to: Float.self) + start, count: n)
        case .bf16:
            Widen.bf16(base.assumingMemoryBound(to: UInt16.self) + start, into: dst, count: n)
        case .f16:
            Widen.f16(base.assumingMemoryBound(to: UInt16.self) + start, into: dst, count: n)
        case .q8:
            for (i, r) in range.enumerated() { Q8.dequantize(row: base + r * rowBytes, cols: cols, into: dst + i * cols) }
        case .fp8:
            for (i, r) in range.enumerated() { FP8.dequantize(row: base + r * rowBytes, cols: cols, into: dst + i * cols) }
        }
    }

    /// The whole matrix as a new f32 array.
    public func toFloatArray() -> [Float] {
        [Float](unsafeUninitializedCapacity: rows * cols) { buf, n in
            if rows * cols > 0 { widen(rows: 0..<rows, into: buf.baseAddress!) }
            n = rows * cols
        }
    }
}

/// Owns an f32 buffer that weight matrices point into (weights converted at load, synthetic models).
public final class FloatStorage: @unchecked Sendable {
    // @unchecked: written once at creation, read-only afterwards.
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    public init(count: Int) {
        pointer = .allocate(capacity: max(count, 1))
        self.count = count
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { pointer.initialize(from: $0.baseAddress!, count: values.count) }
    }

    deinit { pointer.deallocate() }

    /// A `[rows, cols]` f32 matrix over elements `offset ..< offset + rows * cols`.
    public func matrix(rows: Int, cols: Int, offset: Int = 0) -> WeightMatrix {
        precondition(offset + rows * cols <= count)
        return WeightMatrix(rows: rows, cols: cols, type: .f32, base: UnsafeRawPointer(pointer + offset), owner: self)
    }
}
