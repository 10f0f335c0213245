import Kernels

/// The shape and variant of one MoE decoder, resolved from a `config.json` by its architecture.
///
/// Mixtral, Qwen2-MoE, OLMoE and Qwen3-MoE are one decoder family: they differ only in the fields here
/// (projection biases, q/k norms, a shared expert, router renormalisation, which layers are MoE, tensor names).
public struct DecoderSpec: Sendable, Equatable {
    /// How queries and keys are normalised before RoPE.
    public enum QKNorm: Sendable, Equatable {
        case none
        /// RMSNorm over the whole projection (`[heads * headDim]`), as OLMoE.
        case wholeProjection
        /// RMSNorm over each head (`[headDim]`), as Qwen3-MoE.
        case perHead
    }

    public var modelType: String
    public var vocabSize: Int
    public var hiddenSize: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var rmsNormEps: Float
    public var ropeTheta: Double
    /// `rope_type` linear or yarn with their parameters; `.none` for plain RoPE.
    public var ropeScaling: RoPEScaling = .none
    public var tieWordEmbeddings: Bool
    /// Experts in every MoE layer and how many each token uses.
    public var experts: Int
    public var topK: Int
    /// Hidden width of one routed expert.
    public var expertIntermediate: Int
    /// Width of the dense MLP of non-MoE layers.
    public var denseIntermediate: Int
    /// Renormalise the top-k router probabilities to sum to one.
    public var normTopK: Bool
    /// Width of a shared expert (with a sigmoid gate), as Qwen2-MoE; nil when there is none.
    public var sharedExpertIntermediate: Int?
    public var qkvBias: Bool
    public var qkNorm: QKNorm
    /// Clamp q, k, v to ±this after projection (OLMoE's `clip_qkv`).
    public var clipQKV: Float?
    /// Per layer: true for an MoE block, false for a dense MLP.
    public var moeLayers: [Bool]
    /// Per layer: the sliding attention window, or nil for full causal attention.
    public var slidingWindow: [Int?]
    /// How this family names its tensors.
    public var names: TensorNames

    public var qDim: Int { heads * headDim }
    public var kvDim: Int { kvHeads * headDim }
}

/// Tensor names of one architecture, below `model.layers.N.`.
public struct TensorNames: Sendable, Equatable {
    /// Prefixes under which the MoE block may sit, tried in order (`block_sparse_moe`, `mlp`).
    public var moeBlocks: [String]
    /// Per-expert projection names: gate (w1), up (w3), down (w2).
    public var expertGate: String
    public var expertUp: String
    public var expertDown: String

    public static let mixtral = TensorNames(moeBlocks: ["block_sparse_moe", "mlp"], expertGate: "w1", expertUp: "w3", expertDown: "w2")
    public static let gateUpDown = TensorNames(moeBlocks: ["mlp", "block_sparse_moe"], expertGate: "gate_proj", expertUp: "up_proj", expertDown: "down_proj")
}

/// An architecture maps a decoded `config.json` to the decoder it describes.
public protocol Architecture {
    /// The `model_type` this architecture reads.
    static var modelType: String { get }
    /// Resolves and validates the spec; `path` names the config in messages.
    static func spec(_ config: ModelConfig, path: String) throws -> DecoderSpec
}

/// `model_type` → architecture.
public enum ModelRegistry {
    static var architectures: [any Architecture.Type] { [Mixtral.self, Qwen2MoE.self, OLMoE.self, Qwen3MoE.self] }

    /// The `model_type` values this engine runs.
    public static var supportedTypes: [String] { architectures.map { $0.modelType } }

    /// The spec for `config`, or `unknownModelType`.
    public static func spec(_ config: ModelConfig, path: String) throws -> DecoderSpec {
        guard let arch = architectures.first(where: { $0.modelType == config.modelType }) else {
            throw ModelError.unknownModelType(path: path, modelType: config.modelType)
        }
        let spec = try arch.spec(config, path: path)
        try spec.validate(path: path)
        return spec
    }
}

extension DecoderSpec {
    /// The fields every member of the family shares, read from `config`; architectures adjust the rest.
    static func common(_ c: ModelConfig, path: String, names: TensorNames) throws -> DecoderSpec {
        func require<T>(_ value: T?, _ key: String) throws -> T {
            guard let value else { throw ModelError.malformedConfig(path: path, reason: "missing key '\(key)'") }
            return value
        }
        if let act = c.hiddenAct, act != "silu" {
            throw ModelError.unsupportedConfig(path: path, reason: "hidden_act '\(act)' (only 'silu')")
        }
        let heads = c.numAttentionHeads
        let experts = try require(c.expertCount, "num_local_experts")
        var spec = DecoderSpec(
            modelType: c.modelType, vocabSize: c.vocabSize, hiddenSize: c.hiddenSize, layers: c.numHiddenLayers,
            heads: heads, kvHeads: c.numKeyValueHeads ?? heads,
            headDim: c.headDim ?? (heads > 0 ? c.hiddenSize / heads : 0),
            rmsNormEps: Float(c.rmsNormEps), ropeTheta: c.resolvedRopeTheta,
            tieWordEmbeddings: c.tieWordEmbeddings ?? false,
            experts: experts, topK: try require(c.numExpertsPerTok, "num_experts_per_tok"),
            expertIntermediate: c.moeIntermediateSize ?? c.intermediateSize, denseIntermediate: c.intermediateSize,
            normTopK: c.normTopkProb ?? false, sharedExpertIntermediate: nil,
            qkvBias: c.attentionBias ?? false, qkNorm: .none, clipQKV: nil,
            moeLayers: Array(repeating: true, count: max(c.numHiddenLayers, 0)),
            slidingWindow: Array(repeating: nil, count: max(c.numHiddenLayers, 0)), names: names)
        spec.ropeScaling = try ropeScaling(c, path: path)
        return spec
    }

    /// RoPE scaling from `rope_parameters`, or from `rope_scaling` keyed `type` or `rope_type`, as transformers
    /// reads them: linear needs `factor`; yarn takes `factor` (else `max_position_embeddings` over the original),
    /// `original_max_position_embeddings` (else `max_position_embeddings`), `beta_fast` 32, `beta_slow` 1,
    /// `attention_factor` (else from `mscale` / `mscale_all_dim`, else YaRN's 0.1 ln(factor) + 1), `truncate` true.
    static func ropeScaling(_ c: ModelConfig, path: String) throws -> RoPEScaling {
        let given = [c.ropeParameters, c.ropeScaling].compactMap { $0 }.first { $0.resolvedType != nil }
        guard let p = given, let type = p.resolvedType, type != "default" else { return .none }
        func fail(_ reason: String) -> ModelError { .malformedConfig(path: path, reason: "rope_type '\(type)': \(reason)") }
        if let partial = p.partialRotaryFactor, partial != 1 {
            throw ModelError.unsupportedConfig(path: path, reason: "partial_rotary_factor \(partial) (only 1)")
        }
        func positive(_ v: Double?, _ key: String) throws -> Double? {
            guard let v else { return nil }
            guard v > 0, v.isFinite else { throw fail("'\(key)' must be a positive number, got \(v)") }
            return v
        }
        switch type {
        case "linear":
            guard let factor = try positive(p.factor, "factor") else { throw fail("missing 'factor'") }
            return .linear(factor: factor)
        case "yarn":
            let maxPositions = c.maxPositionEmbeddings
            let original = p.originalMaxPositionEmbeddings ?? maxPositions
            guard let original, original > 0 else {
                throw fail("needs 'original_max_position_embeddings' or 'max_position_embeddings'")
            }
            guard let factor = try positive(p.factor, "factor") ?? maxPositions.map({ Double($0) / Double(original) }) else {
                throw fail("missing 'factor'")
            }
            let betaFast = try positive(p.betaFast, "beta_fast") ?? 32, betaSlow = try positive(p.betaSlow, "beta_slow") ?? 1
            let attention = try positive(p.attentionFactor, "attention_factor")
                ?? RoPEScaling.yarnAttentionFactor(factor: factor, mscale: p.mscale, mscaleAllDim: p.mscaleAllDim)
            return .yarn(factor: factor, originalContext: original, betaFast: betaFast, betaSlow: betaSlow,
                         attentionFactor: attention, truncate: p.truncate ?? true)
        default:
            throw ModelError.unsupportedConfig(path: path, reason: "rope_type '\(type)' (supported: default, linear, yarn)")
        }
    }

    /// Checks that the numbers describe a model that can be built.
    func validate(path: String) throws {
        func fail(_ reason: String) -> ModelError { .malformedConfig(path: path, reason: reason) }
        for (key, v) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("num_hidden_layers", layers),
                         ("num_attention_heads", heads), ("num_key_value_heads", kvHeads), ("head_dim", headDim),
                         ("num_experts", experts), ("num_experts_per_tok", topK), ("moe_intermediate_size", expertIntermediate)]
        where v <= 0 {
            throw fail("'\(key)' must be positive, got \(v)")
        }
        if heads % kvHeads != 0 { throw fail("num_attention_heads \(heads) is not a multiple of num_key_value_heads \(kvHeads)") }
        if headDim % 2 != 0 { throw fail("head_dim \(headDim) must be even for rotary embeddings") }
        if topK > experts { throw fail("num_experts_per_tok \(topK) exceeds the \(experts) experts") }
        if rmsNormEps <= 0 || !rmsNormEps.isFinite { throw fail("rms_norm_eps must be positive") }
        if moeLayers.contains(false) && denseIntermediate <= 0 { throw fail("'intermediate_size' must be positive") }
        if !moeLayers.contains(true) { throw fail("no layer is an MoE layer") }
    }
}
