import ArgumentParser
import Foundation
import Kernels
import Models

/// `moe`: a Mixture-of-Experts inference engine.
@main
struct MoE: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe",
        abstract: "A Mixture-of-Experts inference engine (Mixtral, Qwen2-MoE, OLMoE, Qwen3-MoE) on the CPU.",
        subcommands: [Forward.self, Generate.self, Serve.self, Tokenize.self, ChatTemplateCommand.self, InitModel.self, Trace.self, Plan.self, Bench.self, Calibrate.self, Predict.self, CommBench.self, KernelBench.self])

    static func main() {
        // A reader that closed stdout (`moe ... | head`) then fails the write, which `emit` reports, in every
        // command alike (SwiftNIO, which serve and bench serve start, ignores SIGPIPE anyway).
        signal(SIGPIPE, SIG_IGN)
        main(nil)
    }
}

/// Runs a command body, turning domain errors into one line on stderr and exit code 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ModelError {
        FileHandle.standardError.write(Data("moe: error: \(error.description)\n".utf8))
        throw ExitCode(1)
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("moe: error: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

/// A comma-separated list of token ids, e.g. `3,17,42`.
struct TokenIds: ExpressibleByArgument {
    var ids: [Int]

    init?(argument: String) {
        let parts = argument.split(separator: ",", omittingEmptySubsequences: false)
        var ids: [Int] = []
        for p in parts {
            let s = p.trimmingCharacters(in: .whitespaces)
            if s.isEmpty && parts.count == 1 { break }
            guard let v = Int(s) else { return nil }
            ids.append(v)
        }
        self.ids = ids
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// Where the model comes from and how its weights are kept.
struct ModelOptions: ParsableArguments {
    @Option(help: "Hugging Face model folder (config.json + safetensors). Without it: the built-in synthetic model.")
    var model: String?

    @Option(help: "Built-in synthetic model used without --model: \(SyntheticModel.Preset.allCases.map(\.rawValue).joined(separator: ", ")).")
    var preset: String = SyntheticModel.Preset.medium.rawValue

    @Option(help: "Convert weights at load: 'f32' (widen every matrix), or 'q8' (the linear layers in blocks of 32 int8 weights with one f16 scale each, 1.06 bytes a weight; embeddings, norms and routers stay), or 'fp8' (the linear layers as e4m3 in blocks of 128 with one f32 scale each, 1.03 bytes a weight). Default: keep the checkpoint's dtype (an FP8 checkpoint stays FP8), widening inside kernels.")
    var weightsDtype: String?

    @Option(help: "How the KV cache stores keys and values: f32 (default) or bf16 (half the memory and K/V traffic; rounded when written).")
    var kvDtype: String = KVDType.f32.rawValue

    @Option(help: "Bytes of KV cache pages (suffix K, M, G or T for powers of 1024; default: available memory after loading, divided among the ranks on the host).")
    var kvMemory: String?

    @Option(help: "Tokens per KV cache page.")
    var pageSize: Int = 16

    @Option(help: "Positions a sequence may use, prompt and generated tokens together (default: the config's max_position_embeddings).")
    var maxModelLen: Int?

    @Option(help: "Prefill a prompt in passes of at most N tokens, each attending to those before (default: the whole prompt in one pass).")
    var prefillChunk: Int?

    @Option(help: "Attention: full (default; a config's sliding_window still applies), sparse (every layer, --sparse-kind) or routed (full or sparse per request and layer: the checkpoint's Flux router, or --router-policy).")
    var attention: String = "full"

    @Option(help: "With --attention routed: a rule instead of router weights, clauses joined by ';': layers=I,J,... (these sparse), fraction=F (floor(F*L) layers, evenly spaced), min-prompt=N (shorter prompts run full).")
    var routerPolicy: String?

    @Option(help: "With --attention routed: prompt tokens pooled from each end for the router (all of them below twice this).")
    var routerPool: Int = 100

    @Option(help: "With --attention sparse or routed: window (sink + recent keys, block-aligned as Flux does it) or topk (Quest: decode reads the pages whose key bounds score best, within --decode-budget; prefill runs full).")
    var sparseKind: String = "window"

    @Option(help: "With --sparse-kind topk: tokens of KV pages each decode query reads per KV head, the sink's and its own page included.")
    var decodeBudget: Int = 2048

    @Option(help: "Sparse window: sink tokens every query sees (a multiple of --sparse-block).")
    var sparseSink: Int = 128

    @Option(help: "Sparse window: recent tokens, in whole blocks (a multiple of --sparse-block).")
    var sparseWindow: Int = 1024

    @Option(help: "Sparse window: block size in tokens (1: token granularity).")
    var sparseBlock: Int = 128

    @Option(help: "Kernel threads (default: all cores).")
    var threads: Int?

    func validate() throws {
        if SyntheticModel.Preset(rawValue: preset) == nil {
            throw ValidationError("unknown preset '\(preset)' (choose \(SyntheticModel.Preset.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        if let d = weightsDtype, WeightConversion(rawValue: d) == nil { throw ValidationError("--weights-dtype must be f32, q8 or fp8, got '\(d)'") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
        if let n = maxModelLen, n < 1 { throw ValidationError("--max-model-len must be at least 1") }
        if let n = prefillChunk, n < 1 { throw ValidationError("--prefill-chunk must be at least 1") }
        guard ["full", "sparse", "routed"].contains(attention) else {
            throw ValidationError("--attention must be full, sparse or routed, got '\(attention)'")
        }
        if routerPolicy != nil && attention != "routed" { throw ValidationError("--router-policy needs --attention routed") }
        do { _ = try routerPolicy.map(RouterPolicy.init(parsing:)) } catch { throw ValidationError("\(error)") }
        guard routerPool >= 1 else { throw ValidationError("--router-pool must be at least 1") }
        guard pageSize >= 1 else { throw ValidationError("--page-size must be at least 1") }
        guard sparseKind == "window" || sparseKind == "topk" else { throw ValidationError("--sparse-kind must be window or topk, got '\(sparseKind)'") }
        if sparseKind == "topk" {
            let sinkPages = (sparseSink + pageSize - 1) / pageSize
            guard decodeBudget >= (sinkPages + 1) * pageSize else {
                throw ValidationError("--decode-budget \(decodeBudget) is below the sink's pages and the last page: at least \((sinkPages + 1) * pageSize) tokens with --sparse-sink \(sparseSink) and --page-size \(pageSize)")
            }
        }
        if sparseKind == "window" {
            guard sparseBlock >= 1 else { throw ValidationError("--sparse-block must be at least 1") }
            guard sparseSink >= 0, sparseSink % sparseBlock == 0 else {
                throw ValidationError("--sparse-sink must be a multiple of --sparse-block (\(sparseBlock)), got \(sparseSink)")
            }
            guard sparseWindow >= sparseBlock, sparseWindow % sparseBlock == 0 else {
                throw ValidationError("--sparse-window must be a positive multiple of --sparse-block (\(sparseBlock)), got \(sparseWindow)")
            }
        } else if sparseSink < 0 {
            throw ValidationError("--sparse-sink must be at least 0")
        }
        guard KVDType(rawValue: kvDtype) != nil else { throw ValidationError("--kv-dtype must be f32 or bf16, got '\(kvDtype)'") }
        if let m = kvMemory, Self.bytes(m) == nil { throw ValidationError("--kv-memory takes bytes with an optional K, M, G or T suffix, got '\(m)'") }
    }

    /// Loads the model (or builds the preset) and sets the kernel threads.
    func load() throws -> MoEDecoder {
        Parallel.configure(workers: threads ?? System.coreCount)
        let options = LoadOptions(weights: weightsDtype.flatMap(WeightConversion.init))
        let loaded = try model.map { try MoEDecoder.load(directory: $0, options: options) }
            ?? SyntheticModel.build(SyntheticModel.Preset(rawValue: preset)!, options: options)
        try configure(loaded)
        return loaded
    }

    /// The run's KV dtype, length limit and attention on a loaded model; refuses a router policy that names
    /// layers the model lacks, and `routed` with neither router weights nor a layer rule.
    func configure(_ model: MoEDecoder) throws {
        model.kvDType = KVDType(rawValue: kvDtype)!
        model.kvPool = kvPool(model.spec, pageCount: nil)
        model.maxModelLen = maxModelLen ?? configuredLength ?? .max
        model.prefillChunk = prefillChunk
        let window = sparseKind == "window" && attention != "full"
        model.sparse = window ? .sinkWindow(sink: sparseSink, window: sparseWindow, block: sparseBlock) : nil
        model.topK = usesTopK ? TopKPages(budget: decodeBudget, sink: sparseSink) : nil
        model.router = nil
        guard attention == "routed" else { return }
        let policy = try routerPolicy.map(RouterPolicy.init(parsing:)) ?? RouterPolicy()
        if case .list(let set) = policy.layers, let bad = set.first(where: { $0 >= model.spec.layers }) {
            throw ModelError.invalidArgument("--router-policy: layer \(bad) is past the model's \(model.spec.layers) layers")
        }
        guard policy.layers != nil || model.routerWeights != nil else {
            throw ModelError.invalidArgument("--attention routed: \(label) has no router weights (self_attn.mask_allocator.*); give --router-policy with layers= or fraction=")
        }
        model.router = LayerRouter(weights: model.routerWeights, policy: policy, pool: routerPool)
    }

    /// Whether sparse layers decode by Quest's top-k pages (and the pool keeps key bounds).
    var usesTopK: Bool { sparseKind == "topk" && attention != "full" }

    /// `--kv-memory` in bytes: digits with an optional K, M, G or T (powers of 1024, `iB` or `B` allowed after).
    static func bytes(_ text: String) -> Int? {
        var s = text.trimmingCharacters(in: .whitespaces).uppercased()
        for tail in ["IB", "B"] where s.hasSuffix(tail) && s.count > tail.count { s.removeLast(tail.count); break }
        var scale = 1
        if let last = s.last, let i = "KMGT".firstIndex(of: last) {
            scale = 1 << (10 * ("KMGT".distance(from: "KMGT".startIndex, to: i) + 1))
            s.removeLast()
        }
        guard let n = Int(s), n > 0 else { return nil }
        return n.multipliedReportingOverflow(by: scale).overflow ? nil : n * scale
    }

    /// This process's KV memory: `--kv-memory`, else MemAvailable divided among the ranks on this host.
    var kvMemoryBytes: Int {
        if let m = kvMemory { return Self.bytes(m)! }
        let local = Int(ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"] ?? "1") ?? 1
        return (MemoryBudget.availableBytes ?? 1 << 30) / max(local, 1)
    }

    /// The KV pool for `spec`: `pageCount` pages (agreed by the ranks), or as many as this process's memory holds.
    func kvPool(_ spec: DecoderSpec, pageCount: Int?) -> KVPool {
        let dtype = KVDType(rawValue: kvDtype)!
        let pages = pageCount ?? KVPool.pageCount(memory: kvMemoryBytes, layers: spec.layers, kvDim: spec.kvDim, dtype: dtype,
                                                  pageSize: pageSize, keyBounds: usesTopK)
        return KVPool(layers: spec.layers, kvDim: spec.kvDim, dtype: dtype, pageSize: pageSize, pageCount: pages, keyBounds: usesTopK)
    }

    /// The config's `max_position_embeddings`.
    var configuredLength: Int? {
        if let model {
            return try? ModelConfig.load(path: (model as NSString).appendingPathComponent("config.json")).maxPositionEmbeddings
        }
        return SyntheticModel.Preset(rawValue: preset).flatMap { SyntheticModel.config($0).maxPositionEmbeddings }
    }

    /// What the model is, for reports.
    var label: String { model ?? "preset \(preset)" }
}

/// Writes one line to stdout and flushes it (results must not wait in a buffer). When stdout is gone (a reader
/// such as `head` closed the pipe), says so on stderr and exits with status 1 instead of trapping.
func emit(_ line: String) {
    do {
        try FileHandle.standardOutput.write(contentsOf: Data((line + "\n").utf8))
    } catch {
        FileHandle.standardError.write(Data("moe: cannot write to standard output (\(error.localizedDescription)); stopping\n".utf8))
        exit(1)
    }
}

/// One-line JSON of a dictionary with sorted keys.
func jsonLine(_ object: [String: Any]) throws -> String {
    String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
}
