import ArgumentParser
import Cluster
import Foundation
import Models

/// Sampling flags shared by the commands that generate.
struct SamplingOptions: ParsableArguments {
    @Option(help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 1

    @Option(help: "Nucleus sampling: keep the most likely tokens up to this probability mass.")
    var topP: Float = 1

    @Option(help: "Keep only the K most likely tokens (0: all).")
    var topK: Int = 0

    @Option(help: "Random seed.")
    var seed: UInt64 = 0

    var parameters: SamplingParameters {
        SamplingParameters(temperature: temperature, topP: topP, topK: topK, seed: seed)
    }

    func validate() throws {
        do { try parameters.validate() } catch let e as ModelError { throw ValidationError(e.description) }
    }
}

/// What to run: one prompt, or a file of requests (shared by `generate` and `trace`).
struct InputOptions: ParsableArguments {
    @Option(help: "Comma-separated prompt token ids.")
    var promptIds: TokenIds?

    @Option(help: "Requests, one JSON object per line (id, prompt_ids, max_new_tokens, optional temperature, top_p, top_k, seed, stop_ids, arrival_step).")
    var requests: String?

    @Option(help: "Tokens to generate at most (with --prompt-ids).")
    var maxNewTokens: Int = 16

    func validate() throws {
        if maxNewTokens < 1 { throw ValidationError("--max-new-tokens must be at least 1") }
        if (promptIds == nil) == (requests == nil) { throw ValidationError("give either --prompt-ids or --requests") }
    }

    /// The requests of the file, or `single` (the prompt with the command's other flags) checked against `model`.
    func queue(_ model: MoEDecoder, single: GenerationRequest) throws -> [ClusterRequest] {
        if let requests { return try RequestFile.parse(path: requests, vocabulary: model.spec.vocabSize, maxModelLen: model.maxModelLen, pool: model.kvPool) }
        guard !single.promptIds.isEmpty else { throw ModelError.emptyPrompt }
        try Engine(model: model).validate(single)
        return [ClusterRequest(id: "0", request: single)]
    }
}

extension MoE {
    /// `moe generate`: token ids in, generated token ids out, with a KV cache.
    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate tokens from a prompt of token ids.",
            discussion: """
            With --json the last line of stdout is {"tokens", "prompt_tokens", "finish_reason", \
            "prefill_tokens_per_second", "decode_tokens_per_second"}, and "sparse_layers" (the layers whose \
            attention ran sparse) with --attention sparse or routed. The first new token comes from the \
            prefill's logits; decode tokens/s counts the tokens made by decode steps over their time.
            """)

        @OptionGroup var modelOptions: ModelOptions
        @OptionGroup var sampling: SamplingOptions
        @OptionGroup var cluster: ClusterOptions
        @OptionGroup var input: InputOptions

        @Option(help: "Comma-separated ids that end generation (kept in the output).")
        var stopIds: TokenIds?

        @Flag(help: "Print the result as one JSON object on the last line.")
        var json = false

        var request: GenerationRequest {
            GenerationRequest(promptIds: input.promptIds?.ids ?? [], maxNewTokens: input.maxNewTokens, sampling: sampling.parameters,
                              stopIds: Set(stopIds?.ids ?? []))
        }

        func run() throws {
            if DistributedRun.active { return try runDistributed() }
            try reportingErrors {
                if let requests = input.requests { return try runRequests(path: requests) }
                guard !request.promptIds.isEmpty else { throw ModelError.emptyPrompt }
                let model = try modelOptions.load()
                let engine = Engine(model: model)
                let r = try engine.generate([request])[0]
                if json {
                    emit(try jsonLine([
                        "tokens": r.tokens, "prompt_tokens": r.promptTokens, "finish_reason": r.finishReason.rawValue,
                        "prefill_tokens_per_second": r.prefillTokensPerSecond,
                        "decode_tokens_per_second": r.decodeTokensPerSecond,
                    ].merging(sparseField(r.sparseLayers)) { a, _ in a }))
                } else {
                    emit(r.tokens.map(String.init).joined(separator: " "))
                    emit(String(format: "%@: %d prompt tokens, %d generated (%@); prefill %.1f tok/s, decode %.1f tok/s",
                                modelOptions.label, r.promptTokens, r.tokens.count, r.finishReason.rawValue,
                                r.prefillTokensPerSecond, r.decodeTokensPerSecond))
                }
            }
        }

        /// Many requests in one process: each in its own batch, in arrival order, one JSON line as each finishes.
        func runRequests(path: String) throws {
            let model = try modelOptions.load()
            let engine = Engine(model: model)
            for r in try RequestFile.parse(path: path, vocabulary: model.spec.vocabSize, maxModelLen: model.maxModelLen, pool: model.kvPool) {
                let start = Clock.now
                let result = try engine.generate([r.request])[0]
                emit(try resultLine(ClusterResult(id: r.id, tokens: result.tokens, promptTokens: result.promptTokens,
                                                  finishReason: result.finishReason, timeToFirstToken: result.prefillSeconds,
                                                  latency: Clock.since(start), sparseLayers: result.sparseLayers)))
            }
        }

        /// Under mpirun: rank 0 takes the requests and every rank serves them.
        func runDistributed() throws {
            var queue: [ClusterRequest] = []
            let run = try DistributedRun.start(model: modelOptions, cluster: cluster) { model, rank in
                guard rank == 0 else { return }
                queue = try input.queue(model, single: request)
            }
            defer { run.finish() }
            _ = try run.run(requests: queue) { result in
                if input.requests != nil || !json {
                    emit(try resultLine(result))
                } else {
                    let decodeSeconds = result.latency - result.timeToFirstToken
                    emit(try jsonLine([
                        "tokens": result.tokens, "prompt_tokens": result.promptTokens, "finish_reason": result.finishReason.rawValue,
                        "prefill_tokens_per_second": Double(result.promptTokens) / max(result.timeToFirstToken, 1e-9),
                        "decode_tokens_per_second": result.tokens.count > 1 ? Double(result.tokens.count - 1) / max(decodeSeconds, 1e-9) : 0,
                    ].merging(sparseField(result.sparseLayers)) { a, _ in a }))
                }
            }
        }
    }
}

/// One finished request as a JSON line.
func resultLine(_ r: ClusterResult) throws -> String {
    try jsonLine([
        "id": r.id, "tokens": r.tokens, "finish_reason": r.finishReason.rawValue, "prompt_tokens": r.promptTokens,
        "time_to_first_token_s": r.timeToFirstToken, "latency_s": r.latency,
    ].merging(sparseField(r.sparseLayers)) { a, _ in a })
}

/// `"sparse_layers"`: the layers whose attention ran sparse for a request, when attention is not full.
func sparseField(_ layers: [Int]?) -> [String: Any] {
    layers.map { ["sparse_layers": $0] } ?? [:]
}
