import Foundation
import Kernels

/// One generation request.
public struct GenerationRequest: Sendable {
    public var promptIds: [Int]
    public var maxNewTokens: Int
    public var sampling: SamplingParameters
    /// Generation stops after any of these ids (which is kept in the output).
    public var stopIds: Set<Int>
    /// With each generated token, its log-probability and this many most likely alternatives (nil: none).
    public var logprobs: Int?
    /// With each prompt token after the first, its log-probability given those before it and this many most
    /// likely alternatives (nil: none; the completions API's `echo` with `logprobs`).
    public var promptLogprobs: Int?

    public init(promptIds: [Int], maxNewTokens: Int, sampling: SamplingParameters = .greedy, stopIds: Set<Int> = [],
                logprobs: Int? = nil, promptLogprobs: Int? = nil) {
        self.promptIds = promptIds
        self.maxNewTokens = maxNewTokens
        self.sampling = sampling
        self.stopIds = stopIds
        self.logprobs = logprobs
        self.promptLogprobs = promptLogprobs
    }
}

/// Why generation ended.
public enum FinishReason: String, Sendable, Codable {
    case length
    case stop
}

/// What one request produced, with its timings.
public struct GenerationResult: Sendable {
    public var tokens: [Int]
    public var promptTokens: Int
    public var finishReason: FinishReason
    /// Logits of every generated token's step, `[tokens.count, vocab]`, when asked for.
    public var stepLogits: [Float]
    /// Seconds of the prefill forward pass (shared by the batch) and of the decode steps that followed.
    public var prefillSeconds: Double
    public var decodeSeconds: Double
    /// The layers that ran sparse attention for this request (`--attention sparse` or `routed`); nil when full.
    public var sparseLayers: [Int]?

    /// Prompt tokens over prefill time.
    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
    /// Tokens made by decode steps (all but the first, which comes from the prefill's logits) over decode time.
    public var decodeTokensPerSecond: Double {
        decodeSeconds > 0 && tokens.count > 1 ? Double(tokens.count - 1) / decodeSeconds : 0
    }
}

/// Runs requests on one model in this process: a batched prefill, then one decode step at a time for every
/// unfinished sequence (each with its own KV cache).
public final class Engine {
    public let model: MoEDecoder

    public init(model: MoEDecoder) { self.model = model }

    /// Checks a request against the model before any work; the message names the value at fault.
    public func validate(_ r: GenerationRequest) throws {
        guard !r.promptIds.isEmpty else { throw ModelError.emptyPrompt }
        for id in r.promptIds + Array(r.stopIds) where id < 0 || id >= model.spec.vocabSize {
            throw ModelError.tokenOutOfRange(id: id, vocabulary: model.spec.vocabSize)
        }
        guard r.maxNewTokens >= 1 else {
            throw ModelError.invalidArgument("max_new_tokens must be >= 1, got \(r.maxNewTokens)")
        }
        if let reason = Self.lengthProblem(prompt: r.promptIds.count, maxNewTokens: r.maxNewTokens, limit: model.maxModelLen)
            ?? Self.poolProblem(prompt: r.promptIds.count, maxNewTokens: r.maxNewTokens, pool: model.kvPool) {
            throw ModelError.invalidArgument(reason)
        }
        try r.sampling.validate()
        for (name, n) in [("logprobs", r.logprobs), ("prompt_logprobs", r.promptLogprobs)] {
            if let n, !(0...TokenLogprob.maxTop).contains(n) {
                throw ModelError.invalidArgument("\(name) must be in 0...\(TokenLogprob.maxTop), got \(n)")
            }
        }
    }

    /// Why a prompt of `prompt` tokens with `maxNewTokens` more can never have its pages in `pool`, or nil.
    public static func poolProblem(prompt: Int, maxNewTokens: Int, pool: KVPool?) -> String? {
        guard let pool, pool.pages(for: prompt + maxNewTokens) > pool.pageCount else { return nil }
        return "the prompt (\(prompt) tokens) and max_new_tokens (\(maxNewTokens)) need \(pool.pages(for: prompt + maxNewTokens)) KV pages "
            + "of \(pool.pageSize) tokens, beyond the pool's \(pool.pageCount) (--kv-memory, --page-size)"
    }

    /// Why a prompt of `prompt` tokens with `maxNewTokens` more does not fit in `limit` positions, or nil.
    public static func lengthProblem(prompt: Int, maxNewTokens: Int, limit: Int) -> String? {
        guard prompt + maxNewTokens > limit else { return nil }
        return "the prompt (\(prompt) tokens) and max_new_tokens (\(maxNewTokens)) need \(prompt + maxNewTokens) positions, "
            + "beyond the model's \(limit) (--max-model-len)"
    }

    /// Generates for all requests together; `keepLogits` records each step's logits.
    public func generate(_ requests: [GenerationRequest], keepLogits: Bool = false) throws -> [GenerationResult] {
        for r in requests { try validate(r) }
        let vocab = model.spec.vocabSize
        let caches = try requests.map { try model.makeCache(capacity: $0.promptIds.count + $0.maxNewTokens, promptLength: $0.promptIds.count) }
        let samplers = requests.map { Sampler($0.sampling) }
        var results = requests.map {
            GenerationResult(tokens: [], promptTokens: $0.promptIds.count, finishReason: .length, stepLogits: [],
                             prefillSeconds: 0, decodeSeconds: 0)
        }
        var done = Array(repeating: false, count: requests.count)

        func accept(_ logits: [Float], rows: [Int]) {
            logits.withUnsafeBufferPointer { all in
                for (r, i) in rows.enumerated() {
                    let row = UnsafeBufferPointer(rebasing: all[(r * vocab)..<((r + 1) * vocab)])
                    let token = samplers[i].sample(row, prompt: requests[i].promptIds, output: results[i].tokens, stopIds: requests[i].stopIds)
                    results[i].tokens.append(token)
                    if keepLogits { results[i].stepLogits.append(contentsOf: row) }
                    if requests[i].stopIds.contains(token) {
                        results[i].finishReason = .stop
                        done[i] = true
                    } else if results[i].tokens.count >= requests[i].maxNewTokens {
                        done[i] = true
                    }
                }
            }
        }

        let start = Clock.now
        // Prefill in passes of at most `prefillChunk` tokens per prompt; a prompt's last pass gives its first token.
        let longest = requests.map(\.promptIds.count).max()!
        let chunk = model.prefillChunk ?? longest
        for lo in stride(from: 0, to: longest, by: chunk) {
            let pieces = requests.indices.filter { requests[$0].promptIds.count > lo }
            let spans = pieces.map { lo..<min(requests[$0].promptIds.count, lo + chunk) }
            let pass = MoEDecoder.Batch(tokens: zip(pieces, spans).flatMap { Array(requests[$0].promptIds[$1]) },
                                        segments: zip(pieces, spans).map { .init(cache: caches[$0], count: $1.count) })
            let logits = try model.forward(pass, logits: .lastOfEachSegment)
            let ending = zip(pieces, spans).enumerated().filter { $0.element.1.upperBound == requests[$0.element.0].promptIds.count }
            var rows: [Float] = []
            for (j, _) in ending { rows.append(contentsOf: logits[(j * vocab)..<((j + 1) * vocab)]) }
            accept(rows, rows: ending.map(\.element.0))
        }
        let prefillSeconds = Clock.since(start)
        for i in results.indices {
            results[i].prefillSeconds = prefillSeconds
            results[i].sparseLayers = model.sparseLayers(caches[i])
        }

        let decodeStart = Clock.now
        while true {
            let active = requests.indices.filter { !done[$0] }
            if active.isEmpty { break }
            let step = MoEDecoder.Batch(tokens: active.map { results[$0].tokens.last! },
                                        segments: active.map { .init(cache: caches[$0], count: 1) })
            accept(try model.forward(step, logits: .lastOfEachSegment), rows: active)
            let elapsed = Clock.since(decodeStart)
            for i in active where done[i] { results[i].decodeSeconds = elapsed }
        }
        return results
    }
}

/// Monotonic time in seconds.
public enum Clock {
    public static var now: UInt64 { DispatchTime.now().uptimeNanoseconds }
    public static func since(_ start: UInt64) -> Double { Double(now - start) / 1e9 }
}
