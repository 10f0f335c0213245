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

    /// Sequences decoding together (their attention runs side by side on the kernel threads, their experts' rows
    /// share products) get every step's logits bit for bit as each alone: prompts of 3, 5 and 7 tokens keep every
    /// product in the streaming kernels, whose sums do not depend on the batch.
    @Test(arguments: Fixtures.names)
    func sequencesDecodeTogetherAsAlone(fixture: String) throws {
        let expected = try Fixtures.expected(fixture)
        let model = try MoEDecoder.load(directory: Fixtures.path(fixture))
        let ids = expected.ints("c.input_ids")
        let requests = [3, 5, 7].map { GenerationRequest(promptIds: Array(ids.prefix($0)), maxNewTokens: 6) }
        let together = try Engine(model: model).generate(requests, keepLogits: true)
        for (i, request) in requests.enumerated() {
            let alone = try Engine(model: model).generate([request], keepLogits: true)[0]
            let sameTokens = together[i].tokens == alone.tokens, sameLogits = together[i].stepLogits == alone.stepLogits
            #expect(sameTokens && sameLogits, "request \(i): largest logit difference \(maxDifference(together[i].stepLogits, alone.stepLogits))")
        }
    }

    /// Prefill in passes of 1, 4 and 7 tokens (`--prefill-chunk`): transformers' step logits within 1e-4 and its
    /// greedy tokens, for prompts of several lengths prefilled together.
    @Test(arguments: Fixtures.names, [1, 4, 7])
    func chunkedPrefillMatchesTransformers(fixture: String, chunk: Int) throws {
        let expected = try Fixtures.expected(fixture)
        let model = try MoEDecoder.load(directory: Fixtures.path(fixture))
        let whole = try Engine(model: model).generate([GenerationRequest(promptIds: expected.ints("b.input_ids"), maxNewTokens: 3)], keepLogits: true)[0]
        model.prefillChunk = chunk
        let want = expected.ints("gen.tokens")
        let results = try Engine(model: model).generate([GenerationRequest(promptIds: expected.ints("gen.prompt"), maxNewTokens: want.count),
                                                         GenerationRequest(promptIds: expected.ints("b.input_ids"), maxNewTokens: 3)],
                                                        keepLogits: true)
        #expect(results[0].tokens == want)
        #expect(maxDifference(results[0].stepLogits, expected.floats("gen.step_logits")) < 1e-4)
        #expect(results[1].tokens == whole.tokens && maxDifference(results[1].stepLogits, whole.stepLogits) < 1e-4)
    }

    /// `--attention sparse`: a window covering the prompt is full attention exactly; a short one (sink 2, window
    /// 4, blocks of 2) leaves positions 0-5, which see every key either way, within rounding (1e-5), and changes
    /// the last.
    @Test(arguments: Fixtures.names)
    func sparseWindowIsMaskedAttention(fixture: String) throws {
        let expected = try Fixtures.expected(fixture)
        let model = try MoEDecoder.load(directory: Fixtures.path(fixture))
        let ids = expected.ints("c.input_ids"), vocab = model.spec.vocabSize
        let full = try runForward(model, ids).logits
        model.sparse = .sinkWindow(sink: 0, window: 256, block: 1)
        #expect(try runForward(model, ids).logits == full)
        model.sparse = .sinkWindow(sink: 2, window: 4, block: 2)
        let sparse = try runForward(model, ids).logits
        let rowsDiffer = (0..<ids.count).map { r in maxDifference(Array(sparse[(r * vocab)..<((r + 1) * vocab)]), Array(full[(r * vocab)..<((r + 1) * vocab)])) }
        #expect(rowsDiffer.prefix(6).allSatisfy { $0 < 1e-5 }, "positions 0-5 see every key: \(rowsDiffer)")
        #expect(maxDifference(Array(sparse.suffix(vocab)), Array(full.suffix(vocab))) > 1e-3)
    }

    /// bf16 keys and values (`--kv-dtype bf16`): logits of the forward pass and of every generation step within
    /// 0.05 of transformers' (f32 cache; up to 0.033 measured), greedy tokens identical up to the first step whose top-2 gap there is
    /// below that.
    @Test(arguments: Fixtures.plain)  // the tolerance measured on the 64-wide f32 fixtures
    func bf16CacheStaysWithinItsTolerance(fixture: String) throws {
        let tolerance: Float = 0.05
        let expected = try Fixtures.expected(fixture)
        let model = try MoEDecoder.load(directory: Fixtures.path(fixture))
        model.kvDType = .bf16
        #expect(try model.makeCache().dtype == .bf16)
        let out = try runForward(model, expected.ints("a.input_ids"))
        #expect(maxDifference(out.logits, expected.floats("a.logits")) < tolerance)
        let want = expected.ints("gen.tokens"), wantLogits = expected.floats("gen.step_logits")
        let result = try Engine(model: model).generate([GenerationRequest(promptIds: expected.ints("gen.prompt"), maxNewTokens: want.count)],
                                                       keepLogits: true)[0]
        let vocab = model.spec.vocabSize
        let sure = (0..<want.count).prefix { i in
            let row = wantLogits[(i * vocab)..<((i + 1) * vocab)].sorted(by: >)
            return row[0] - row[1] >= tolerance
        }.count
        #expect(Array(result.tokens.prefix(sure)) == Array(want.prefix(sure)), "identical for the first \(sure) steps")
        let compared = sure * vocab
        #expect(maxDifference(Array(result.stepLogits.prefix(compared)), Array(wantLogits.prefix(compared))) < tolerance)
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

    /// Greedy with a presence penalty: each step's token is the argmax of that step's logits less the penalty on
    /// every token generated before; with `min_tokens` the stop id (greedy's own first token) is not drawn early.
    @Test func penaltiesAndMinTokensShapeGreedyDecoding() throws {
        let model = try MoEDecoder.load(directory: Fixtures.path("tiny-olmoe"))
        let engine = Engine(model: model)
        let prompt = [5, 9, 1], vocab = model.spec.vocabSize
        let r = try engine.generate([GenerationRequest(promptIds: prompt, maxNewTokens: 12, sampling: SamplingParameters(temperature: 0, presencePenalty: 2))],
                                    keepLogits: true)[0]
        for (i, token) in r.tokens.enumerated() {
            var row = Array(r.stepLogits[(i * vocab)..<((i + 1) * vocab)])
            for t in Set(r.tokens.prefix(i)) { row[t] -= 2 }
            #expect(token == row.indices.max { row[$0] < row[$1] || (row[$0] == row[$1] && $0 > $1) }, "step \(i)")
        }
        let plain = try engine.generate([GenerationRequest(promptIds: prompt, maxNewTokens: 6, sampling: .greedy)])[0].tokens
        let held = try engine.generate([GenerationRequest(promptIds: prompt, maxNewTokens: 6, sampling: SamplingParameters(temperature: 0, minTokens: 3),
                                                          stopIds: [plain[0]])])[0]
        #expect(!held.tokens.prefix(3).contains(plain[0]) && held.tokens.count >= 3, "\(held.tokens) vs \(plain)")
    }
}

/// Replaying a trace that records expert ids only weighs them as the router would: for the router's own top-k, its
/// own weights; for other ids, their probabilities (renormalised exactly when the model renormalises).
@Suite struct RouterWeightsTests {
    @Test(arguments: Fixtures.names)
    func routerWeightsOfTheChosenExpertsAreTheDecisionsWeights(fixture: String) throws {
        let model = try MoEDecoder.load(directory: Fixtures.path(fixture))
        let h = model.spec.hiddenSize, t = 3, k = model.spec.topK, e = model.spec.experts
        var rng = SplitMix64(seed: 7)
        let x = (0..<(t * h)).map { _ in Float(Int(rng.next() % 2001) - 1000) / 1000 }
        let layer = model.spec.moeLayers.firstIndex(of: true)!
        let decision = x.withUnsafeBufferPointer { model.route(layer: layer, normed: $0.baseAddress!, tokens: t) }
        var got = [Float](repeating: 0, count: k)
        for r in 0..<t {
            got.withUnsafeMutableBufferPointer { decision.routerWeights(token: r, for: decision.ids + r * k, count: k, into: $0.baseAddress!) }
            for j in 0..<k { #expect(abs(got[j] - decision.weights[r * k + j]) < 1e-6) }
            // Two experts the router did not choose first: their probabilities, renormalised iff the model does.
            let other: [Int32] = [Int32((Int(decision.ids[r * k]) + 1) % e), Int32((Int(decision.ids[r * k]) + 2) % e)]
            var w: [Float] = [0, 0]
            other.withUnsafeBufferPointer { ids in w.withUnsafeMutableBufferPointer { decision.routerWeights(token: r, for: ids.baseAddress!, count: 2, into: $0.baseAddress!) } }
            let p = other.map { decision.probabilities[r * e + Int($0)] }
            let want = model.spec.normTopK ? p.map { $0 / (p[0] + p[1]) } : p
            #expect(abs(w[0] - want[0]) < 1e-6 && abs(w[1] - want[1]) < 1e-6)
            #expect(abs((0..<e).map { decision.probabilities[r * e + $0] }.reduce(0, +) - 1) < 1e-5)
        }
    }
}
