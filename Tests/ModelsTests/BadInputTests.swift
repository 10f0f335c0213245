import Foundation
import Kernels
@testable import Models
import Testing

/// Every kind of bad model folder or input gets the error that names what is wrong, never a trap.
@Suite struct BadInputTests {
    /// A copy of tiny-mixtral to break.
    func copyOfFixture() throws -> TemporaryDirectory {
        let dir = try TemporaryDirectory()
        for f in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(atPath: (Fixtures.path("tiny-mixtral") as NSString).appendingPathComponent(f),
                                             toPath: dir.file(f))
        }
        return dir
    }

    func loadError(_ dir: String) -> ModelError? {
        do {
            _ = try MoEDecoder.load(directory: dir)
            return nil
        } catch let e as ModelError {
            return e
        } catch {
            return .invalidArgument("unexpected \(error)")
        }
    }

    func editConfig(_ dir: TemporaryDirectory, _ edit: (inout [String: Any]) -> Void) throws {
        let url = URL(fileURLWithPath: dir.file("config.json"))
        var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        edit(&cfg)
        try JSONSerialization.data(withJSONObject: cfg).write(to: url)
    }

    @Test func missingFolderAndConfig() throws {
        #expect(loadError("/nonexistent/model") == .missingFile(path: "/nonexistent/model"))
        let dir = try copyOfFixture()
        try FileManager.default.removeItem(atPath: dir.file("config.json"))
        #expect(loadError(dir.path) == .missingFile(path: dir.file("config.json")))
    }

    @Test func malformedConfigNamesTheKey() throws {
        let dir = try copyOfFixture()
        try Data("{ not json".utf8).write(to: URL(fileURLWithPath: dir.file("config.json")))
        #expect(loadError(dir.path) == .malformedConfig(path: dir.file("config.json"), reason: "not valid JSON"))
        try copyOfFixtureConfig(into: dir)
        try editConfig(dir) { $0.removeValue(forKey: "hidden_size") }
        #expect(loadError(dir.path)?.description.contains("missing key 'hidden_size'") == true)
        try copyOfFixtureConfig(into: dir)
        try editConfig(dir) { $0["hidden_size"] = "sixty-four" }
        #expect(loadError(dir.path)?.description.contains("'hidden_size' is not an integer") == true)
        try copyOfFixtureConfig(into: dir)
        try editConfig(dir) { $0["num_attention_heads"] = 3 }
        #expect(loadError(dir.path)?.description.contains("not a multiple of num_key_value_heads") == true)
    }

    func copyOfFixtureConfig(into dir: TemporaryDirectory) throws {
        try? FileManager.default.removeItem(atPath: dir.file("config.json"))
        try FileManager.default.copyItem(atPath: (Fixtures.path("tiny-mixtral") as NSString).appendingPathComponent("config.json"),
                                         toPath: dir.file("config.json"))
    }

    @Test func ropeScalingItCannotComputeIsRefusedByName() throws {
        let dir = try copyOfFixture()
        func rope(_ parameters: [String: Any]) throws -> String {
            try copyOfFixtureConfig(into: dir)
            try editConfig(dir) { $0["rope_parameters"] = parameters.merging(["rope_theta": 10_000.0]) { a, _ in a } }
            return loadError(dir.path)?.description ?? "loaded"
        }
        #expect(try rope(["rope_type": "dynamic", "factor": 2.0]).contains("rope_type 'dynamic' (supported: default, linear, yarn)"))
        #expect(try rope(["rope_type": "linear"]).contains("rope_type 'linear': missing 'factor'"))
        #expect(try rope(["rope_type": "linear", "factor": -2.0]).contains("'factor' must be a positive number, got -2.0"))
        #expect(try rope(["rope_type": "yarn", "factor": 4.0, "beta_fast": 0.0]).contains("'beta_fast' must be a positive number"))
        #expect(try rope(["rope_type": "yarn", "factor": 4.0, "partial_rotary_factor": 0.5]).contains("partial_rotary_factor 0.5"))
        #expect(try rope(["rope_type": "linear", "factor": 2.0]) == "loaded")
    }

    @Test func unknownModelType() throws {
        let dir = try copyOfFixture()
        try editConfig(dir) { $0["model_type"] = "llama4" }
        #expect(loadError(dir.path) == .unknownModelType(path: dir.file("config.json"), modelType: "llama4"))
    }

    @Test func truncatedSafetensors() throws {
        let dir = try copyOfFixture()
        let path = dir.file("model.safetensors")
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count - 1000).write(to: URL(fileURLWithPath: path))
        let message = loadError(dir.path)?.description ?? ""
        #expect(message.contains("model.safetensors") && message.contains("truncated"))
        try data.prefix(5).write(to: URL(fileURLWithPath: path))
        #expect(loadError(dir.path)?.description.contains("shorter than the 8-byte header length") == true)
    }

    @Test func headerLengthPastTheEnd() throws {
        let dir = try copyOfFixture()
        let path = dir.file("model.safetensors")
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        var huge = UInt64(data.count * 2).littleEndian
        data.replaceSubrange(0..<8, with: Data(bytes: &huge, count: 8))
        try data.write(to: URL(fileURLWithPath: path))
        #expect(loadError(dir.path)?.description.contains("header length \(data.count * 2) runs past the end") == true)
    }

    @Test func missingTensorWrongShapeAndUnsupportedDType() throws {
        let source = Fixtures.path("tiny-mixtral")
        let dir = try TemporaryDirectory()
        let victim = "model.layers.1.self_attn.k_proj.weight"
        try rewriteCheckpoint(from: source, to: dir.path, transform: { $0.filter { $0.key != victim }.map { ($0.key, $0.value) } })
        #expect(loadError(dir.path) == .missingTensor(name: victim, searched: dir.file("model.safetensors")))

        let reshaped = try TemporaryDirectory()
        try rewriteCheckpoint(from: source, to: reshaped.path, transform: { tensors in
            tensors.map { name, t in
                (name, name == victim ? TensorRef(name: name, dtype: t.dtype, shape: [64, 32], data: t.data, byteCount: t.byteCount,
                                                  file: t.file, owner: t.owner) : t)
            }
        })
        #expect(loadError(reshaped.path) == .wrongShape(name: victim, file: reshaped.file("model.safetensors"),
                                                        expected: [32, 64], found: [64, 32]))

        let retyped = try TemporaryDirectory()
        try rewriteCheckpoint(from: source, to: retyped.path, transform: { tensors in
            tensors.map { name, t in
                (name, name == victim ? TensorRef(name: name, dtype: .I32, shape: t.shape, data: t.data, byteCount: t.byteCount,
                                                  file: t.file, owner: t.owner) : t)
            }
        })
        #expect(loadError(retyped.path) == .unsupportedDType(name: victim, file: retyped.file("model.safetensors"), dtype: "I32"))
    }

    @Test func indexNamingAMissingShard() throws {
        let dir = try TemporaryDirectory()
        try rewriteCheckpoint(from: Fixtures.path("tiny-mixtral"), to: dir.path, shards: 2)
        try FileManager.default.removeItem(atPath: dir.file("model-00002-of-00002.safetensors"))
        #expect(loadError(dir.path) == .missingShard(index: dir.file("model.safetensors.index.json"),
                                                     shard: "model-00002-of-00002.safetensors"))
    }

    @Test func modelLargerThanMemoryIsRefusedUpFront() throws {
        #expect(throws: ModelError.tooLarge(neededBytes: 2_000, availableBytes: 1_000)) {
            try MemoryBudget.check(neededBytes: 2_000, limit: 1_000)
        }
        let message = ModelError.tooLarge(neededBytes: 9_300_000_000, availableBytes: 1_000_000).description
        #expect(message == "model needs 9.30 GB of memory but only 1.00 MB is available")
    }

    @Test func badTokensAndRequests() throws {
        let model = try MoEDecoder.load(directory: Fixtures.path("tiny-mixtral"))
        #expect(throws: ModelError.tokenOutOfRange(id: 320, vocabulary: 320)) {
            try model.forward(.init(tokens: [1, 320], cache: model.makeCache()), logits: .all)
        }
        #expect(throws: ModelError.tokenOutOfRange(id: -1, vocabulary: 320)) {
            try model.forward(.init(tokens: [-1], cache: model.makeCache()), logits: .all)
        }
        #expect(throws: ModelError.emptyPrompt) {
            try model.forward(.init(tokens: [], cache: model.makeCache()), logits: .all)
        }
        let engine = Engine(model: model)
        #expect(throws: ModelError.emptyPrompt) { try engine.generate([GenerationRequest(promptIds: [], maxNewTokens: 3)]) }
        #expect(throws: ModelError.tokenOutOfRange(id: 999, vocabulary: 320)) {
            try engine.generate([GenerationRequest(promptIds: [1], maxNewTokens: 3, stopIds: [999])])
        }
        #expect(throws: ModelError.self) {
            try engine.generate([GenerationRequest(promptIds: [1], maxNewTokens: 3, sampling: SamplingParameters(temperature: -1))])
        }
        #expect(throws: ModelError.self) {
            try engine.generate([GenerationRequest(promptIds: [1], maxNewTokens: 3, sampling: SamplingParameters(topP: 0))])
        }
    }
}
