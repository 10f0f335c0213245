import Foundation
import Kernels

/// What loading does to the stored weights (`--weights-dtype`).
public enum WeightConversion: String, Sendable, CaseIterable {
    /// Every matrix widened to f32.
    case f32
    /// The linear layers (attention projections, experts, shared and dense feed-forwards, an untied LM head)
    /// quantized to `Q8` blocks; embeddings, norms and routers keep their stored type.
    case q8
    /// The same layers quantized to `FP8` blocks (e4m3 codes, one scale per row and 128 columns).
    case fp8
}

/// How a model is loaded.
public struct LoadOptions: Sendable {
    /// What happens to the stored weights; nil keeps them as stored (16-bit ones widen inside the kernels).
    public var weights: WeightConversion?
    /// Memory the model may use; nil means what the machine has available (MemAvailable), or the
    /// `MOE_MEMORY_LIMIT` environment variable (bytes) when set.
    public var memoryLimit: Int?
    /// Which routed experts to load (`layer`, `expert`); nil loads all. Others stay unmapped.
    public var holdsExpert: (@Sendable (Int, Int) -> Bool)?

    public init(weights: WeightConversion? = nil, memoryLimit: Int? = nil, holdsExpert: (@Sendable (Int, Int) -> Bool)? = nil) {
        self.weights = weights
        self.memoryLimit = memoryLimit
        self.holdsExpert = holdsExpert
    }
}

extension MoEDecoder {
    /// Loads a Hugging Face checkpoint folder (`config.json` and safetensors, one file or sharded).
    public static func load(directory: String, options: LoadOptions = LoadOptions()) throws -> MoEDecoder {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) else {
            throw ModelError.missingFile(path: directory)
        }
        guard isDir.boolValue else {
            throw ModelError.invalidArgument("\(directory): not a directory (give the model folder)")
        }
        let configPath = (directory as NSString).appendingPathComponent("config.json")
        let config = try ModelConfig.load(path: configPath)
        let spec = try ModelRegistry.spec(config, path: configPath)
        let store = try WeightStore.open(directory: directory, conversion: options.weights)
        store.fp8Blocks = try config.fp8BlockSize(path: configPath)
        try MemoryBudget.check(neededBytes: store.bytes(of: store.names), limit: options.memoryLimit)
        return try build(spec: spec, store: store, options: options)
    }

    /// Builds the decoder from named tensors, checking each name and shape against the spec.
    public static func build(spec: DecoderSpec, store: WeightStore, options: LoadOptions = LoadOptions()) throws -> MoEDecoder {
        let h = spec.hiddenSize
        let embedding = try store.matrix("model.embed_tokens.weight", rows: spec.vocabSize, cols: h)
        let lmHead = spec.tieWordEmbeddings && !store.contains("lm_head.weight")
            ? embedding : try store.matrix("lm_head.weight", rows: spec.vocabSize, cols: h, linear: true)
        let finalNorm = try store.vector("model.norm.weight", count: h)
        var layers: [Layer] = []
        var experts: [[FeedForwardWeights?]] = []
        for l in 0..<spec.layers {
            let p = "model.layers.\(l)."
            let attention = try attentionWeights(spec: spec, store: store, prefix: p + "self_attn.")
            let feedForward: FeedForward
            if spec.moeLayers[l] {
                let block = store.firstPresent(spec.names.moeBlocks.map { "\(p)\($0).gate.weight" })
                    .map { String($0.dropFirst(p.count).dropLast(".gate.weight".count)) } ?? spec.names.moeBlocks[0]
                let b = p + block + "."
                let router = try store.matrix(b + "gate.weight", rows: spec.experts, cols: h)
                experts.append(try routedExperts(spec: spec, store: store, prefix: b, layer: l, options: options))
                var shared: FeedForwardWeights?, sharedGate: WeightMatrix?
                if let s = spec.sharedExpertIntermediate {
                    shared = try feedForwardWeights(store: store, prefix: b + "shared_expert.", names: .gateUpDown,
                                                    hidden: h, intermediate: s)
                    sharedGate = try store.matrix(b + "shared_expert_gate.weight", rows: 1, cols: h)
                }
                feedForward = .moe(router: router, shared: shared, sharedGate: sharedGate)
            } else {
                experts.append([])
                feedForward = .dense(try feedForwardWeights(store: store, prefix: p + "mlp.", names: .gateUpDown,
                                                            hidden: h, intermediate: spec.denseIntermediate))
            }
            layers.append(Layer(
                inputNorm: try store.vector(p + "input_layernorm.weight", count: h),
                postAttentionNorm: try store.vector(p + "post_attention_layernorm.weight", count: h),
                attention: attention, feedForward: feedForward))
        }
        let model = MoEDecoder(spec: spec, layers: layers, embedding: embedding, finalNorm: finalNorm, lmHead: lmHead,
                               bank: ExpertBank(experts: experts, hiddenSize: h))
        model.routerWeights = try routerWeights(spec: spec, store: store)
        return model
    }

    /// Flux router weights of every layer (`RouterMLP`'s tensor names), or nil when layer 0 has none; a
    /// checkpoint that has them for some layers only is refused with the first missing tensor named.
    static func routerWeights(spec: DecoderSpec, store: WeightStore) throws -> [RouterMLP]? {
        func prefix(_ l: Int) -> String { "model.layers.\(l).self_attn.mask_allocator." }
        guard store.contains(prefix(0) + RouterMLP.parts[0].name + ".weight") else { return nil }
        let d = spec.headDim
        return try (0..<spec.layers).map { l in
            RouterMLP(linears: try RouterMLP.parts.enumerated().map { i, part in
                let rows = RouterMLP.rows(part: i, d: d), name = prefix(l) + part.name
                return RouterMLP.Linear(weight: try store.matrix(name + ".weight", rows: rows, cols: part.in * d),
                                        bias: try store.vector(name + ".bias", count: rows))
            })
        }
    }

    static func attentionWeights(spec: DecoderSpec, store: WeightStore, prefix p: String) throws -> AttentionWeights {
        let h = spec.hiddenSize, q = spec.qDim, kv = spec.kvDim
        let (qn, kn): ([Float]?, [Float]?)
        switch spec.qkNorm {
        case .none: (qn, kn) = (nil, nil)
        case .wholeProjection:
            (qn, kn) = (try store.vector(p + "q_norm.weight", count: q), try store.vector(p + "k_norm.weight", count: kv))
        case .perHead:
            (qn, kn) = (try store.vector(p + "q_norm.weight", count: spec.headDim),
                        try store.vector(p + "k_norm.weight", count: spec.headDim))
        }
        return AttentionWeights(
            q: try store.matrix(p + "q_proj.weight", rows: q, cols: h, linear: true),
            k: try store.matrix(p + "k_proj.weight", rows: kv, cols: h, linear: true),
            v: try store.matrix(p + "v_proj.weight", rows: kv, cols: h, linear: true),
            o: try store.matrix(p + "o_proj.weight", rows: h, cols: q, linear: true),
            qBias: spec.qkvBias ? try store.vector(p + "q_proj.bias", count: q) : nil,
            kBias: spec.qkvBias ? try store.vector(p + "k_proj.bias", count: kv) : nil,
            vBias: spec.qkvBias ? try store.vector(p + "v_proj.bias", count: kv) : nil,
            qNorm: qn, kNorm: kn)
    }

    /// The routed experts of one layer: per-expert tensors (`experts.E.w1.weight`), or the fused
    /// `experts.gate_up_proj` `[E, 2I, h]` and `experts.down_proj` `[E, h, I]` of transformers 5.
    static func routedExperts(spec: DecoderSpec, store: WeightStore, prefix b: String, layer: Int,
                              options: LoadOptions) throws -> [FeedForwardWeights?] {
        let h = spec.hiddenSize, i = spec.expertIntermediate, n = spec.names
        let holds = { (e: Int) in options.holdsExpert?(layer, e) ?? true }
        if !store.contains("\(b)experts.0.\(n.expertGate).weight") && store.contains("\(b)experts.gate_up_proj") {
            let gateUp = try store.matrices("\(b)experts.gate_up_proj", count: spec.experts, rows: 2 * i, cols: h, keep: holds)
            let down = try store.matrices("\(b)experts.down_proj", count: spec.experts, rows: h, cols: i, keep: holds)
            return (0..<spec.experts).map { e in
                gateUp[e].map { FeedForwardWeights(gate: $0.rows(0..<i), up: $0.rows(i..<(2 * i)), down: down[e]!) }
            }
        }
        return try (0..<spec.experts).map { e in
            guard holds(e) else { return nil }
            return try feedForwardWeights(store: store, prefix: "\(b)experts.\(e).", names: n, hidden: h, intermediate: i)
        }
    }

    static func feedForwardWeights(store: WeightStore, prefix p: String, names n: TensorNames,
                                   hidden: Int, intermediate: Int) throws -> FeedForwardWeights {
        FeedForwardWeights(
            gate: try store.matrix("\(p)\(n.expertGate).weight", rows: intermediate, cols: hidden, linear: true),
            up: try store.matrix("\(p)\(n.expertUp).weight", rows: intermediate, cols: hidden, linear: true),
            down: try store.matrix("\(p)\(n.expertDown).weight", rows: hidden, cols: intermediate, linear: true))
    }
}

/// Refuses a model that cannot fit in memory before any of it is read.
public enum MemoryBudget {
    /// Throws `tooLarge` when `neededBytes` exceeds `limit` (default: `MOE_MEMORY_LIMIT` or MemAvailable).
    public static func check(neededBytes: Int, limit: Int? = nil) throws {
        guard let available = limit ?? environmentLimit ?? availableBytes else { return }
        if neededBytes > available { throw ModelError.tooLarge(neededBytes: neededBytes, availableBytes: available) }
    }

    static var environmentLimit: Int? {
        ProcessInfo.processInfo.environment["MOE_MEMORY_LIMIT"].flatMap { Int($0) }
    }

    /// MemAvailable from /proc/meminfo (memory that can be had without swapping), in bytes.
    public static var availableBytes: Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let parts = line.split(separator: " ")
            if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
        }
        return nil
    }
}
