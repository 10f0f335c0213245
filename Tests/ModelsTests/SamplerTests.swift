import Foundation
@testable import Models
import Testing

/// Penalties and `min_tokens` on logits small enough to work out by hand.
@Suite struct SamplerTests {
    /// Greedy over [2, 1.9, -1, 0.5]: token 0 unless a penalty or `min_tokens` moves it.
    func greedy(_ p: SamplingParameters, prompt: [Int] = [], output: [Int] = [], stops: Set<Int> = []) -> Int {
        var q = p
        q.temperature = 0
        return [2, 1.9, -1, 0.5].withUnsafeBufferPointer { Sampler(q).sample($0, prompt: prompt, output: output, stopIds: stops) }
    }

    @Test func presenceAndFrequencyCountOnlyGeneratedTokens() {
        // Presence 0.2 on a generated token 0: 1.8 < 1.9, so token 1.
        #expect(greedy(SamplingParameters(presencePenalty: 0.2), output: [0]) == 1)
        #expect(greedy(SamplingParameters(presencePenalty: 0.05), output: [0]) == 0)
        // In the prompt only: no penalty.
        #expect(greedy(SamplingParameters(presencePenalty: 0.5), prompt: [0]) == 0)
        // Frequency 0.06 per time: once leaves 1.94 > 1.9, twice 1.88 < 1.9.
        #expect(greedy(SamplingParameters(frequencyPenalty: 0.06), output: [0]) == 0)
        #expect(greedy(SamplingParameters(frequencyPenalty: 0.06), output: [0, 0]) == 1)
        // A negative penalty favours a generated token: 0.5 + 1.6 > 2.
        #expect(greedy(SamplingParameters(presencePenalty: -1.6), output: [3]) == 3)
    }

    @Test func repetitionDividesPositiveAndMultipliesNegativeLogits() {
        // Token 0 in the prompt: 2 / 1.1 = 1.82 < 1.9.
        #expect(greedy(SamplingParameters(repetitionPenalty: 1.1), prompt: [0]) == 1)
        #expect(greedy(SamplingParameters(repetitionPenalty: 1.1), output: [0]) == 1)
        // Both seen: 1.82 vs 1.73, token 0 again.
        #expect(greedy(SamplingParameters(repetitionPenalty: 1.1), prompt: [0, 1]) == 0)
        // Below 1 raises a positive logit: 0.5 / 0.2 = 2.5.
        #expect(greedy(SamplingParameters(repetitionPenalty: 0.2), prompt: [3]) == 3)
        // A negative logit multiplied by 0.2 (-1 → -0.2) stays below the others.
        #expect(greedy(SamplingParameters(repetitionPenalty: 0.2), prompt: [2]) == 0)
    }

    @Test func minTokensHoldsBackStopIdsUntilReached() {
        let p = SamplingParameters(minTokens: 2)
        #expect(greedy(p, output: [], stops: [0]) == 1)
        #expect(greedy(p, output: [5], stops: [0, 1]) == 3)
        #expect(greedy(p, output: [5, 5], stops: [0]) == 0)
        // A vocabulary of stop ids only keeps them.
        #expect(greedy(p, stops: [0, 1, 2, 3]) == 0)
    }

    @Test func outOfRangePenaltiesAreRefusedByName() {
        for (p, name) in [(SamplingParameters(presencePenalty: 2.5), "presence_penalty"), (SamplingParameters(frequencyPenalty: -3), "frequency_penalty"),
                          (SamplingParameters(repetitionPenalty: 0), "repetition_penalty"), (SamplingParameters(repetitionPenalty: .infinity), "repetition_penalty"),
                          (SamplingParameters(minTokens: -1), "min_tokens")] {
            #expect(throws: ModelError.self) { try p.validate() }
            do { try p.validate() } catch { #expect("\(error)".contains(name), "\(error)") }
        }
        #expect(throws: Never.self) { try SamplingParameters(presencePenalty: 2, frequencyPenalty: -2, repetitionPenalty: 1.3, minTokens: 4).validate() }
    }

    /// Log-probabilities against a plain Double loop on odd vocabularies (not multiples of the SIMD width), with
    /// ties, a large offset and a ruled-out token: the value, and the alternatives in order with ties to the lower id.
    @Test(arguments: [1, 7, 37, 1003])
    func logprobsAreALogSoftmaxWithTheLargestInOrder(vocab: Int) {
        var g = SystemRandomNumberGenerator()
        var logits = (0..<vocab).map { _ in Float.random(in: -4...4, using: &g) + 1000 }
        if vocab > 3 { logits[vocab - 1] = logits[1]; logits[2] = -.infinity }  // a tie, and a token that cannot come
        let m = Double(logits.max()!)
        let z = m + log(logits.reduce(0.0) { $0 + exp(Double($1) - m) })
        let order = logits.indices.sorted { (logits[$0], -$0) > (logits[$1], -$1) }
        for n in [0, 1, 5, 20] {
            let token = vocab / 2
            let e = logits.withUnsafeBufferPointer { TokenLogprob($0, token: token, top: n) }
            #expect(e.token == token)
            #expect(abs(Double(e.logprob) - (Double(logits[token]) - z)) < 1e-4)
            #expect(e.top.map(\.token) == Array(order.prefix(n)))
            for a in e.top where a.logprob.isFinite { #expect(abs(Double(a.logprob) - (Double(logits[a.token]) - z)) < 1e-4) }
        }
    }
}
