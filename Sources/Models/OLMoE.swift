/// OLMoE (`OlmoeForCausalLM`): RMSNorm on q and k over the whole projection, optional `clip_qkv`, top-k
/// renormalised only with `norm_topk_prob`.
public enum OLMoE: Architecture {
    public static let modelType = "olmoe"

    public static func spec(_ config: ModelConfig, path: String) throws -> DecoderSpec {
        var spec = try DecoderSpec.common(config, path: path, names: .gateUpDown)
        spec.qkNorm = .wholeProjection
        spec.expertIntermediate = config.intermediateSize
        spec.clipQKV = config.clipQKV.map { Float($0) }
        return spec
    }
}
