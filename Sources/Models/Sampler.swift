#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How the next token is chosen from logits.
public struct SamplingParameters: Sendable, Equatable {
    /// 0 is greedy (argmax, ties to the lower id); otherwise logits are divided by it before softmax.
    public var temperature: Float
    /// Keep the smallest set of most likely tokens whose probability reaches this (1 keeps all).
    public var topP: Float
    /// Keep only this many most likely tokens (0 keeps all).
    public var topK: Int
    /// Seed of the per-sequence random stream.
    public var seed: UInt64
    /// OpenAI's penalties on generated tokens: each logit less `presence` if its token was generated before and
    /// `frequency` times the times it was (0: off; -2...2).
    public var presencePenalty: Float = 0
    public var frequencyPenalty: Float = 0
    /// The CTRL paper's penalty (transformers' and vLLM's `repetition_penalty`) on tokens of the prompt or the
    /// output: a positive logit divided by it, a negative one multiplied (1: off).
    public var repetitionPenalty: Float = 1
    /// Generated tokens before a stop id may be drawn: until then stop ids (end of sequence included, where the
    /// caller adds it to them) are never sampled.
    public var minTokens = 0

    public init(temperature: Float = 1, topP: Float = 1, topK: Int = 0, seed: UInt64 = 0, presencePenalty: Float = 0,
                frequencyPenalty: Float = 0, repetitionPenalty: Float = 1, minTokens: Int = 0) {
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.seed = seed
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
        self.repetitionPenalty = repetitionPenalty
        self.minTokens = minTokens
    }

    /// Whether the logits must be rewritten before a draw at all.
    var changesLogits: Bool { presencePenalty != 0 || frequencyPenalty != 0 || repetitionPenalty != 1 || minTokens > 0 }

    public static let greedy = SamplingParameters(temperature: 0)

    /// Checks ranges; the message names the parameter.
    public func validate() throws {
        guard temperature >= 0, temperature.isFinite else {
            throw ModelError.invalidArgument("temperature must be a finite number >= 0, got \(temperature)")
        }
        guard topP > 0, topP <= 1 else { throw ModelError.invalidArgument("top_p must be in (0, 1], got \(topP)") }
        guard topK >= 0 else { throw ModelError.invalidArgument("top_k must be >= 0, got \(topK)") }
        for (name, v) in [("presence_penalty", presencePenalty), ("frequency_penalty", frequencyPenalty)] where !(v >= -2 && v <= 2) {
            throw ModelError.invalidArgument("\(name) must be in [-2, 2], got \(v)")
        }
        guard repetitionPenalty > 0, repetitionPenalty.isFinite else {
            throw ModelError.invalidArgument("repetition_penalty must be a finite number > 0, got \(repetitionPenalty)")
        }
        guard minTokens >= 0 else { throw ModelError.invalidArgument("min_tokens must be >= 0, got \(minTokens)") }
    }
}

/// SplitMix64: a small, fast, seedable generator (Steele, Lea & Flood 2014), so sampling is reproducible.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Picks tokens for one sequence: temperature, then top-k, then top-p, then a draw (transformers' order).
///
/// The draw for the n-th generated token depends only on the seed and n, so any rank of a cluster that holds
/// the logits draws the same token as the single process would.
public struct Sampler: Sendable {
    public let parameters: SamplingParameters

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
    }

    /// Index of the largest logit, the lower index on ties.
    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        for i in 1..<logits.count where logits[i] > logits[best] { best = i }
        return best
    }

    /// The next token of a sequence whose prompt is `prompt` and whose generated tokens so far are `output` (the
    /// `output.count`-th, 0 for the first): the penalties and `minTokens` (against `stopIds`) on a copy of
    /// `logits` `[vocab]`, then `sample(_:step:)`. vLLM's order: repetition, then frequency and presence.
    public func sample(_ logits: UnsafeBufferPointer<Float>, prompt: [Int], output: [Int], stopIds: Set<Int>) -> Int {
        let p = parameters
        guard p.changesLogits else { return sample(logits, step: output.count) }
        var l = Array(logits)
        if p.repetitionPenalty != 1 {
            for t in Set(prompt).union(output) where l.indices.contains(t) {
                l[t] = l[t] > 0 ? l[t] / p.repetitionPenalty : l[t] * p.repetitionPenalty
            }
        }
        if p.presencePenalty != 0 || p.frequencyPenalty != 0 {
            var counts: [Int: Int] = [:]
            for t in output { counts[t, default: 0] += 1 }
            for (t, n) in counts where l.indices.contains(t) { l[t] -= p.frequencyPenalty * Float(n) + p.presencePenalty }
        }
        if output.count < p.minTokens {
            // Never every token: a vocabulary made only of stop ids keeps them.
            if stopIds.count < l.count { for t in stopIds where l.indices.contains(t) { l[t] = -.infinity } }
        }
        return l.withUnsafeBufferPointer { sample($0, step: output.count) }
    }

    /// The `step`-th generated token (0 for the first) from `logits` `[vocab]`, without penalties.
    public func sample(_ logits: UnsafeBufferPointer<Float>, step: Int) -> Int {
        let p = parameters
        if p.temperature == 0 || p.topK == 1 { return Self.argmax(logits) }
        // Candidates sorted by logit, highest first (stable: ties keep the lower id first).
        var ids = Array(0..<logits.count)
        ids.sort { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
        if p.topK > 0 && p.topK < ids.count { ids.removeSubrange(p.topK...) }
        let top = Double(logits[ids[0]])
        var probs = ids.map { exp((Double(logits[$0]) - top) / Double(p.temperature)) }
        let total = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= total }
        var keep = probs.count
        if p.topP < 1 {
            var cumulative = 0.0
            for (i, q) in probs.enumerated() {
                cumulative += q
                if cumulative >= Double(p.topP) { keep = i + 1; break }
            }
        }
        let mass = probs[..<keep].reduce(0, +)
        var rng = SplitMix64(seed: p.seed ^ (UInt64(step) &* 0xD1B5_4A32_D192_ED03))
        var u = Double.random(in: 0..<1, using: &rng) * mass
        for i in 0..<keep {
            u -= probs[i]
            if u < 0 { return ids[i] }
        }
        return ids[keep - 1]
    }
}
