/// A weight format that cuts each row into blocks of `block` columns, each block one scale and `block` quants
/// (`Q8`, `FP8`). Rows are self-contained runs of `blocks(cols) × blockBytes` bytes, so a range of rows is a
/// view, and a short last block is padded with zero quants.
///
/// The weight at column j of a block is `scale(block) · widen8(...)[j]`; the kernels (`SmallBatchGEMM.blocked`)
/// sum quants times x over a block and apply its scale once.
public protocol BlockQuantized {
    /// Columns per block: a multiple of 16 (the kernels sum a block in two chains of eights).
    static var block: Int { get }
    /// Bytes before a block's quants (its scale).
    static var scaleBytes: Int { get }
    /// Bytes per block: the scale, then one byte per quant.
    static var blockBytes: Int { get }
    /// The scale of the block at `block`.
    static func scale(_ block: UnsafeRawPointer) -> Float
    /// Eight quants at `p` as floats (unscaled).
    static func widen8(_ p: UnsafeRawPointer) -> SIMD8<Float>
    /// One quant at `p` as a float (unscaled).
    static func widen1(_ p: UnsafeRawPointer) -> Float
    /// Quantizes one row of `cols` f32 values into `dst` (`rowBytes(cols)` bytes).
    static func quantize(row src: UnsafePointer<Float>, cols: Int, into dst: UnsafeMutableRawPointer)
    /// The element type of matrices in this format.
    static var elementType: ElementType { get }
}

extension BlockQuantized {
    /// Blocks in a row of `cols` columns.
    @inlinable public static func blocks(_ cols: Int) -> Int { (cols + block - 1) / block }

    /// Bytes of one row of `cols` columns.
    @inlinable public static func rowBytes(_ cols: Int) -> Int { blocks(cols) * blockBytes }

    /// The scale of block `b` of the row at `row`.
    @inlinable @inline(__always)
    public static func scale(_ row: UnsafeRawPointer, _ b: Int) -> Float { scale(row + b * blockBytes) }

    /// The quants of block `b` of the row at `row`.
    @inlinable @inline(__always)
    public static func quants(_ row: UnsafeRawPointer, _ b: Int) -> UnsafeRawPointer { row + b * blockBytes + scaleBytes }

    /// Dequantizes one row of `cols` values at `src` into `dst`: each weight is one f32 product, its quant times
    /// its block's scale.
    @inlinable
    public static func dequantize(row src: UnsafeRawPointer, cols: Int, into dst: UnsafeMutablePointer<Float>) {
        for b in 0..<blocks(cols) {
            let d = SIMD8<Float>(repeating: scale(src, b)), q = quants(src, b)
            let lo = b * block, n = min(block, cols - lo)
            var i = 0
            while i + 8 <= n {
                UnsafeMutableRawPointer(dst + lo + i).storeBytes(of: widen8(q + i) * d, as: SIMD8<Float>.self)
                i += 8
            }
            while i < n { dst[lo + i] = widen1(q + i) * d[0]; i += 1 }
        }
    }
}

extension WeightMatrix {
    /// The matrix quantized to `format`, in memory of its own (the source may be of any type); rows are
    /// quantized in parallel over the kernel threads.
    public func quantized<F: BlockQuantized>(_ format: F.Type) -> WeightMatrix {
        let rowBytes = F.rowBytes(cols)
        let storage = ByteStorage(byteCount: rows * rowBytes)
        let parts = Parallel.ranges(rows, parts: rows * cols < 1 << 16 ? 1 : Parallel.workers, align: 1)
        nonisolated(unsafe) let out = storage.pointer
        let source = self
        Parallel.run(parts.count) { p in
            let row = ThreadScratch.buffer(.weightTile, count: source.cols)
            for r in parts[p] {
                source.widen(rows: r..<(r + 1), into: row)
                F.quantize(row: row, cols: source.cols, into: out + r * rowBytes)
            }
        }
        return WeightMatrix(rows: rows, cols: cols, type: F.elementType, base: UnsafeRawPointer(storage.pointer), owner: storage)
    }
}
