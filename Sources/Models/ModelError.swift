import Foundation

/// Everything that can be wrong with a model folder, its files, or the input given to a model.
///
/// Each case names the file, tensor or value at fault; `description` is the one line the CLI prints.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    case missingFile(path: String)
    case unreadableFile(path: String, reason: String)
    case unwritableFile(path: String, reason: String)
    case malformedConfig(path: String, reason: String)
    case unknownModelType(path: String, modelType: String)
    case unsupportedConfig(path: String, reason: String)
    case noWeights(directory: String)
    case malformedSafeTensors(path: String, reason: String)
    case malformedIndex(path: String, reason: String)
    case missingShard(index: String, shard: String)
    case missingTensor(name: String, searched: String)
    case wrongShape(name: String, file: String, expected: [Int], found: [Int])
    case unsupportedDType(name: String, file: String, dtype: String)
    case badFP8(name: String, file: String, reason: String)
    case tooLarge(neededBytes: Int, availableBytes: Int)
    case tokenOutOfRange(id: Int, vocabulary: Int)
    case emptyPrompt
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .missingFile(let path):
            return "\(path): no such file"
        case .unreadableFile(let path, let reason):
            return "\(path): cannot read: \(reason)"
        case .unwritableFile(let path, let reason):
            return "\(path): cannot write: \(reason)"
        case .malformedConfig(let path, let reason):
            return "\(path): \(reason)"
        case .unknownModelType(let path, let type):
            return "\(path): unknown model_type '\(type)' (supported: \(ModelRegistry.supportedTypes.joined(separator: ", ")))"
        case .unsupportedConfig(let path, let reason):
            return "\(path): unsupported configuration: \(reason)"
        case .noWeights(let dir):
            return "\(dir): no model.safetensors or model.safetensors.index.json"
        case .malformedSafeTensors(let path, let reason):
            return "\(path): not a valid safetensors file: \(reason)"
        case .malformedIndex(let path, let reason):
            return "\(path): \(reason)"
        case .missingShard(let index, let shard):
            return "\(index): names shard '\(shard)', which does not exist"
        case .missingTensor(let name, let searched):
            return "tensor '\(name)' not found in \(searched)"
        case .wrongShape(let name, let file, let expected, let found):
            return "\(file): tensor '\(name)' has shape \(found), expected \(expected)"
        case .unsupportedDType(let name, let file, let dtype):
            return "\(file): tensor '\(name)' has dtype \(dtype); supported: F32, BF16, F16"
        case .badFP8(let name, let file, let reason):
            return "\(file): FP8 tensor '\(name)' \(reason)"
        case .tooLarge(let needed, let available):
            return "model needs \(Bytes.format(needed)) of memory but only \(Bytes.format(available)) is available"
        case .tokenOutOfRange(let id, let vocabulary):
            return "token id \(id) is outside the vocabulary (0..<\(vocabulary))"
        case .emptyPrompt:
            return "the prompt is empty: give at least one token id"
        case .invalidArgument(let message):
            return message
        }
    }
}

/// Human-readable byte counts.
public enum Bytes {
    /// "1.42 GB"-style text for a byte count (powers of 1000, as `df -H` and vendors' bandwidths are quoted).
    public static func format(_ bytes: Int) -> String {
        let units = ["B", "kB", "MB", "GB", "TB"]
        var v = Double(bytes), u = 0
        while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
        return u == 0 ? "\(bytes) B" : String(format: "%.2f %@", v, units[u])
    }
}
