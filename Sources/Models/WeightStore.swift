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

    /// The tensor `name` with exactly `shape`, in a dtype the kernels read.
    public func tensor(_ name: String, shape: [Int]) throws -> TensorRef {
        guard let t = tensors[name] else { throw ModelError.missingTensor(name: name, searched: origin) }
        guard t.shape == shape else {
            throw ModelError.wrongShape(name: name, file: t.file, expected: shape, found: t.shape)
        }
        guard t.dtype.elementType != nil else {
            throw ModelError.unsupportedDType(name: name, file: t.file, dtype: t.dtype.rawValue)
        }
        return t
    }

    /// A `[rows, cols]` weight matrix, kept in its stored type or converted as `conversion` says: widened to f32,
    /// or (`linear`: a linear layer's weight, as opposed to an embedding or a router) quantized to q8.
    public func matrix(_ name: String, rows: Int, cols: Int, linear: Bool = false) throws -> WeightMatrix {
        let t = try tensor(name, shape: [rows, cols])
        return account(matrix(t, rows: rows, cols: cols, linear: linear))
    }

    /// The `[count, rows, cols]` tensor `name` as `count` matrices (fused expert weights: linear layers), those
    /// that `keep` accepts converted as `matrix` does; nil for the others.
    public func matrices(_ name: String, count: Int, rows: Int, cols: Int, keep: (Int) -> Bool = { _ in true }) throws -> [WeightMatrix?] {
        let t = try tensor(name, shape: [count, rows, cols])
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
        case .f32 where m.type != .f32:
            let storage = FloatStorage(count: rows * cols)
            m.widen(rows: 0..<rows, into: storage.pointer)
            return storage.matrix(rows: rows, cols: cols)
        case .q8 where linear:
            return m.quantizedQ8()
        default:
            return m
        }
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
