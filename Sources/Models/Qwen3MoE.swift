/// Qwen3-MoE (`Qwen3MoeForCausalLM`): per-head q/k RMSNorm, explicit `head_dim`, `norm_topk_prob`, dense
/// layers by `decoder_sparse_step` and `mlp_only_layers`, no shared expert.
public enum Qwen3MoE: Architecture {
    public static let modelType = "qwen3_moe"

    public static func spec(_ config: ModelConfig, path: String) throws -> DecoderSpec {
        var spec = try DecoderSpec.common(config, path: path, names: .gateUpDown)
        spec.qkNorm = .perHead
        spec.moeLayers = Qwen2MoE.sparseLayers(config, layers: spec.layers, path: path)
        if config.useSlidingWindow == true, let window = config.slidingWindow, window > 0 {
            let first = config.maxWindowLayers ?? 0
            spec.slidingWindow = (0..<spec.layers).map { $0 >= first ? window : nil }
        }
        return spec
    }
}
