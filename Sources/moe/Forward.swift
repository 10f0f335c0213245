import ArgumentParser
import Foundation
import Models

extension MoE {
    /// `moe forward`: one forward pass, logits and routing written as safetensors.
    struct Forward: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run one forward pass over token ids and write logits and routing as safetensors.",
            discussion: """
            The output holds `logits` f32 [T, vocab], `topk_ids` i64 [moe layers, T, k] (chosen experts in the \
            router's order) and `topk_weights` f32 [moe layers, T, k] (the weight scaling each expert's output).
            """)

        @OptionGroup var modelOptions: ModelOptions

        @Option(help: "Comma-separated token ids, e.g. 3,17,42.")
        var inputIds: TokenIds

        @Option(help: "Output safetensors file.")
        var output: String

        func run() throws {
            try reportingErrors {
                guard !inputIds.ids.isEmpty else { throw ModelError.emptyPrompt }
                let model = try modelOptions.load()
                let t = inputIds.ids.count, k = model.spec.topK
                var ids: [Int64] = [], weights: [Float] = []
                model.routingObserver = { _, routing in
                    for i in 0..<(routing.tokens * routing.topK) {
                        ids.append(Int64(routing.ids[i]))
                        weights.append(routing.weights[i])
                    }
                }
                let logits = try model.forward(.init(tokens: inputIds.ids, cache: model.makeCache(capacity: t)), logits: .all)
                let moeLayers = ids.count / max(t * k, 1)
                try SafeTensorsWriter.write([
                    .init(name: "logits", dtype: .F32, shape: [t, model.spec.vocabSize]) { copy(logits, into: $0) },
                    .init(name: "topk_ids", dtype: .I64, shape: [moeLayers, t, k]) { copy(ids, into: $0) },
                    .init(name: "topk_weights", dtype: .F32, shape: [moeLayers, t, k]) { copy(weights, into: $0) },
                ], to: output)
            }
        }
    }
}

/// Copies an array's bytes into a buffer of the same size.
func copy<T>(_ values: [T], into raw: UnsafeMutableRawBufferPointer) {
    values.withUnsafeBytes { raw.copyMemory(from: $0) }
}
