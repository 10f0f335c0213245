/// Mixtral (`MixtralForCausalLM`): GQA, no biases, softmax router with top-k renormalised, SiLU-GLU experts
/// named `block_sparse_moe.experts.E.w1|w3|w2`, optional sliding window.
public enum Mixtral: Architecture {
    public static let modelType = "mixtral"

    public static func spec(_ config: ModelConfig, path: String) throws -> DecoderSpec {
        var spec = try DecoderSpec.common(config, path: path, names: .mixtral)
        spec.normTopK = true
        spec.expertIntermediate = config.intermediateSize
        spec.slidingWindow = Array(repeating: config.slidingWindow, count: spec.layers)
        return spec
    }
}
