import Kernels

/// Packs fixed-layout records of Int32 and Float into bytes for the raw-buffer collectives.
struct ByteWriter {
    private(set) var bytes: [UInt8] = []

    mutating func int(_ v: Int) { append(Int32(truncatingIfNeeded: v)) }
    mutating func float(_ v: Float) { append(v) }

    mutating func floats(_ p: UnsafePointer<Float>, count: Int) {
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: p, count: count * 4))
    }

    mutating func bytes(_ p: UnsafeRawPointer, count: Int) {
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: p, count: count))
    }

    /// `count` floats rounded to bf16 (nearest, ties to even).
    mutating func bf16s(_ p: UnsafePointer<Float>, count: Int) {
        for i in 0..<count { append(Widen.toBF16(p[i])) }
    }

    private mutating func append<T>(_ v: T) {
        withUnsafeBytes(of: v) { bytes.append(contentsOf: $0) }
    }
}

/// Reads what `ByteWriter` wrote, in the same order.
struct ByteReader {
    let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var atEnd: Bool { offset >= bytes.count }

    mutating func int() -> Int { Int(read(Int32.self)) }

    /// Passes over `n` floats, or `n` bytes.
    mutating func skip(floats n: Int) { offset += 4 * n }
    mutating func skip(bytes n: Int) { offset += n }

    /// `count` raw bytes into `dst`.
    mutating func bytes(_ count: Int, into dst: UnsafeMutableRawPointer) {
        bytes.withUnsafeBytes { raw in dst.copyMemory(from: raw.baseAddress! + offset, byteCount: count) }
        offset += count
    }
    mutating func float() -> Float { read(Float.self) }

    mutating func floats(count: Int, into dst: UnsafeMutablePointer<Float>) {
        bytes.withUnsafeBytes { raw in
            UnsafeMutableRawPointer(dst).copyMemory(from: raw.baseAddress! + offset, byteCount: count * 4)
        }
        offset += count * 4
    }

    /// `count` bf16 values, widened into `dst`.
    mutating func bf16s(count: Int, into dst: UnsafeMutablePointer<Float>) {
        bytes.withUnsafeBytes { raw in
            for i in 0..<count { dst[i] = Widen.bf16(raw.loadUnaligned(fromByteOffset: offset + 2 * i, as: UInt16.self)) }
        }
        offset += count * 2
    }

    private mutating func read<T>(_: T.Type) -> T {
        let v = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
        offset += MemoryLayout<T>.size
        return v
    }
}
