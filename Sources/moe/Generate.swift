import ArgumentParser
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

extension MoE {
    /// `moe generate`: token ids in, generated token ids out, with a KV cache.
    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate tokens from a prompt of token ids.",
            discussion: """
            With --json the last line of stdout is {"tokens", "prompt_tokens", "finish_reason", \
            "prefill_tokens_per_second", "decode_tokens_per_second"}. The first new token comes from the \
            prefill's logits; decode tokens/s counts the tokens made by decode steps over their time.
            """)

        @OptionGroup var modelOptions: ModelOptions
        @OptionGroup var sampling: SamplingOptions

        @Option(help: "Comma-separated prompt token ids.")
        var promptIds: TokenIds

        @Option(help: "Tokens to generate at most.")
        var maxNewTokens: Int = 16

        @Option(help: "Comma-separated ids that end generation (kept in the output).")
        var stopIds: TokenIds?

        @Flag(help: "Print the result as one JSON object on the last line.")
        var json = false

        func validate() throws {
            if maxNewTokens < 1 { throw ValidationError("--max-new-tokens must be at least 1") }
        }

        func run() throws {
            try reportingErrors {
                guard !promptIds.ids.isEmpty else { throw ModelError.emptyPrompt }
                let model = try modelOptions.load()
                let engine = Engine(model: model)
                let request = GenerationRequest(promptIds: promptIds.ids, maxNewTokens: maxNewTokens,
                                                sampling: sampling.parameters, stopIds: Set(stopIds?.ids ?? []))
                let r = try engine.generate([request])[0]
                if json {
                    emit(try jsonLine([
                        "tokens": r.tokens, "prompt_tokens": r.promptTokens, "finish_reason": r.finishReason.rawValue,
                        "prefill_tokens_per_second": r.prefillTokensPerSecond,
                        "decode_tokens_per_second": r.decodeTokensPerSecond,
                    ]))
                } else {
                    emit(r.tokens.map(String.init).joined(separator: " "))
                    emit(String(format: "%@: %d prompt tokens, %d generated (%@); prefill %.1f tok/s, decode %.1f tok/s",
                                modelOptions.label, r.promptTokens, r.tokens.count, r.finishReason.rawValue,
                                r.prefillTokensPerSecond, r.decodeTokensPerSecond))
                }
            }
        }
    }
}
