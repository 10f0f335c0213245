import Foundation
import Kernels
@testable import Models
import Testing

/// Every fixture against what transformers computed: logits, routing, and greedy generation with a KV cache.
@Suite struct HuggingFaceParityTests {
    @Test(arguments: Fixtures.names, ["a", "b", "c"])
    func forwardMatchesTransformers(fixture: String, testCase: String) throws {
        let expected = try Fixtures.expected(fixture)
        let model = try MoEDecoder.load(directory: Fixtures.path(fixture))
        let out = try runForward(model, expected.ints("\(testCase).input_ids"))
        #expect(maxDifference(out.logits, expected.floats("\(testCase).logits")) < 1e-4)
        #expect(out.ids == expected.ints("\(testCase).topk_ids"))
        #expect(maxDifference(out.weights, expected.floats("\(testCase).topk_weights")) < 1e-5)
    }

    @Test(arguments: Fixtures.names)
    func greedyGenerationWithCacheMatchesTransformers(fixture: String) throws {
        let expected = try Fixtures.expected(fixture)
        let engine = Engine(model: try MoEDecoder.load(directory: Fixtures.path(fixture)))
        let want = expected.ints("gen.tokens")
        let result = try engine.generate([GenerationRequest(promptIds: expected.ints("gen.prompt"), maxNewTokens: want.count)],
                                         keepLogits: true)[0]
        #expect(result.tokens == want)
        #expect(result.finishReason == .length)
        #expect(maxDifference(result.stepLogits, expected.floats("gen.step_logits")) < 1e-4)
    }

    @Test(arguments: Fixtures.names)
    func batchedSequencesEqualEachAlone(fixture: String) throws {
        // Prompts of different lengths prefilled together and decoded together give what each gives alone.
        let expected = try Fixtures.expected(fixture)
        let engine = Engine(model: try MoEDecoder.load(directory: Fixtures.path(fixture)))
        let prompts = [expected.ints("b.input_ids"), expected.ints("a.input_ids"), Array(expected.ints("c.input_ids").prefix(17))]
        let requests = prompts.enumerated().map { GenerationRequest(promptIds: $1, maxNewTokens: 6 + 2 * $0) }
        let together = try engine.generate(requests, keepLogits: true)
        for (i, r) in requests.enumerated() {
            let alone = try engine.generate([r], keepLogits: true)[0]
            #expect(together[i].tokens == alone.tokens)
            #expect(maxDifference(together[i].stepLogits, alone.stepLogits) < 1e-4)
        }
    }

    @Test func stopIdEndsGenerationAndIsKept() throws {
        let expected = try Fixtures.expected("tiny-mixtral")
        let engine = Engine(model: try MoEDecoder.load(directory: Fixtures.path("tiny-mixtral")))
        let want = expected.ints("gen.tokens")
        let r = try engine.generate([GenerationRequest(promptIds: expected.ints("gen.prompt"), maxNewTokens: 12,
                                                       stopIds: [want[3]])])[0]
        let firstStop = want.firstIndex(of: want[3])!
        #expect(r.tokens == Array(want.prefix(firstStop + 1)))
        #expect(r.finishReason == .stop)
    }

    @Test func samplingIsReproducibleAndRespectsTopK() throws {
        let model = try MoEDecoder.load(directory: Fixtures.path("tiny-olmoe"))
        let engine = Engine(model: model)
        let prompt = [5, 9, 1]
        let params = SamplingParameters(temperature: 1.3, topP: 0.9, topK: 5, seed: 7)
        let a = try engine.generate([GenerationRequest(promptIds: prompt, maxNewTokens: 10, sampling: params)], keepLogits: true)[0]
        let b = try engine.generate([GenerationRequest(promptIds: prompt, maxNewTokens: 10, sampling: params)])[0]
        #expect(a.tokens == b.tokens)
        let vocab = model.spec.vocabSize
        for (i, token) in a.tokens.enumerated() {
            let row = Array(a.stepLogits[(i * vocab)..<((i + 1) * vocab)])
            let rank = row.filter { $0 > row[token] }.count
            #expect(rank < 5, "step \(i) drew a token outside the top 5")
        }
        var other = params
        other.seed = 8
        let c = try engine.generate([GenerationRequest(promptIds: prompt, maxNewTokens: 10, sampling: other)])[0]
        #expect(c.tokens != a.tokens)
    }
}
