/// Qwen2-MoE (`Qwen2MoeForCausalLM`): q/k/v biases, a shared expert scaled by a sigmoid gate, top-k
/// renormalised only with `norm_topk_prob`, dense MLP layers by `decoder_sparse_step` and `mlp_only_layers`,
/// sliding window on layers from `max_window_layers` when `use_sliding_window`.
public enum Qwen2MoE: Architecture {
    public static let modelType = "qwen2_moe"

    public static func spec(_ config: ModelConfig, path: String) throws -> DecoderSpec {
        var spec = try DecoderSpec.common(config, path: path, names: .gateUpDown)
        spec.qkvBias = config.qkvBias ?? true
        if let shared = config.sharedExpertIntermediateSize, shared > 0 { spec.sharedExpertIntermediate = shared }
        spec.moeLayers = sparseLayers(config, layers: spec.layers, path: path)
        if config.useSlidingWindow == true, let window = config.slidingWindow, window > 0 {
            let first = config.maxWindowLayers ?? 0
            spec.slidingWindow = (0..<spec.layers).map { $0 >= first ? window : nil }
        }
        return spec
    }

    /// Which layers are MoE: not in `mlp_only_layers` and `(layer + 1) % decoder_sparse_step == 0`.
    static func sparseLayers(_ config: ModelConfig, layers: Int, path: String) -> [Bool] {
        let step = max(config.decoderSparseStep ?? 1, 1)
        let dense = Set(config.mlpOnlyLayers ?? [])
        return (0..<layers).map { !dense.contains($0) && ($0 + 1) % step == 0 }
    }
}
