import ArgumentParser
import Cluster
import Foundation
import Models

extension MoE {
    /// `moe trace`: the routing of a run, as JSONL.
    struct Trace: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Record routing while generating: one JSON line per (token, layer) with sequence, token, layer, experts, weights.",
            discussion: """
            Sequences are numbered from 0 in the order they are admitted (by arrival_step, then as given); lines \
            are ordered by sequence, token, layer. Under mpirun every rank records the decisions it makes and rank \
            0 writes the file. With --attention sparse or routed, each sequence's lines begin with one \
            {"sequence", "layer", "attention": "full" | "sparse"} line per layer (moe plan skips them).
            """)

        @OptionGroup var modelOptions: ModelOptions
        @OptionGroup var sampling: SamplingOptions
        @OptionGroup var cluster: ClusterOptions
        @OptionGroup var input: InputOptions

        @Option(help: "Output trace file.")
        var output: String

        func validate() throws { try cluster.validateCalibration() }

        /// The sequences to run (each request is one), in admission order.
        func work(_ model: MoEDecoder) throws -> [ClusterRequest] {
            let tokenizer = try input.loadTokenizer(modelOptions, vocabulary: model.spec.vocabSize)
            let single = GenerationRequest(promptIds: try input.promptTokens(tokenizer), maxNewTokens: input.maxNewTokens, sampling: sampling.parameters)
            let all = try input.queue(model, single: single, tokenizer: tokenizer)
            if input.requests != nil {  // the single prompt was checked by queue
                let engine = Engine(model: model)
                for r in all { try engine.validate(r.request) }
            }
            return ClusterEngine.admissionOrder(all).map { all[$0] }
        }

        func create() throws -> FileHandle {
            let fd = open(output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0 else { throw ModelError.unwritableFile(path: output, reason: String(cString: strerror(errno))) }
            return FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        }

        func run() throws {
            if DistributedRun.active { return try runDistributed() }
            try reportingErrors {
                let model = try modelOptions.load()
                let work = try work(model)
                let file = try create()
                defer { try? file.close() }
                let engine = Engine(model: model)
                for (sequence, r) in work.enumerated() {
                    var position = 0, records: [RoutingRecord] = []
                    model.routingObserver = { layer, routing in
                        records += RoutingRecord.of(routing, layer: layer, sequence: sequence, positions: position..<(position + routing.tokens))
                        if layer == model.spec.moeLayers.lastIndex(of: true) { position += routing.tokens }
                    }
                    let result = try engine.generate([r.request])[0]
                    model.routingObserver = nil
                    records.sort { ($0.token, $0.layer) < ($1.token, $1.layer) }
                    let lines = try attentionLines(sequence: sequence, sparse: result.sparseLayers, layers: model.spec.layers)
                        + records.map(\.jsonLine)
                    try file.write(contentsOf: Data(lines.map { $0 + "\n" }.joined().utf8))
                }
                emit("wrote routing of \(work.count) sequence\(work.count == 1 ? "" : "s") to \(output)")
            }
        }

        /// One line per layer with the sequence's attention decision, when attention is not full.
        func attentionLines(sequence: Int, sparse: [Int]?, layers: Int) throws -> [String] {
            guard let sparse else { return [] }
            return try (0..<layers).map { l in
                try jsonLine(["sequence": sequence, "layer": l, "attention": sparse.contains(l) ? "sparse" : "full"])
            }
        }

        /// Under mpirun: rank 0 schedules the sequences as `moe generate` does (continuous batching), every rank
        /// logs its router decisions, and rank 0 gathers and writes them.
        func runDistributed() throws {
            var queue: [ClusterRequest] = []
            var file: FileHandle?
            let run = try DistributedRun.start(model: modelOptions, cluster: cluster) { model, rank in
                guard rank == 0 else { return }
                queue = try work(model)
                file = try create()
            }
            defer { run.finish() }
            let log = RoutingLog()
            run.engine.routingLog = log
            var sparse: [String: [Int]] = [:]
            _ = try run.run(requests: queue) { result in sparse[result.id] = result.sparseLayers }
            let records = try log.gather(run.comm, topK: run.engine.model.spec.topK)
            guard let file else { return }
            defer { try? file.close() }
            try reportingErrors {
                let layers = run.engine.model.spec.layers
                var lines: [String] = []
                var bySequence = Dictionary(grouping: records, by: \.sequence)
                for (sequence, r) in queue.enumerated() {
                    lines += try attentionLines(sequence: sequence, sparse: sparse[r.id], layers: layers)
                    lines += (bySequence.removeValue(forKey: sequence) ?? []).map(\.jsonLine)
                }
                lines += bySequence.keys.sorted().flatMap { bySequence[$0]!.map(\.jsonLine) }
                try file.write(contentsOf: Data(lines.map { $0 + "\n" }.joined().utf8))
                emit("wrote routing of \(queue.count) sequence\(queue.count == 1 ? "" : "s") to \(output) (\(run.comm.size) ranks)")
            }
        }
    }
}
