import Foundation
import Kernels

/// Data types a safetensors header may name, with their sizes.
public enum SafeTensorsDType: String, Sendable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .F64, .I64: return 8
        case .F32, .I32: return 4
        case .F16, .BF16, .I16: return 2
        case .I8, .U8, .BOOL, .F8_E4M3, .F8_E5M2: return 1
        }
    }

    /// The in-memory weight type this dtype maps to, if the kernels read it directly.
    public var elementType: ElementType? {
        switch self {
        case .F32: return .f32
        case .BF16: return .bf16
        case .F16: return .f16
        default: return nil
        }
    }
}

/// One tensor inside a mapped safetensors file.
public struct TensorRef: @unchecked Sendable {
    // @unchecked: points into a read-only mapping that `owner` keeps alive.
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    public let data: UnsafeRawPointer
    public let byteCount: Int
    /// Where the tensor came from, for messages.
    public let file: String
    public let owner: AnyObject

    public var elementCount: Int { shape.reduce(1, *) }
}

/// A read-only memory map of a whole file.
final class MappedFile: @unchecked Sendable {
    // @unchecked: the mapping is PROT_READ and lives until deinit.
    let base: UnsafeRawPointer
    let size: Int

    init(path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            if errno == ENOENT { throw ModelError.missingFile(path: path) }
            throw ModelError.unreadableFile(path: path, reason: String(cString: strerror(errno)))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw ModelError.unreadableFile(path: path, reason: String(cString: strerror(errno)))
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw ModelError.unreadableFile(path: path, reason: "not a regular file")
        }
        size = Int(st.st_size)
        if size == 0 {
            base = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 64))
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw ModelError.unreadableFile(path: path, reason: String(cString: strerror(errno)))
        }
        base = UnsafeRawPointer(p)
    }

    deinit {
        if size == 0 { UnsafeMutableRawPointer(mutating: base).deallocate() } else {
            munmap(UnsafeMutableRawPointer(mutating: base), size)
        }
    }
}

/// A safetensors file, memory-mapped: opening it reads only the header; tensor bytes are paged in on use.
///
/// Format: 8-byte little-endian header length N, N bytes of JSON `{name: {dtype, shape, data_offsets}}`,
/// then the tensor bytes; offsets are relative to the end of the header.
public final class SafeTensorsFile: @unchecked Sendable {
    // @unchecked: immutable after init.
    public let path: String
    public let tensors: [String: TensorRef]
    public let metadata: [String: String]
    let mapping: MappedFile

    public init(path: String) throws {
        self.path = path
        mapping = try MappedFile(path: path)
        let size = mapping.size
        func bad(_ reason: String) -> ModelError { .malformedSafeTensors(path: path, reason: reason) }
        guard size >= 8 else { throw bad("file is \(size) bytes, shorter than the 8-byte header length (truncated?)") }
        let headerLength = mapping.base.loadUnaligned(as: UInt64.self).littleEndian
        guard headerLength <= UInt64(size - 8) else {
            throw bad("header length \(headerLength) runs past the end of the file (\(size) bytes)")
        }
        let n = Int(headerLength)
        let headerData = Data(bytes: mapping.base + 8, count: n)
        guard let json = try? JSONSerialization.jsonObject(with: headerData), let header = json as? [String: Any] else {
            throw bad("header is not a JSON object")
        }
        let dataStart = 8 + n
        let dataSize = size - dataStart
        var tensors: [String: TensorRef] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in header {
            if name == "__metadata__" {
                if let m = value as? [String: String] { metadata = m }
                continue
            }
            guard let entry = value as? [String: Any] else { throw bad("entry '\(name)' is not an object") }
            guard let dtypeName = entry["dtype"] as? String else { throw bad("tensor '\(name)' has no dtype") }
            guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
                throw bad("tensor '\(name)' has unknown dtype '\(dtypeName)'")
            }
            guard let shapeAny = entry["shape"] as? [Any],
                  let shape = Self.integers(shapeAny), shape.allSatisfy({ $0 >= 0 }) else {
                throw bad("tensor '\(name)' has no valid shape")
            }
            guard let offsetsAny = entry["data_offsets"] as? [Any], let offsets = Self.integers(offsetsAny),
                  offsets.count == 2, offsets[0] >= 0, offsets[0] <= offsets[1] else {
                throw bad("tensor '\(name)' has no valid data_offsets")
            }
            guard offsets[1] <= dataSize else {
                throw bad("tensor '\(name)' ends at byte \(offsets[1]) of data, but the file holds only \(dataSize) (truncated?)")
            }
            let (count, overflow) = shape.reduce((1, false)) { acc, d in
                let (p, o) = acc.0.multipliedReportingOverflow(by: d)
                return (p, acc.1 || o)
            }
            guard !overflow, count * dtype.byteSize == offsets[1] - offsets[0] else {
                throw bad("tensor '\(name)' has \(offsets[1] - offsets[0]) bytes, but shape \(shape) of \(dtypeName) needs \(overflow ? -1 : count * dtype.byteSize)")
            }
            tensors[name] = TensorRef(name: name, dtype: dtype, shape: shape, data: mapping.base + dataStart + offsets[0],
                                      byteCount: offsets[1] - offsets[0], file: path, owner: mapping)
        }
        self.tensors = tensors
        self.metadata = metadata
    }

    static func integers(_ values: [Any]) -> [Int]? {
        var out: [Int] = []
        for v in values {
            guard let n = v as? Int else { return nil }
            out.append(n)
        }
        return out
    }
}

/// Writes safetensors files, tensor by tensor, without holding them all in memory.
public struct SafeTensorsWriter {
    /// A tensor to be written: name, dtype, shape, and a closure that writes its bytes (exactly
    /// `count × dtype size`) into the given buffer.
    public struct Entry {
        public let name: String
        public let dtype: SafeTensorsDType
        public let shape: [Int]
        public let fill: (UnsafeMutableRawBufferPointer) -> Void

        public init(name: String, dtype: SafeTensorsDType, shape: [Int], fill: @escaping (UnsafeMutableRawBufferPointer) -> Void) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.fill = fill
        }

        public var byteCount: Int { shape.reduce(1, *) * dtype.byteSize }
    }

    /// Writes `entries` to `path` in the given order, with `metadata` in the header.
    public static func write(_ entries: [Entry], to path: String, metadata: [String: String] = ["format": "pt"]) throws {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for e in entries {
            header[e.name] = ["dtype": e.dtype.rawValue, "shape": e.shape, "data_offsets": [offset, offset + e.byteCount]]
            offset += e.byteCount
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (8 + json.count) % 8 != 0 { json.append(0x20) }  // pad so tensor data starts 8-byte aligned
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let handle = FileHandle(forWritingAtPath: path) else {
            throw ModelError.unwritableFile(path: path, reason: String(cString: strerror(errno)))
        }
        defer { try? handle.close() }
        var length = UInt64(json.count).littleEndian
        try handle.write(contentsOf: Data(bytes: &length, count: 8))
        try handle.write(contentsOf: json)
        for e in entries {
            var buffer = Data(count: e.byteCount)
            buffer.withUnsafeMutableBytes { e.fill($0) }
            try handle.write(contentsOf: buffer)
        }
    }
}
