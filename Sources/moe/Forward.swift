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

        @OptionGroup var cluster: ClusterOptions

        func validate() throws { try cluster.validateCalibration() }

        func run() throws {
            if DistributedRun.active { return try runDistributed() }
            try reportingErrors {
                guard !inputIds.ids.isEmpty else { throw ModelError.emptyPrompt }
                let model = try modelOptions.load()
                var routing = ForwardRouting()
                model.routingObserver = { routing.record($1) }
                let ids = inputIds.ids
                if let reason = Engine.lengthProblem(prompt: ids.count, maxNewTokens: 0, limit: model.maxModelLen)
                    ?? Engine.poolProblem(prompt: ids.count, maxNewTokens: 0, pool: model.kvPool) {
                    throw ModelError.invalidArgument(reason)
                }
                let cache = try model.makeCache(capacity: ids.count, promptLength: ids.count)
                var logits: [Float] = []
                let chunk = model.prefillChunk ?? ids.count  // passes of --prefill-chunk
                for lo in stride(from: 0, to: ids.count, by: chunk) {
                    logits += try model.forward(.init(tokens: Array(ids[lo..<min(ids.count, lo + chunk)]), cache: cache),
                                                logits: .all)
                }
                try write(logits: logits, routing: routing, spec: model.spec)
            }
        }

        /// Under mpirun: rank 0 owns the sequence, experts answer from every rank; rank 0 writes the file.
        func runDistributed() throws {
            let run = try DistributedRun.start(model: modelOptions, cluster: cluster) { model, rank in
                guard !inputIds.ids.isEmpty else { throw ModelError.emptyPrompt }
                for id in inputIds.ids where id < 0 || id >= model.spec.vocabSize {
                    throw ModelError.tokenOutOfRange(id: id, vocabulary: model.spec.vocabSize)
                }
                // The cluster's pass holds the prompt and one more position.
                if let reason = Engine.lengthProblem(prompt: inputIds.ids.count, maxNewTokens: 0, limit: model.maxModelLen)
                    ?? Engine.poolProblem(prompt: inputIds.ids.count, maxNewTokens: 1, pool: model.kvPool) {
                    throw ModelError.invalidArgument(reason)
                }
            }
            defer { run.finish() }
            var routing = ForwardRouting()
            run.engine.routingObserver = { routing.record($1) }
            let logits = try run.engine.forward(tokens: inputIds.ids)
            if run.comm.rank == 0 { try reportingErrors { try write(logits: logits, routing: routing, spec: run.engine.model.spec) } }
        }

        func write(logits: [Float], routing: ForwardRouting, spec: DecoderSpec) throws {
            let t = inputIds.ids.count, k = spec.topK
            let moeLayers = routing.ids.count / max(t * k, 1)
            try SafeTensorsWriter.write([
                .init(name: "logits", dtype: .F32, shape: [t, spec.vocabSize]) { copy(logits, into: $0) },
                .init(name: "topk_ids", dtype: .I64, shape: [moeLayers, t, k]) { copy(routing.ids, into: $0) },
                .init(name: "topk_weights", dtype: .F32, shape: [moeLayers, t, k]) { copy(routing.weights, into: $0) },
            ], to: output)
        }
    }
}

/// Router decisions of one forward pass, layer after layer.
struct ForwardRouting {
    var ids: [Int64] = []
    var weights: [Float] = []

    mutating func record(_ routing: RoutingDecision) {
        for i in 0..<(routing.tokens * routing.topK) {
            ids.append(Int64(routing.ids[i]))
            weights.append(routing.weights[i])
        }
    }
}

/// Copies an array's bytes into a buffer of the same size.
func copy<T>(_ values: [T], into raw: UnsafeMutableRawBufferPointer) {
    values.withUnsafeBytes { raw.copyMemory(from: $0) }
}
