import Foundation
import Kernels

/// Deterministic random Mixtral-shaped models, made in memory (the built-in default) or written as a
/// Hugging Face folder by `moe init-model`. Their routing is random: they exist to measure speed and to
/// drive the cluster without a download, not to say anything.
public enum SyntheticModel {
    /// Named shapes.
    public enum Preset: String, CaseIterable, Sendable {
        /// hidden 64, intermediate 128, 2 layers, 4 heads / 2 KV heads, 8 experts top-2, vocab 256.
        case tiny
        /// hidden 1024, intermediate 2816, 4 layers, 16 heads / 8 KV heads, 8 experts top-2, vocab 32000,
        /// rope_theta 1e6: 354 M parameters (1.42 GB in f32, 0.71 GB in bf16).
        case medium
        /// `medium` with 32 layers: Mixtral-8x7B's layer and expert counts, so its routing traces fit.
        case medium32 = "medium-32"
    }

    /// Seed of every preset's weights.
    public static let seed: UInt64 = 0x4D6F_4521

    /// The `config.json` of a preset.
    public static func config(_ preset: Preset) -> ModelConfig {
        let (h, i, layers, heads, kv, vocab, theta): (Int, Int, Int, Int, Int, Int, Double)
        switch preset {
        case .tiny: (h, i, layers, heads, kv, vocab, theta) = (64, 128, 2, 4, 2, 256, 10_000)
        case .medium: (h, i, layers, heads, kv, vocab, theta) = (1024, 2816, 4, 16, 8, 32_000, 1_000_000)
        case .medium32: (h, i, layers, heads, kv, vocab, theta) = (1024, 2816, 32, 16, 8, 32_000, 1_000_000)
        }
        return ModelConfig(
            architectures: ["MixtralForCausalLM"], modelType: "mixtral", vocabSize: vocab, hiddenSize: h,
            intermediateSize: i, numHiddenLayers: layers, numAttentionHeads: heads, numKeyValueHeads: kv,
            headDim: nil, rmsNormEps: 1e-5, ropeTheta: theta, ropeParameters: nil, ropeScaling: nil,
            maxPositionEmbeddings: 32_768, tieWordEmbeddings: false, hiddenAct: "silu", numLocalExperts: 8,
            numExperts: nil, numExpertsPerTok: 2, normTopkProb: nil, moeIntermediateSize: nil,
            sharedExpertIntermediateSize: nil, decoderSparseStep: nil, mlpOnlyLayers: nil, qkvBias: nil,
            attentionBias: nil, clipQKV: nil, slidingWindow: nil, useSlidingWindow: nil, maxWindowLayers: nil,
            torchDtype: nil, dtype: "float32", bosTokenId: 1, eosTokenId: .init([2]))
    }

    /// Name and shape of every tensor of a Mixtral checkpoint with this config, in file order.
    public static func tensorShapes(_ c: ModelConfig) -> [(name: String, shape: [Int])] {
        let h = c.hiddenSize, i = c.intermediateSize, heads = c.numAttentionHeads
        let hd = c.headDim ?? h / heads, kv = (c.numKeyValueHeads ?? heads) * hd
        var out: [(String, [Int])] = [("model.embed_tokens.weight", [c.vocabSize, h])]
        for l in 0..<c.numHiddenLayers {
            let p = "model.layers.\(l)."
            out += [(p + "input_layernorm.weight", [h]), (p + "post_attention_layernorm.weight", [h]),
                    (p + "self_attn.q_proj.weight", [heads * hd, h]), (p + "self_attn.k_proj.weight", [kv, h]),
                    (p + "self_attn.v_proj.weight", [kv, h]), (p + "self_attn.o_proj.weight", [h, heads * hd]),
                    (p + "block_sparse_moe.gate.weight", [c.expertCount ?? 8, h])]
            for e in 0..<(c.expertCount ?? 8) {
                let x = p + "block_sparse_moe.experts.\(e)."
                out += [(x + "w1.weight", [i, h]), (x + "w2.weight", [h, i]), (x + "w3.weight", [i, h])]
            }
        }
        out += [("model.norm.weight", [h]), ("lm_head.weight", [c.vocabSize, h])]
        return out
    }

    /// The values of tensor `name` (`count` of them): norms are 1, matrices uniform with standard deviation
    /// 0.02 (transformers' initializer range), from a stream seeded by the name, so any tensor can be made alone.
    public static func fill(_ name: String, count: Int, into dst: UnsafeMutablePointer<Float>) {
        if name.hasSuffix("norm.weight") {
            dst.update(repeating: 1, count: count)
            return
        }
        var h: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a of the name
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        let base = h ^ seed
        let chunk = 1 << 20
        let amplitude = Float(0.02 * 3.0.squareRoot())
        nonisolated(unsafe) let out = dst
        let chunks = (count + chunk - 1) / chunk
        Parallel.run(chunks) { c in
            var rng = SplitMix64(seed: base &+ UInt64(c) &* 0x9E37_79B9_7F4A_7C15)
            let lo = c * chunk, hi = min(count, lo + chunk)
            var i = lo
            while i < hi {
                let r = rng.next()
                out[i] = (Float(r >> 40) * 0x1p-24 * 2 - 1) * amplitude
                if i + 1 < hi { out[i + 1] = (Float((r >> 8) & 0xFF_FFFF) * 0x1p-24 * 2 - 1) * amplitude }
                i += 2
            }
        }
    }

    /// The preset as a model in memory, weights kept in `dtype`.
    public static func build(_ preset: Preset, dtype: ElementType = .f32, options: LoadOptions = LoadOptions()) throws -> MoEDecoder {
        let c = config(preset)
        let spec = try ModelRegistry.spec(c, path: "built-in preset '\(preset.rawValue)'")
        var tensors: [String: TensorRef] = [:]
        let shapes = tensorShapes(c)
        let total = shapes.reduce(0) { $0 + $1.shape.reduce(1, *) * dtype.byteSize }
        try MemoryBudget.check(neededBytes: total)
        let storage = ByteStorage(byteCount: total)
        var offset = 0
        let scratch = FloatStorage(count: shapes.map { $0.shape.reduce(1, *) }.max() ?? 0)
        for (name, shape) in shapes {
            let n = shape.reduce(1, *)
            let dst = storage.pointer + offset
            encode(name: name, count: n, dtype: dtype, scratch: scratch.pointer, into: dst)
            tensors[name] = TensorRef(name: name, dtype: dtype.safeTensorsDType, shape: shape, data: UnsafeRawPointer(dst),
                                      byteCount: n * dtype.byteSize, file: "preset \(preset.rawValue)", owner: storage)
            offset += n * dtype.byteSize
        }
        return try MoEDecoder.build(spec: spec, store: WeightStore(tensors: tensors, origin: "preset \(preset.rawValue)",
                                                                   conversion: options.weights),
                                    options: options)
    }

    /// Writes the preset as a Hugging Face folder: `config.json` and `model.safetensors`, or shards of at
    /// most `shardBytes` with `model.safetensors.index.json`.
    public static func write(_ preset: Preset, dtype: ElementType, to directory: String, shardBytes: Int = 2_000_000_000) throws {
        var c = config(preset)
        c.dtype = dtype == .f32 ? "float32" : dtype == .bf16 ? "bfloat16" : "float16"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(c).write(to: URL(fileURLWithPath: directory).appendingPathComponent("config.json"))

        var shards: [[(name: String, shape: [Int])]] = [[]]
        var size = 0
        for t in tensorShapes(c) {
            let bytes = t.shape.reduce(1, *) * dtype.byteSize
            if size + bytes > shardBytes && !shards[shards.count - 1].isEmpty { shards.append([]); size = 0 }
            shards[shards.count - 1].append(t)
            size += bytes
        }
        let scratch = FloatStorage(count: tensorShapes(c).map { $0.shape.reduce(1, *) }.max() ?? 0)
        var weightMap: [String: String] = [:]
        for (k, shard) in shards.enumerated() {
            let file = shards.count == 1 ? "model.safetensors"
                : String(format: "model-%05d-of-%05d.safetensors", k + 1, shards.count)
            let entries = shard.map { t in
                SafeTensorsWriter.Entry(name: t.name, dtype: dtype.safeTensorsDType, shape: t.shape) { raw in
                    encode(name: t.name, count: t.shape.reduce(1, *), dtype: dtype, scratch: scratch.pointer, into: raw.baseAddress!)
                }
            }
            for t in shard { weightMap[t.name] = file }
            try SafeTensorsWriter.write(entries, to: (directory as NSString).appendingPathComponent(file))
        }
        if shards.count > 1 {
            let total = tensorShapes(c).reduce(0) { $0 + $1.shape.reduce(1, *) * dtype.byteSize }
            let index: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
            let data = try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: directory).appendingPathComponent("model.safetensors.index.json"))
        }
    }

    /// Writes tensor `name`'s values as `dtype` into `dst`; `scratch` holds `count` floats for 16-bit types.
    public static func encode(name: String, count: Int, dtype: ElementType, scratch: UnsafeMutablePointer<Float>,
                       into dst: UnsafeMutableRawPointer) {
        switch dtype {
        case .f32:
            fill(name, count: count, into: dst.assumingMemoryBound(to: Float.self))
        case .bf16, .f16:
            fill(name, count: count, into: scratch)
            let out = dst.assumingMemoryBound(to: UInt16.self)
            for i in 0..<count {
                out[i] = dtype == .bf16 ? Widen.toBF16(scratch[i]) : Float16(scratch[i]).bitPattern
            }
        case .q8, .fp8:
            preconditionFailure("block types are made at load (`WeightMatrix.quantized`), not stored: callers check `ElementType.stored`")
        }
    }
}

extension ElementType {
    /// The safetensors dtype of this element type.
    public var safeTensorsDType: SafeTensorsDType {
        switch self {
        case .f32: return .F32
        case .bf16: return .BF16
        case .f16: return .F16
        case .q8, .fp8: preconditionFailure("block types have no safetensors dtype of their own")
        }
    }
}
