import ArgumentParser
import Cluster
import Foundation
import Models

extension MoE {
    /// `moe trace`: the routing of a run, as JSONL.
    struct Trace: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Record routing while generating: one JSON line per (token, layer) with sequence, token, layer, experts, weights.")

        @OptionGroup var modelOptions: ModelOptions

        @Option(help: "Comma-separated prompt token ids (one sequence).")
        var promptIds: TokenIds?

        @Option(help: "Requests JSONL (as `moe generate --requests`); each is one sequence.")
        var requests: String?

        @Option(help: "Tokens to generate per prompt (with --prompt-ids).")
        var maxNewTokens: Int = 16

        @Option(help: "Output trace file.")
        var output: String

        func validate() throws {
            if (promptIds == nil) == (requests == nil) { throw ValidationError("give either --prompt-ids or --requests") }
            if maxNewTokens < 1 { throw ValidationError("--max-new-tokens must be at least 1") }
        }

        func run() throws {
            try reportingErrors {
                let model = try modelOptions.load()
                let work: [ClusterRequest]
                if let requests {
                    work = try RequestFile.parse(path: requests, vocabulary: model.spec.vocabSize)
                } else {
                    guard let ids = promptIds?.ids, !ids.isEmpty else { throw ModelError.emptyPrompt }
                    work = [ClusterRequest(id: "0", request: GenerationRequest(promptIds: ids, maxNewTokens: maxNewTokens))]
                }
                guard FileManager.default.createFile(atPath: output, contents: nil), let file = FileHandle(forWritingAtPath: output) else {
                    throw ModelError.unreadableFile(path: output, reason: "cannot create")
                }
                defer { try? file.close() }
                let engine = Engine(model: model)
                for (sequence, r) in work.enumerated() {
                    try engine.validate(r.request)
                    var position = 0, lines = ""
                    model.routingObserver = { layer, routing in
                        for t in 0..<routing.tokens {
                            let ids = (0..<routing.topK).map { Int(routing.ids[t * routing.topK + $0]) }
                            let weights = (0..<routing.topK).map { routing.weights[t * routing.topK + $0] }
                            lines += #"{"sequence":\#(sequence),"token":\#(position + t),"layer":\#(layer),"experts":\#(ids),"weights":\#(weights)}"# + "\n"
                        }
                        if layer == model.spec.moeLayers.lastIndex(of: true) { position += routing.tokens }
                    }
                    _ = try engine.generate([r.request])
                    model.routingObserver = nil
                    try file.write(contentsOf: Data(lines.utf8))
                }
                emit("wrote routing of \(work.count) sequence\(work.count == 1 ? "" : "s") to \(output)")
            }
        }
    }
}
