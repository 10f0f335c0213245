import ArgumentParser
import Cluster
import Foundation
import Models
import Tokenizers

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

    @Option(help: "Subtracted from the logit of every token generated before (-2...2; 0: off).")
    var presencePenalty: Float = 0

    @Option(help: "Subtracted from a token's logit once per time it was generated (-2...2; 0: off).")
    var frequencyPenalty: Float = 0

    @Option(help: "Divides positive logits (multiplies negative ones) of tokens in the prompt or output (1: off).")
    var repetitionPenalty: Float = 1

    @Option(help: "Tokens generated before a stop id can be (0: none).")
    var minTokens: Int = 0

    var parameters: SamplingParameters {
        SamplingParameters(temperature: temperature, topP: topP, topK: topK, seed: seed, presencePenalty: presencePenalty,
                           frequencyPenalty: frequencyPenalty, repetitionPenalty: repetitionPenalty, minTokens: minTokens)
    }

    func validate() throws {
        do { try parameters.validate() } catch let e as ModelError { throw ValidationError(e.description) }
    }
}

/// What to run: one prompt, or a file of requests (shared by `generate` and `trace`).
struct InputOptions: ParsableArguments {
    @Option(help: "Comma-separated prompt token ids.")
    var promptIds: TokenIds?

    @Option(help: "Prompt text, encoded with the tokenizer (BOS added as the tokenizer's post-processor does).")
    var prompt: String?

    @Option(help: "Requests, one JSON object per line (id, prompt_ids or prompt text, max_new_tokens, optional temperature, top_p, top_k, seed, stop_ids, arrival_step).")
    var requests: String?

    @Option(help: "Hugging Face tokenizer folder (tokenizer.json). Default: the model folder's; for the built-in presets, the Mixtral tokenizer moe ships.")
    var tokenizer: String?

    @Option(help: "Tokens to generate at most (with --prompt-ids).")
    var maxNewTokens: Int = 16

    func validate() throws {
        if maxNewTokens < 1 { throw ValidationError("--max-new-tokens must be at least 1") }
        if [promptIds != nil, prompt != nil, requests != nil].filter({ $0 }).count != 1 {
            throw ValidationError("give one of --prompt-ids, --prompt or --requests")
        }
        if prompt?.isEmpty == true { throw ValidationError("--prompt is empty") }
    }

    /// The run's tokenizer, when one is known (see `TokenizerLocator`); required by `--prompt`.
    func loadTokenizer(_ options: ModelOptions, vocabulary: Int) throws -> Tokenizers.Tokenizer? {
        let t = try TokenizerLocator.load(explicit: tokenizer, model: options.model, vocabulary: vocabulary)
        if prompt != nil, t == nil {
            let why = options.model == nil ? "the built-in preset '\(options.preset)' has a \(vocabulary)-token vocabulary and no tokenizer"
                : "the model folder has no tokenizer.json"
            throw ValidationError("--prompt needs a tokenizer: \(why); give --tokenizer DIR or use --prompt-ids")
        }
        return t
    }

    /// The prompt's ids: `--prompt-ids`, or `--prompt` encoded.
    func promptTokens(_ tokenizer: Tokenizers.Tokenizer?) throws -> [Int] {
        if let prompt, let tokenizer { return try tokenizer.encode(prompt) }
        return promptIds?.ids ?? []
    }

    /// The requests of the file, or `single` (the prompt with the command's other flags) checked against `model`.
    func queue(_ model: MoEDecoder, single: GenerationRequest, tokenizer: Tokenizers.Tokenizer?) throws -> [ClusterRequest] {
        if let requests {
            return try RequestFile.parse(path: requests, vocabulary: model.spec.vocabSize, maxModelLen: model.maxModelLen, pool: model.kvPool,
                                         encode: tokenizer.map { t in { text in try t.encode(text) } })
        }
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

        func validate() throws { try cluster.validateCalibration() }

        func request(_ tokenizer: Tokenizers.Tokenizer?) throws -> GenerationRequest {
            GenerationRequest(promptIds: try input.promptTokens(tokenizer), maxNewTokens: input.maxNewTokens, sampling: sampling.parameters,
                              stopIds: Set(stopIds?.ids ?? []))
        }

        func run() throws {
            if DistributedRun.active { return try runDistributed() }
            try reportingErrors {
                let model = try modelOptions.load()
                let tokenizer = try input.loadTokenizer(modelOptions, vocabulary: model.spec.vocabSize)
                if let requests = input.requests { return try runRequests(path: requests, model: model, tokenizer: tokenizer) }
                let request = try request(tokenizer)
                guard !request.promptIds.isEmpty else { throw ModelError.emptyPrompt }
                let engine = Engine(model: model)
                let r = try engine.generate([request])[0]
                if json {
                    emit(try jsonLine([
                        "tokens": r.tokens, "prompt_tokens": r.promptTokens, "finish_reason": r.finishReason.rawValue,
                        "prefill_tokens_per_second": r.prefillTokensPerSecond,
                        "decode_tokens_per_second": r.decodeTokensPerSecond,
                    ].merging(sparseField(r.sparseLayers)) { a, _ in a }.merging(textField(tokenizer, r.tokens)) { a, _ in a }))
                } else {
                    emit(tokenizer.map { $0.text(of: r.tokens) } ?? r.tokens.map(String.init).joined(separator: " "))
                    emit(String(format: "%@: %d prompt tokens, %d generated (%@); prefill %.1f tok/s, decode %.1f tok/s",
                                modelOptions.label, r.promptTokens, r.tokens.count, r.finishReason.rawValue,
                                r.prefillTokensPerSecond, r.decodeTokensPerSecond))
                }
            }
        }

        /// Many requests in one process: each in its own batch, in arrival order, one JSON line as each finishes.
        func runRequests(path: String, model: MoEDecoder, tokenizer: Tokenizers.Tokenizer?) throws {
            let engine = Engine(model: model)
            for r in try RequestFile.parse(path: path, vocabulary: model.spec.vocabSize, maxModelLen: model.maxModelLen, pool: model.kvPool,
                                           encode: tokenizer.map { t in { text in try t.encode(text) } }) {
                let start = Clock.now
                let result = try engine.generate([r.request])[0]
                emit(try resultLine(ClusterResult(id: r.id, tokens: result.tokens, promptTokens: result.promptTokens,
                                                  finishReason: result.finishReason, timeToFirstToken: result.prefillSeconds,
                                                  latency: Clock.since(start), sparseLayers: result.sparseLayers), tokenizer: tokenizer))
            }
        }

        /// Under mpirun: rank 0 takes the requests and every rank serves them.
        func runDistributed() throws {
            var queue: [ClusterRequest] = []
            var tokenizer: Tokenizers.Tokenizer? = nil
            let run = try DistributedRun.start(model: modelOptions, cluster: cluster) { model, rank in
                guard rank == 0 else { return }
                tokenizer = try input.loadTokenizer(modelOptions, vocabulary: model.spec.vocabSize)
                queue = try input.queue(model, single: try request(tokenizer), tokenizer: tokenizer)
            }
            defer { run.finish() }
            _ = try run.run(requests: queue) { result in
                if input.requests != nil || !json {
                    emit(try resultLine(result, tokenizer: tokenizer))
                } else {
                    let decodeSeconds = result.latency - result.timeToFirstToken
                    emit(try jsonLine([
                        "tokens": result.tokens, "prompt_tokens": result.promptTokens, "finish_reason": result.finishReason.rawValue,
                        "prefill_tokens_per_second": Double(result.promptTokens) / max(result.timeToFirstToken, 1e-9),
                        "decode_tokens_per_second": result.tokens.count > 1 ? Double(result.tokens.count - 1) / max(decodeSeconds, 1e-9) : 0,
                    ].merging(sparseField(result.sparseLayers)) { a, _ in a }.merging(textField(tokenizer, result.tokens)) { a, _ in a }))
                }
            }
        }
    }
}

/// One finished request as a JSON line, with `"text"` when a tokenizer is known.
func resultLine(_ r: ClusterResult, tokenizer: Tokenizers.Tokenizer? = nil) throws -> String {
    try jsonLine([
        "id": r.id, "tokens": r.tokens, "finish_reason": r.finishReason.rawValue, "prompt_tokens": r.promptTokens,
        "time_to_first_token_s": r.timeToFirstToken, "latency_s": r.latency,
    ].merging(r.prefillSteps > 0 ? ["prefill_steps": r.prefillSteps] : [:]) { a, _ in a }
     .merging(r.cachedPromptTokens > 0 ? ["cached_prompt_tokens": r.cachedPromptTokens] : [:]) { a, _ in a }.merging(sparseField(r.sparseLayers)) { a, _ in a }.merging(textField(tokenizer, r.tokens)) { a, _ in a })
}

/// `"text"`: the generated tokens decoded, when a tokenizer is known.
func textField(_ tokenizer: Tokenizers.Tokenizer?, _ tokens: [Int]) -> [String: Any] {
    tokenizer.map { ["text": $0.text(of: tokens)] } ?? [:]
}

/// `"sparse_layers"`: the layers whose attention ran sparse for a request, when attention is not full.
func sparseField(_ layers: [Int]?) -> [String: Any] {
    layers.map { ["sparse_layers": $0] } ?? [:]
}
