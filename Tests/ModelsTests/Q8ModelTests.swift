import Foundation
import Kernels
@testable import Models
import Testing

/// `--weights-dtype q8` on every fixture: which matrices it quantizes, and the logits against transformers'.
@Suite struct Q8ModelTests {
    /// The tolerance on logits against transformers' f32: up to 0.104 measured over the fixtures' forward cases
    /// (their hidden size is 64, so a product sums only two blocks' rounding; logits span about ±4).
    static let tolerance: Float = 0.15

    /// Greedy generation recording, for each step, the experts of the newest position in every MoE layer.
    static func generate(_ model: MoEDecoder, prompt: [Int], tokens: Int) throws -> (result: GenerationResult, routes: [[Int]]) {
        var calls: [[Int]] = []
        model.routingObserver = { _, r in calls.append((0..<r.topK).map { Int(r.ids[(r.tokens - 1) * r.topK + $0]) }) }
        defer { model.routingObserver = nil }
        let result = try Engine(model: model).generate([GenerationRequest(promptIds: prompt, maxNewTokens: tokens)], keepLogits: true)[0]
        let layers = model.spec.moeLayers.filter { $0 }.count
        return (result, stride(from: 0, to: calls.count, by: layers).map { Array(calls[$0..<($0 + layers)].joined()) })
    }

    /// The linear layers are q8 and nothing else is; the weights take less memory. Forward logits within the
    /// tolerance of transformers' where every token took transformers' experts. Greedy generation beside the
    /// f32 model's: identical tokens and step logits within the tolerance up to the first step whose top-2 gap in
    /// transformers' logits is below it, or whose experts differ from the f32 run's (a flipped expert is a
    /// discrete change no tolerance bounds; in `tiny-mixtral-rope-linear` one flips at the second step and moves
    /// its logits by 4).
    @Test(arguments: Fixtures.plain)  // q8 from f32 weights (an FP8 checkpoint stays FP8)
    func q8StaysWithinItsTolerance(fixture: String) throws {
        let expected = try Fixtures.expected(fixture)
        let f32 = try MoEDecoder.load(directory: Fixtures.path(fixture))
        let model = try MoEDecoder.load(directory: Fixtures.path(fixture), options: LoadOptions(weights: .q8))
        for layer in model.layers {
            let a = layer.attention
            #expect([a.q, a.k, a.v, a.o].allSatisfy { $0.type == .q8 })
            switch layer.feedForward {
            case .dense(let f): #expect([f.gate, f.up, f.down].allSatisfy { $0.type == .q8 })
            case .moe(let router, let shared, let gate):
                #expect(router.type != .q8 && gate?.type != .q8)
                if let shared { #expect([shared.gate, shared.up, shared.down].allSatisfy { $0.type == .q8 }) }
            }
        }
        for e in model.bank.experts.joined().compactMap({ $0 }) { #expect([e.gate, e.up, e.down].allSatisfy { $0.type == .q8 }) }
        #expect(model.embedding.type != .q8)
        #expect(model.lmHead.type == (model.spec.tieWordEmbeddings ? model.embedding.type : .q8))
        #expect(model.weightBytes.experts < f32.weightBytes.experts / 3)

        var cases = 0
        for c in ["a", "b", "c"] {
            let out = try runForward(model, expected.ints("\(c).input_ids"))
            guard out.ids == expected.ints("\(c).topk_ids") else { continue }
            cases += 1
            let forward = maxDifference(out.logits, expected.floats("\(c).logits"))
            #expect(forward < Self.tolerance && forward > 0, "case \(c): logits differ by \(forward)")
        }
        #expect(cases > 0, "every forward case flipped an expert")

        let want = expected.ints("gen.tokens"), wantLogits = expected.floats("gen.step_logits")
        let reference = try Self.generate(f32, prompt: expected.ints("gen.prompt"), tokens: want.count)
        let run = try Self.generate(model, prompt: expected.ints("gen.prompt"), tokens: want.count)
        #expect(reference.result.tokens == want)
        let vocab = model.spec.vocabSize
        let sure = (0..<want.count).prefix { i in
            let row = wantLogits[(i * vocab)..<((i + 1) * vocab)].sorted(by: >)
            return row[0] - row[1] >= Self.tolerance && run.routes[i] == reference.routes[i]
        }.count
        #expect(Array(run.result.tokens.prefix(sure)) == Array(want.prefix(sure)), "identical for the first \(sure) steps")
        let compared = sure * vocab
        let steps = maxDifference(Array(run.result.stepLogits.prefix(compared)), Array(wantLogits.prefix(compared)))
        #expect(steps < Self.tolerance, "step logits differ by \(steps) over the first \(sure) steps")
    }
}
