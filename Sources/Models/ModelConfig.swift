import Foundation
import Kernels

/// The keys of a Hugging Face `config.json` that the MoE decoders read, across the spellings real checkpoints
/// use (`num_experts` / `num_local_experts`, top-level `rope_theta` / `rope_parameters.rope_theta`,
/// `torch_dtype` / `dtype`, `head_dim` absent or null).
public struct ModelConfig: Codable, Sendable, Equatable {
    public var architectures: [String]?
    public var modelType: String
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int?
    public var headDim: Int?
    public var rmsNormEps: Double
    public var ropeTheta: Double?
    public var ropeParameters: RopeParameters?
    public var ropeScaling: RopeParameters?
    public var maxPositionEmbeddings: Int?
    public var tieWordEmbeddings: Bool?
    public var hiddenAct: String?
    public var numLocalExperts: Int?
    public var numExperts: Int?
    public var numExpertsPerTok: Int?
    public var normTopkProb: Bool?
    public var moeIntermediateSize: Int?
    public var sharedExpertIntermediateSize: Int?
    public var decoderSparseStep: Int?
    public var mlpOnlyLayers: [Int]?
    public var qkvBias: Bool?
    public var attentionBias: Bool?
    public var clipQKV: Double?
    public var slidingWindow: Int?
    public var useSlidingWindow: Bool?
    public var maxWindowLayers: Int?
    public var torchDtype: String?
    public var dtype: String?
    public var bosTokenId: Int?
    public var eosTokenId: TokenIds?
    public var quantizationConfig: Quantization?

    /// `quantization_config`: what a quantized checkpoint declares (only `quant_method: fp8` loads).
    public struct Quantization: Codable, Sendable, Equatable {
        public var quantMethod: String?
        public var fmt: String?
        public var weightBlockSize: [Int]?
        public var activationScheme: String?

        enum CodingKeys: String, CodingKey {
            case quantMethod = "quant_method"
            case fmt
            case weightBlockSize = "weight_block_size"
            case activationScheme = "activation_scheme"
        }
    }

    /// `rope_parameters` (transformers ≥ 4.56) or `rope_scaling` (older, its type keyed `type` or `rope_type`).
    public struct RopeParameters: Codable, Sendable, Equatable {
        public var ropeTheta: Double?
        public var ropeType: String?
        public var type: String?
        public var factor: Double?
        public var originalMaxPositionEmbeddings: Int?
        public var betaFast: Double?
        public var betaSlow: Double?
        public var attentionFactor: Double?
        public var mscale: Double?
        public var mscaleAllDim: Double?
        public var truncate: Bool?
        public var partialRotaryFactor: Double?

        public init(ropeTheta: Double? = nil, ropeType: String? = nil, factor: Double? = nil,
                    originalMaxPositionEmbeddings: Int? = nil) {
            self.ropeTheta = ropeTheta
            self.ropeType = ropeType
            self.factor = factor
            self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
        }

        /// The type under either key; nil when neither is given.
        public var resolvedType: String? { ropeType ?? type }

        enum CodingKeys: String, CodingKey {
            case ropeTheta = "rope_theta"
            case ropeType = "rope_type"
            case type
            case factor
            case originalMaxPositionEmbeddings = "original_max_position_embeddings"
            case betaFast = "beta_fast"
            case betaSlow = "beta_slow"
            case attentionFactor = "attention_factor"
            case mscale
            case mscaleAllDim = "mscale_all_dim"
            case truncate
            case partialRotaryFactor = "partial_rotary_factor"
        }
    }

    /// `eos_token_id` is an integer or a list of them.
    public struct TokenIds: Codable, Sendable, Equatable {
        public var ids: [Int]
        public init(_ ids: [Int]) { self.ids = ids }
        public init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let one = try? c.decode(Int.self) { ids = [one] } else { ids = try c.decode([Int].self) }
        }
        public func encode(to encoder: Encoder) throws {
            var c = encoder.singleValueContainer()
            if ids.count == 1 { try c.encode(ids[0]) } else { try c.encode(ids) }
        }
    }

    enum CodingKeys: String, CodingKey {
        case architectures
        case modelType = "model_type"
        case vocabSize = "vocab_size"
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads"
        case headDim = "head_dim"
        case rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case ropeParameters = "rope_parameters"
        case ropeScaling = "rope_scaling"
        case maxPositionEmbeddings = "max_position_embeddings"
        case tieWordEmbeddings = "tie_word_embeddings"
        case hiddenAct = "hidden_act"
        case numLocalExperts = "num_local_experts"
        case numExperts = "num_experts"
        case numExpertsPerTok = "num_experts_per_tok"
        case normTopkProb = "norm_topk_prob"
        case moeIntermediateSize = "moe_intermediate_size"
        case sharedExpertIntermediateSize = "shared_expert_intermediate_size"
        case decoderSparseStep = "decoder_sparse_step"
        case mlpOnlyLayers = "mlp_only_layers"
        case qkvBias = "qkv_bias"
        case attentionBias = "attention_bias"
        case clipQKV = "clip_qkv"
        case slidingWindow = "sliding_window"
        case useSlidingWindow = "use_sliding_window"
        case maxWindowLayers = "max_window_layers"
        case torchDtype = "torch_dtype"
        case dtype
        case bosTokenId = "bos_token_id"
        case eosTokenId = "eos_token_id"
        case quantizationConfig = "quantization_config"
    }

    /// Experts per MoE layer, under whichever key the checkpoint uses.
    public var expertCount: Int? { numLocalExperts ?? numExperts }

    /// RoPE base frequency: top-level `rope_theta`, else `rope_parameters.rope_theta`, else 10000.
    public var resolvedRopeTheta: Double { ropeTheta ?? ropeParameters?.ropeTheta ?? ropeScaling?.ropeTheta ?? 10000 }

    /// The block size (rows, columns) of an FP8 checkpoint's weight scales, or nil for a checkpoint that declares no
    /// quantization; any other quantization is refused in one line.
    ///
    /// FP8 as Hugging Face stores it (Qwen3-FP8, DeepSeek-V3): `quant_method: fp8`, e4m3 codes, one scale per
    /// block of `weight_block_size` (default 128 x 128). Weights are computed in f32 from the codes (W8A16):
    /// activations are not quantized, whatever `activation_scheme` says.
    public func fp8BlockSize(path: String) throws -> (rows: Int, cols: Int)? {
        guard let q = quantizationConfig else { return nil }
        func refuse(_ reason: String) -> ModelError { .unsupportedConfig(path: path, reason: "quantization_config: " + reason) }
        guard let method = q.quantMethod else { throw refuse("no quant_method") }
        guard method == "fp8" else {
            throw refuse("quant_method '\(method)' is not supported (only 'fp8': e4m3 weights with block scales)")
        }
        if let fmt = q.fmt, fmt != "e4m3" { throw refuse("fmt '\(fmt)' is not supported (only 'e4m3')") }
        let size = q.weightBlockSize ?? [128, 128]
        guard size.count == 2, size[0] > 0, size[1] > 0, size[1] % FP8.block == 0 else {
            throw refuse("weight_block_size \(size) is not supported (two sizes, the second a multiple of \(FP8.block))")
        }
        return (size[0], size[1])
    }

    /// The checkpoint's declared dtype (`dtype`, else `torch_dtype`).
    public var declaredDType: String? { dtype ?? torchDtype }

    /// Reads and decodes `config.json`, turning decoding failures into one line naming the key.
    public static func load(path: String) throws -> ModelConfig {
        guard FileManager.default.fileExists(atPath: path) else { throw ModelError.missingFile(path: path) }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelError.unreadableFile(path: path, reason: "cannot read")
        }
        return try decode(data, path: path)
    }

    /// Decodes config JSON; `path` is used in messages only.
    public static func decode(_ data: Data, path: String) throws -> ModelConfig {
        do {
            return try JSONDecoder().decode(ModelConfig.self, from: data)
        } catch let error as DecodingError {
            throw ModelError.malformedConfig(path: path, reason: Self.describe(error))
        } catch {
            throw ModelError.malformedConfig(path: path, reason: "not valid JSON")
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func keyPath(_ path: [CodingKey]) -> String { path.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".") }
        switch error {
        case .keyNotFound(let key, let ctx):
            return "missing key '\(keyPath(ctx.codingPath + [key]))'"
        case .typeMismatch(let type, let ctx):
            return "key '\(keyPath(ctx.codingPath))' is not \(Self.typeName(type))"
        case .valueNotFound(let type, let ctx):
            return "key '\(keyPath(ctx.codingPath))' is null, expected \(Self.typeName(type))"
        case .dataCorrupted(let ctx):
            return ctx.codingPath.isEmpty ? "not valid JSON" : "key '\(keyPath(ctx.codingPath))' is malformed"
        @unknown default:
            return "cannot decode"
        }
    }

    static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type: return "an integer"
        case is Double.Type: return "a number"
        case is String.Type: return "a string"
        case is Bool.Type: return "a boolean"
        default: return "of the expected type"
        }
    }
}
