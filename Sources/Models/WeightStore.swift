import Foundation
import Kernels

/// Named tensors of one model, from a checkpoint folder (one file or shards) or from memory, with typed,
/// shape-checked lookups that name the tensor and file when something is wrong.
public final class WeightStore: @unchecked Sendable {
    // @unchecked: immutable after init except `used`, which only the loading thread touches.
    let tensors: [String: TensorRef]
    /// What lookups search, for messages ("model.safetensors", "3 shards of DIR").
    public let origin: String
    /// What loading does to the matrices (nil: they stay in their stored type).
    public let conversion: WeightConversion?
    /// Bytes the looked-up tensors occupy in memory (after any conversion).
    public private(set) var residentBytes = 0
    /// The scale block size (rows, columns) of an FP8 checkpoint (`ModelConfig.fp8BlockSize`); nil refuses F8 tensors.
    public var fp8Blocks: (rows: Int, cols: Int)?

    public init(tensors: [String: TensorRef], origin: String, conversion: WeightConversion? = nil) {
        self.tensors = tensors
        self.origin = origin
        self.conversion = conversion
    }

    /// Opens the safetensors weights of a Hugging Face folder: `model.safetensors.index.json` with its shards,
    /// else `model.safetensors`, else every `*.safetensors` file there.
    public static func open(directory: String, conversion: WeightConversion? = nil) throws -> WeightStore {
        let fm = FileManager.default
        let indexPath = (directory as NSString).appendingPathComponent("model.safetensors.index.json")
        var files: [String] = []
        if fm.fileExists(atPath: indexPath) {
            files = try shardFiles(index: indexPath, directory: directory)
        } else {
            let single = (directory as NSString).appendingPathComponent("model.safetensors")
            if fm.fileExists(atPath: single) {
                files = [single]
            } else {
                let names = (try? fm.contentsOfDirectory(atPath: directory)) ?? []
                files = names.filter { $0.hasSuffix(".safetensors") }.sorted()
                    .map { (directory as NSString).appendingPathComponent($0) }
            }
        }
        guard !files.isEmpty else { throw ModelError.noWeights(directory: directory) }
        var all: [String: TensorRef] = [:]
        for f in files {
            let file = try SafeTensorsFile(path: f)
            all.merge(file.tensors) { first, _ in first }
        }
        let origin = files.count == 1 ? files[0] : "\(files.count) shards in \(directory)"
        return WeightStore(tensors: all, origin: origin, conversion: conversion)
    }

    static func shardFiles(index: String, directory: String) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: index) else {
            throw ModelError.unreadableFile(path: index, reason: "cannot read")
        }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let map = json["weight_map"] as? [String: Any] else {
            throw ModelError.malformedIndex(path: index, reason: "not a JSON object with a 'weight_map'")
        }
        var shards = Set<String>()
        for (tensor, value) in map {
            guard let shard = value as? String else {
                throw ModelError.malformedIndex(path: index, reason: "weight_map entry '\(tensor)' is not a file name")
            }
            shards.insert(shard)
        }
        return try shards.sorted().map { shard in
            let path = (directory as NSString).appendingPathComponent(shard)
            guard FileManager.default.fileExists(atPath: path) else {
                throw ModelError.missingShard(index: index, shard: shard)
            }
            return path
        }
    }

    /// Whether a tensor of this name exists.
    public func contains(_ name: String) -> Bool { tensors[name] != nil }

    /// The first of `names` that exists, or nil.
    public func firstPresent(_ names: [String]) -> String? { names.first { tensors[$0] != nil } }

    /// All tensor names, sorted.
    public var names: [String] { tensors.keys.sorted() }

    /// The tensor `name` with exactly `shape`, in a dtype the kernels read (`fp8`: F8_E4M3 too, which the caller
    /// packs with its scales).
    public func tensor(_ name: String, shape: [Int], fp8: Bool = false) throws -> TensorRef {
        guard let t = tensors[name] else { throw ModelError.missingTensor(name: name, searched: origin) }
        guard t.shape == shape else {
            throw ModelError.wrongShape(name: name, file: t.file, expected: shape, found: t.shape)
        }
        guard t.dtype.elementType != nil || (fp8 && t.dtype == .F8_E4M3) else {
            throw ModelError.unsupportedDType(name: name, file: t.file, dtype: t.dtype.rawValue)
        }
        return t
    }

    /// A `[rows, cols]` weight matrix, kept in its stored type or converted as `conversion` says: widened to f32,
    /// or (`linear`: a linear layer's weight, as opposed to an embedding or a router) quantized to q8 or fp8.
    /// An F8_E4M3 tensor is packed with its block scales (`NAME_scale_inv`) into `FP8` rows; as anything but a
    /// linear layer (an embedding, a router) it is widened to f32.
    public func matrix(_ name: String, rows: Int, cols: Int, linear: Bool = false) throws -> WeightMatrix {
        let t = try tensor(name, shape: [rows, cols], fp8: true)
        if t.dtype == .F8_E4M3 {
            let scales = try fp8Scales(of: t, count: nil, rows: rows, cols: cols)
            return account(convert(try packFP8(t, offset: 0, rows: rows, cols: cols, scales: scales.values), linear: linear))
        }
        return account(matrix(t, rows: rows, cols: cols, linear: linear))
    }

    /// The `[count, rows, cols]` tensor `name` as `count` matrices (fused expert weights: linear layers), those
    /// that `keep` accepts converted as `matrix` does; nil for the others.
    public func matrices(_ name: String, count: Int, rows: Int, cols: Int, keep: (Int) -> Bool = { _ in true }) throws -> [WeightMatrix?] {
        let t = try tensor(name, shape: [count, rows, cols], fp8: true)
        if t.dtype == .F8_E4M3 {
            let scales = try fp8Scales(of: t, count: count, rows: rows, cols: cols)
            return try (0..<count).map { i in
                guard keep(i) else { return nil }
                let own = Array(scales.values[(i * scales.perMatrix)..<((i + 1) * scales.perMatrix)])
                return account(convert(try packFP8(t, offset: i * rows * cols, rows: rows, cols: cols, scales: own), linear: true))
            }
        }
        let stored = WeightMatrix(rows: count * rows, cols: cols, type: t.dtype.elementType!, base: t.data, owner: t.owner)
        return (0..<count).map { i in
            guard keep(i) else { return nil }
            return account(convert(stored.rows(i * rows..<(i + 1) * rows), linear: true))
        }
    }

    /// A vector of `count` values widened to f32 (norm weights, biases).
    public func vector(_ name: String, count: Int) throws -> [Float] {
        let t = try tensor(name, shape: [count])
        residentBytes += count * 4
        return matrix(t, rows: 1, cols: count).toFloatArray()
    }

    private func matrix(_ t: TensorRef, rows: Int, cols: Int, linear: Bool = false) -> WeightMatrix {
        convert(WeightMatrix(rows: rows, cols: cols, type: t.dtype.elementType!, base: t.data, owner: t.owner), linear: linear)
    }

    private func convert(_ m: WeightMatrix, linear: Bool) -> WeightMatrix {
        let rows = m.rows, cols = m.cols
        switch conversion {
        case .f32 where m.type != .f32, _ where m.type.isBlocked && !linear:
            let storage = FloatStorage(count: rows * cols)
            m.widen(rows: 0..<rows, into: storage.pointer)
            return storage.matrix(rows: rows, cols: cols)
        case .q8 where linear && m.type != .q8:
            return m.quantized(Q8.self)
        case .fp8 where linear && m.type != .fp8:
            return m.quantized(FP8.self)
        default:
            return m
        }
    }

    /// The block scales of the F8_E4M3 tensor `t` (`count` matrices of `[rows, cols]`, or one when nil), widened to
    /// f32, `perMatrix` of them a matrix; every way they can be missing or wrong is one line naming the tensor.
    private func fp8Scales(of t: TensorRef, count: Int?, rows: Int, cols: Int) throws -> (values: [Float], perMatrix: Int) {
        guard let blocks = fp8Blocks else {
            throw ModelError.badFP8(name: t.name, file: t.file, reason: "needs a quantization_config with quant_method 'fp8' in config.json")
        }
        let name = t.name + "_scale_inv"
        let grid = [(rows + blocks.rows - 1) / blocks.rows, (cols + blocks.cols - 1) / blocks.cols]
        let shape = (count.map { [$0] } ?? []) + grid
        guard let s = tensors[name] else {
            throw ModelError.badFP8(name: t.name, file: t.file, reason: "has no scale tensor '\(name)'")
        }
        guard s.shape == shape else {
            throw ModelError.badFP8(name: t.name, file: t.file,
                                    reason: "has scale tensor '\(name)' of shape \(s.shape), expected \(shape) (blocks of \(blocks.rows) x \(blocks.cols))")
        }
        guard let type = s.dtype.elementType else {
            throw ModelError.badFP8(name: t.name, file: t.file, reason: "has scale tensor '\(name)' of dtype \(s.dtype.rawValue); supported: F32, BF16, F16")
        }
        let values = WeightMatrix(rows: 1, cols: s.elementCount, type: type, base: s.data, owner: s.owner).toFloatArray()
        if let bad = values.firstIndex(where: { !$0.isFinite || $0 < 0 }) {
            throw ModelError.badFP8(name: t.name, file: t.file, reason: "has scale \(values[bad]) at element \(bad) of '\(name)'")
        }
        return (values, grid[0] * grid[1])
    }

    /// Matrix `[rows, cols]` at element `offset` of the F8_E4M3 tensor `t`, packed with `scales` (its grid, row-major).
    private func packFP8(_ t: TensorRef, offset: Int, rows: Int, cols: Int, scales: [Float]) throws -> WeightMatrix {
        let blocks = fp8Blocks!
        let gridCols = (cols + blocks.cols - 1) / blocks.cols
        let storage = ByteStorage(byteCount: rows * FP8.rowBytes(cols))
        let nan = scales.withUnsafeBufferPointer { s in
            FP8.pack(codes: t.data + offset, rows: rows, cols: cols, blockRows: blocks.rows, blockCols: blocks.cols,
                     scale: { s[$0 * gridCols + $1] }, into: storage.pointer)
        }
        if let i = nan {
            throw ModelError.badFP8(name: t.name, file: t.file, reason: "holds NaN at element \(offset + i)")
        }
        return WeightMatrix(rows: rows, cols: cols, type: .fp8, base: UnsafeRawPointer(storage.pointer), owner: storage)
    }

    private func account(_ m: WeightMatrix) -> WeightMatrix {
        residentBytes += m.byteCount
        return m
    }

    /// Bytes the named tensors would occupy in memory (stored type, f32 when widening; when quantizing, the stored
    /// bytes: the checkpoint's pages are read while the blocks are made).
    public func bytes(of names: [String]) -> Int {
        names.reduce(0) { sum, n in
            guard let t = tensors[n] else { return sum }
            return sum + (conversion == .f32 ? t.elementCount * 4 : t.byteCount)
        }
    }
}
