import Foundation
import Kernels
@testable import Models
import Testing

/// The same weights in other file layouts, dtypes and config spellings must give the same numbers.
@Suite struct CheckpointLayoutTests {
    func reference(_ fixture: String) throws -> (ids: [Int], logits: [Float]) {
        let expected = try Fixtures.expected(fixture)
        return (expected.ints("c.input_ids"), expected.floats("c.logits"))
    }

    @Test(arguments: Fixtures.names)
    func shardedCheckpointLoadsLikeOneFile(fixture: String) throws {
        let dir = try TemporaryDirectory()
        try rewriteCheckpoint(from: Fixtures.path(fixture), to: dir.path, shards: 3)
        #expect(FileManager.default.fileExists(atPath: dir.file("model.safetensors.index.json")))
        let (ids, logits) = try reference(fixture)
        let out = try runForward(try MoEDecoder.load(directory: dir.path), ids)
        #expect(maxDifference(out.logits, logits) < 1e-4)
    }

    @Test(arguments: ["BF16", "F16"])
    func halfPrecisionWeightsStayHalfAndEqualConversionAtLoad(dtype: String) throws {
        let dir = try TemporaryDirectory()
        try rewriteCheckpoint(from: Fixtures.path("tiny-mixtral"), to: dir.path, dtype: SafeTensorsDType(rawValue: dtype)!)
        let kept = try MoEDecoder.load(directory: dir.path)
        let converted = try MoEDecoder.load(directory: dir.path, options: LoadOptions(weights: .f32))
        #expect(kept.embedding.type == (dtype == "BF16" ? .bf16 : .f16))
        #expect(converted.embedding.type == .f32)
        #expect(kept.weightBytes.total * 2 < converted.weightBytes.total + 4096)
        let (ids, _) = try reference("tiny-mixtral")
        let a = try runForward(kept, ids), b = try runForward(converted, ids)
        // Widening is exact, so both paths compute on the same values; only summation order differs.
        #expect(maxDifference(a.logits, b.logits) < 1e-4)
        #expect(a.ids == b.ids)
    }

    @Test func fusedExpertTensorsOfTransformers5Load() throws {
        // transformers 5 keeps experts as experts.gate_up_proj [E, 2I, h] and experts.down_proj [E, h, I].
        let dir = try TemporaryDirectory()
        let fused = FusedExperts(spec: try MoEDecoder.load(directory: Fixtures.path("tiny-qwen2moe")).spec)
        try rewriteCheckpoint(from: Fixtures.path("tiny-qwen2moe"), to: dir.path, transform: fused.transform)
        let (ids, logits) = try reference("tiny-qwen2moe")
        let out = try runForward(try MoEDecoder.load(directory: dir.path), ids)
        #expect(maxDifference(out.logits, logits) < 1e-4)
    }

    @Test func configAliasesOfOtherVersionsDecode() throws {
        // Older spellings: num_local_experts for num_experts, top-level rope_theta, torch_dtype, head_dim absent.
        let dir = try TemporaryDirectory()
        try rewriteCheckpoint(from: Fixtures.path("tiny-olmoe"), to: dir.path, config: { cfg in
            cfg["num_local_experts"] = cfg.removeValue(forKey: "num_experts")
            cfg["rope_theta"] = (cfg.removeValue(forKey: "rope_parameters") as! [String: Any])["rope_theta"]
            cfg["torch_dtype"] = cfg.removeValue(forKey: "dtype")
            cfg.removeValue(forKey: "head_dim")
        })
        let (ids, logits) = try reference("tiny-olmoe")
        let out = try runForward(try MoEDecoder.load(directory: dir.path), ids)
        #expect(maxDifference(out.logits, logits) < 1e-4)
        let config = try ModelConfig.load(path: dir.file("config.json"))
        #expect(config.expertCount == 8 && config.resolvedRopeTheta == 10_000 && config.declaredDType == "float32")
    }

    /// RoPE scaling as older configs spell it: a top-level `rope_theta` with `rope_scaling` keyed `type` or
    /// `rope_type`, and yarn's factor implied by `max_position_embeddings` over the original.
    @Test(arguments: [("tiny-mixtral-rope-linear", "type"), ("tiny-mixtral-rope-linear", "rope_type"),
                      ("tiny-qwen2moe-yarn", "type"), ("tiny-qwen2moe-yarn", "implied factor")])
    func ropeScalingInOlderSpellingsDecodes(fixture: String, spelling: String) throws {
        let dir = try TemporaryDirectory()
        try rewriteCheckpoint(from: Fixtures.path(fixture), to: dir.path, config: { cfg in
            var scaling = cfg.removeValue(forKey: "rope_parameters") as! [String: Any]
            cfg["rope_theta"] = scaling.removeValue(forKey: "rope_theta")
            if spelling == "implied factor" {
                scaling.removeValue(forKey: "factor")
            } else {
                scaling[spelling] = scaling.removeValue(forKey: "rope_type")
            }
            cfg["rope_scaling"] = scaling
        })
        let (ids, logits) = try reference(fixture)
        let model = try MoEDecoder.load(directory: dir.path)
        #expect(model.spec.ropeScaling != .none)
        #expect(maxDifference(try runForward(model, ids).logits, logits) < 1e-4)
    }

    @Test func syntheticPresetRoundTripsThroughFiles() throws {
        let dir = try TemporaryDirectory()
        try SyntheticModel.write(.tiny, dtype: .f32, to: dir.path, shardBytes: 200_000)
        #expect(FileManager.default.fileExists(atPath: dir.file("model.safetensors.index.json")))
        let fromFiles = try runForward(try MoEDecoder.load(directory: dir.path), [3, 1, 4, 1, 5])
        let inMemory = try runForward(try SyntheticModel.build(.tiny), [3, 1, 4, 1, 5])
        #expect(fromFiles.logits == inMemory.logits)
        #expect(fromFiles.ids == inMemory.ids)
    }
}

/// Rewrites per-expert tensors of a qwen2_moe checkpoint into transformers 5's fused form.
struct FusedExperts {
    let spec: DecoderSpec

    func transform(_ tensors: [String: TensorRef]) -> [(String, TensorRef)] {
        var out = tensors.filter { !$0.key.contains(".experts.") }.map { ($0.key, $0.value) }
        let i = spec.expertIntermediate, h = spec.hiddenSize, e = spec.experts
        for l in 0..<spec.layers {
            let p = "model.layers.\(l).mlp.experts."
            let gateUp = FloatStorage(count: e * 2 * i * h), down = FloatStorage(count: e * h * i)
            for x in 0..<e {
                let g = tensors["\(p)\(x).gate_proj.weight"]!, u = tensors["\(p)\(x).up_proj.weight"]!
                let d = tensors["\(p)\(x).down_proj.weight"]!
                (gateUp.pointer + x * 2 * i * h).update(from: g.data.assumingMemoryBound(to: Float.self), count: i * h)
                (gateUp.pointer + x * 2 * i * h + i * h).update(from: u.data.assumingMemoryBound(to: Float.self), count: i * h)
                (down.pointer + x * h * i).update(from: d.data.assumingMemoryBound(to: Float.self), count: h * i)
            }
            out.append((p + "gate_up_proj", TensorRef(name: p + "gate_up_proj", dtype: .F32, shape: [e, 2 * i, h],
                                                      data: UnsafeRawPointer(gateUp.pointer), byteCount: e * 2 * i * h * 4,
                                                      file: "fused", owner: gateUp)))
            out.append((p + "down_proj", TensorRef(name: p + "down_proj", dtype: .F32, shape: [e, h, i],
                                                   data: UnsafeRawPointer(down.pointer), byteCount: e * h * i * 4,
                                                   file: "fused", owner: down)))
        }
        return out.sorted { $0.0 < $1.0 }
    }
}
