import ArgumentParser
import Cluster
import Foundation
import Kernels
import Models

extension MoE {
    /// `moe bench`: prefill and decode throughput, and the fraction of the machine's limits they reach.
    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure prefill and decode tokens/s for a batch of synthetic prompts.",
            discussion: """
            Prefill runs all prompts in one forward pass (logits of each prompt's last token only); decode then \
            runs --gen-len steps of one token per sequence (greedy). After one warm-up pass the measurement is \
            repeated and the median is reported. Prefill is compared with GEMM peak (GFLOP/s), decode with DRAM \
            bandwidth (bytes of weights and KV cache each step reads). `moe bench serve` measures a running server \
            instead.
            """,
            subcommands: [BenchServe.self])

        @OptionGroup var modelOptions: ModelOptions
        @OptionGroup var cluster: ClusterOptions

        @Option(help: "Under mpirun: 'replay:TRACE.jsonl' makes routers follow a recorded trace (layers and experts must match the model).")
        var routing: String?

        @Option(help: "Sequences run together.")
        var batch: Int = 1

        @Option(help: "Prompt tokens per sequence.")
        var promptLen: Int = 128

        @Option(help: "Decode steps per sequence.")
        var genLen: Int = 64

        @Option(help: "Measured repetitions (the median is reported).")
        var repetitions: Int = 3

        @Option(help: "Output: md (a table row) or json (one object on the last line).")
        var format: String = "md"

        @Flag(help: "Under mpirun: after the warm-up, measure the step-time model's rates (as `moe calibrate` does; or read --calibration) and report what the model predicts for the measured decode steps, given their routing, beside what they took.")
        var predict = false

        @Option(help: "GEMM peak per core in GFLOP/s for the prefill fraction.")
        var peakGflopsPerCore: Double = 125

        @Option(help: "DRAM read bandwidth in GB/s for the decode fraction (default: measured at start-up by a read loop on every kernel thread).")
        var dramGbps: Double?

        @Flag(help: "Also print a summary line: tokens/s, and decode's fraction of the DRAM read bandwidth and prefill's of GEMM peak.")
        var compare = false

        func validate() throws {
            if batch < 1 { throw ValidationError("--batch must be at least 1") }
            if promptLen < 1 { throw ValidationError("--prompt-len must be at least 1") }
            if genLen < 1 { throw ValidationError("--gen-len must be at least 1") }
            if repetitions < 1 { throw ValidationError("--repetitions must be at least 1") }
            if let g = dramGbps, !(g > 0) || !g.isFinite { throw ValidationError("--dram-gbps must be a number > 0") }
            if format != "md" && format != "json" { throw ValidationError("--format must be md or json") }
            try cluster.validateCalibration(predicting: predict)
            if predict && !DistributedRun.active { throw ValidationError("--predict is for runs under mpirun (the step-time model predicts the cluster)") }
            if let routing, !routing.hasPrefix("replay:") || routing.count == 7 {
                throw ValidationError("--routing takes replay:TRACE.jsonl")
            }
        }

        func run() throws {
            if DistributedRun.active { return try runDistributed() }
            try reportingErrors {
                let model = try modelOptions.load()
                if let reason = Engine.lengthProblem(prompt: promptLen, maxNewTokens: genLen, limit: model.maxModelLen) {
                    throw ModelError.invalidArgument(reason)
                }
                let spec = model.spec
                var rng = SplitMix64(seed: 42)
                let prompts = (0..<batch).map { _ in (0..<promptLen).map { _ in Int(rng.next() % UInt64(spec.vocabSize)) } }
                _ = try measure(model, prompts: prompts, steps: min(genLen, 2))  // warm-up: page weights in
                var runs: [Measurement] = []
                for _ in 0..<repetitions { runs.append(try measure(model, prompts: prompts, steps: genLen)) }
                let prefill = runs.map(\.prefillSeconds).sorted()[runs.count / 2]
                let decode = runs.map(\.decodeSeconds).sorted()[runs.count / 2]
                let bytesPerStep = runs[0].bytesPerStep
                let median = { (f: (Measurement) -> Double) in runs.map(f).sorted()[runs.count / 2] }
                let prefillShare = median { $0.prefillAttention / $0.prefillSeconds }
                let decodeShare = median { $0.decodeAttention / $0.decodeSeconds }
                let sparseFraction = runs[0].sparseFraction

                // The bandwidth decode is held against: measured here, after the runs (and their memory) are done.
                let dram = dramGbps ?? MemoryBandwidth.measureRead() / 1e9
                let costs = CostModel(model: model)
                let flops = Double(batch) * costs.flops(positions: 0..<promptLen, logitRows: 1)
                let threads = Parallel.workers
                let gflops = flops / prefill / 1e9
                let gbps = bytesPerStep * Double(genLen) / decode / 1e9
                let report: [String: Any] = [
                    "model": modelOptions.label, "weights_dtype": model.linearType.rawValue, "threads": threads,
                    "batch": batch, "prompt_len": promptLen, "gen_len": genLen,
                    "prefill_passes": runs[0].prefillPasses,
                    "prefill_tokens_per_s": Double(batch * promptLen) / prefill,
                    "decode_tokens_per_s": Double(batch * genLen) / decode,
                    // The whole run as a client sees it: the prefill's first tokens and the decodes' over both times.
                    "output_tokens_per_s": Double(batch * (genLen + 1)) / (prefill + decode),
                    "prefill_gflops": gflops, "prefill_peak_fraction": gflops / (peakGflopsPerCore * Double(threads)),
                    "decode_gb_per_s": gbps, "decode_dram_fraction": gbps / dram,
                    "dram_gbps": dram, "dram_gbps_source": dramGbps == nil ? "measured" : "flag",
                    "decode_bytes_per_step": bytesPerStep,
                    "prefill_attention_share": prefillShare, "decode_attention_share": decodeShare,
                    "attention": modelOptions.attention, "sparse_fraction_per_layer": sparseFraction,
                    "kv_page_size": model.kvPool?.pageSize ?? 0, "kv_pages": model.kvPool?.pageCount ?? 0,
                    "kv_pages_peak": model.kvPool.map { $0.pageCount - $0.lowestFree } ?? 0,
                    "weight_bytes": model.weightBytes.total,
                ]
                let summary = String(
                    format: "%@ %@ (%.0f MB of weights), batch %d: decode %.1f tok/s, %.1f GB/s = %.0f%% of the %@ DRAM read bandwidth (%.1f GB/s); prefill %.0f tok/s, %.0f GFLOP/s = %.0f%% of %d x %.0f GFLOP/s",
                    modelOptions.label, model.linearType.rawValue, Double(model.weightBytes.total) / 1e6, batch, Double(batch * genLen) / decode, gbps, 100 * gbps / dram,
                    dramGbps == nil ? "measured" : "given", dram, Double(batch * promptLen) / prefill, gflops,
                    100 * gflops / (peakGflopsPerCore * Double(threads)), threads, peakGflopsPerCore)
                if format == "json" {
                    if compare { emit(summary) }  // before the JSON, which stays the last line
                    emit(try jsonLine(report))
                } else {
                    emit("| model | weights | threads | batch | prompt | gen | prefill tok/s | GFLOP/s (of peak) | decode tok/s | GB/s (of DRAM) | attention share (prefill / decode) | sparse layers |")
                    emit("|---|---|---|---|---|---|---|---|---|---|---|---|")
                    emit(String(format: "| %@ | %@ | %d | %d | %d | %d | %.0f | %.0f (%.0f%%) | %.1f | %.1f (%.0f%%) | %.0f%% / %.0f%% | %@ |",
                                modelOptions.label, model.linearType.rawValue, threads, batch, promptLen, genLen,
                                Double(batch * promptLen) / prefill, gflops, 100 * gflops / (peakGflopsPerCore * Double(threads)),
                                Double(batch * genLen) / decode, gbps, 100 * gbps / dram, 100 * prefillShare, 100 * decodeShare,
                                String(format: "%.1f of %d", sparseFraction.reduce(0, +), model.spec.layers)))
                    if compare { emit(summary) }
                }
            }
        }

        struct Measurement {
            var prefillSeconds: Double
            var decodeSeconds: Double
            var bytesPerStep: Double
            /// Seconds in attention proper during prefill and decode.
            var prefillAttention = 0.0, decodeAttention = 0.0
            /// Forward passes the prefill took (more than one with --prefill-chunk).
            var prefillPasses = 0
            /// Per layer, the fraction of the batch's sequences whose attention ran sparse.
            var sparseFraction: [Double] = []
        }

        /// One prefill of every prompt (in passes of --prefill-chunk), then `steps` greedy decode steps.
        func measure(_ model: MoEDecoder, prompts: [[Int]], steps: Int) throws -> Measurement {
            let caches = try prompts.map { try model.makeCache(capacity: $0.count + steps + 1, promptLength: $0.count) }
            let vocab = model.spec.vocabSize
            func next(_ logits: [Float]) -> [Int] {
                logits.withUnsafeBufferPointer { all in
                    (0..<prompts.count).map { Sampler.argmax(UnsafeBufferPointer(rebasing: all[($0 * vocab)..<(($0 + 1) * vocab)])) }
                }
            }
            var start = Clock.now
            let attention0 = model.attentionSeconds
            // Passes of at most --prefill-chunk positions of every prompt (the prompts have one length), as
            // `generate` runs them; the last gives the first tokens.
            let pass = model.prefillChunk ?? promptLen
            var logits: [Float] = []
            var passes = 0
            for lo in stride(from: 0, to: promptLen, by: pass) {
                passes += 1
                let n = min(pass, promptLen - lo)
                logits = try model.forward(.init(tokens: prompts.flatMap { $0[lo..<(lo + n)] }, segments: caches.map { .init(cache: $0, count: n) }),
                                           logits: .lastOfEachSegment)
            }
            var tokens = next(logits)
            let prefill = Clock.since(start)
            let attention1 = model.attentionSeconds
            let costs = CostModel(model: model)
            var bytes = 0.0
            start = Clock.now
            for _ in 0..<steps {
                let contexts = caches.map { $0.length + 1 }
                tokens = next(try model.forward(.init(tokens: tokens, segments: caches.map { .init(cache: $0, count: 1) }),
                                                logits: .lastOfEachSegment))
                bytes += costs.decodeBytes(activeExperts: model.bank.activeExperts, contexts: contexts)
            }
            let decode = Clock.since(start)
            let sparse = caches.map { Set(model.sparseLayers($0) ?? []) }
            return Measurement(prefillSeconds: prefill, decodeSeconds: decode, bytesPerStep: bytes / Double(steps),
                               prefillAttention: attention1 - attention0, decodeAttention: model.attentionSeconds - attention1,
                               prefillPasses: passes,
                               sparseFraction: (0..<model.spec.layers).map { l in Double(sparse.filter { $0.contains(l) }.count) / Double(caches.count) })
        }
    }
}
