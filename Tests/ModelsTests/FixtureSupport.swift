import Foundation
import Kernels
@testable import Models

/// Tiny checkpoints with their expected outputs: copies of `../shared/fixtures` (computed by transformers) and
/// `tiny-qwen3moe` (computed by the independent NumPy reference in `Scripts/make_qwen3_fixture.py`).
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures")
    /// The checkpoints in plain float types (f32), 64 wide.
    static let plain = ["tiny-mixtral", "tiny-qwen2moe", "tiny-olmoe", "tiny-qwen3moe", "tiny-mixtral-rope-linear", "tiny-qwen2moe-yarn"]
    /// Every checkpoint: the plain ones and an FP8 one (e4m3 linear layers with 128 x 128 block scales, bf16
    /// elsewhere, 160 wide; `Scripts/make_fp8_fixture.py`).
    static let names = plain + ["tiny-qwen3moe-fp8"]

    static func path(_ name: String) -> String { root.appendingPathComponent(name).path }

    /// `expected.safetensors` of a fixture.
    static func expected(_ name: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: root.appendingPathComponent(name).appendingPathComponent("expected.safetensors").path)
    }
}

extension SafeTensorsFile {
    func floats(_ name: String) -> [Float] {
        let t = tensors[name]!
        precondition(t.dtype == .F32)
        return Array(UnsafeBufferPointer(start: t.data.assumingMemoryBound(to: Float.self), count: t.elementCount))
    }

    func ints(_ name: String) -> [Int] {
        let t = tensors[name]!
        precondition(t.dtype == .I64)
        return UnsafeBufferPointer(start: t.data.assumingMemoryBound(to: Int64.self), count: t.elementCount).map { Int($0) }
    }
}

/// Largest absolute difference of two equally long arrays.
func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "lengths \(a.count) and \(b.count)")
    return zip(a, b).map { abs($0 - $1) }.max() ?? 0
}

/// A temporary folder removed when the value goes away.
final class TemporaryDirectory {
    let path: String
    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("moe-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }
}

/// Runs one forward pass over `ids` and returns logits and the routing per MoE layer.
func runForward(_ model: MoEDecoder, _ ids: [Int]) throws -> (logits: [Float], ids: [Int], weights: [Float]) {
    var topIds: [Int] = [], topWeights: [Float] = []
    model.routingObserver = { _, r in
        for i in 0..<(r.tokens * r.topK) {
            topIds.append(Int(r.ids[i]))
            topWeights.append(r.weights[i])
        }
    }
    defer { model.routingObserver = nil }
    let logits = try model.forward(.init(tokens: ids, cache: model.makeCache()), logits: .all)
    return (logits, topIds, topWeights)
}

/// Copies a fixture folder's tensors into new safetensors files, transforming names, dtypes or layout.
func rewriteCheckpoint(from source: String, to dir: String, shards: Int = 1, dtype: SafeTensorsDType? = nil,
                       transform: ([String: TensorRef]) -> [(String, TensorRef)] = { $0.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } },
                       config: ((inout [String: Any]) -> Void)? = nil) throws {
    let store = try WeightStore.open(directory: source)
    let tensors = transform(store.tensors)
    let perShard = (tensors.count + shards - 1) / shards
    var weightMap: [String: String] = [:]
    for s in 0..<shards {
        let part = tensors[min(s * perShard, tensors.count)..<min((s + 1) * perShard, tensors.count)]
        let file = shards == 1 ? "model.safetensors" : String(format: "model-%05d-of-%05d.safetensors", s + 1, shards)
        let entries = part.map { name, t in
            let outType = dtype ?? t.dtype
            return SafeTensorsWriter.Entry(name: name, dtype: outType, shape: t.shape) { raw in
                let n = t.elementCount
                guard outType != t.dtype else {  // copied as stored; conversions start from f32
                    raw.copyMemory(from: UnsafeRawBufferPointer(start: t.data, count: t.byteCount))
                    return
                }
                let values = UnsafeBufferPointer(start: t.data.assumingMemoryBound(to: Float.self), count: n)
                switch outType {
                case .F32: raw.copyMemory(from: UnsafeRawBufferPointer(values))
                case .BF16: for i in 0..<n { raw.storeBytes(of: Widen.toBF16(values[i]), toByteOffset: 2 * i, as: UInt16.self) }
                case .F16: for i in 0..<n { raw.storeBytes(of: Float16(values[i]).bitPattern, toByteOffset: 2 * i, as: UInt16.self) }
                default: raw.copyMemory(from: UnsafeRawBufferPointer(start: t.data, count: t.byteCount))
                }
            }
        }
        for (name, _) in part { weightMap[name] = file }
        try SafeTensorsWriter.write(entries, to: (dir as NSString).appendingPathComponent(file))
    }
    if shards > 1 {
        let index = try JSONSerialization.data(withJSONObject: ["metadata": [:] as [String: Any], "weight_map": weightMap])
        try index.write(to: URL(fileURLWithPath: dir).appendingPathComponent("model.safetensors.index.json"))
    }
    var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: source).appendingPathComponent("config.json"))) as! [String: Any]
    config?(&cfg)
    try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: dir).appendingPathComponent("config.json"))
}
