import ArgumentParser
import Cluster
import Comm
import Foundation
import Kernels
import Models
import Placement

/// Flags of a run under `mpirun`.
struct ClusterOptions: ParsableArguments {
    @Option(help: "Under mpirun: how experts are reached, ep2 (two all-to-alls per MoE layer), coherent (one), or auto (per decode step, whichever the step-time model predicts faster).")
    var dispatch: String = DispatchMode.coherent.rawValue

    @Option(help: "Under mpirun with --dispatch auto (or bench --predict): the calibration file of `moe calibrate` (default: measured at start-up).")
    var calibration: String?

    @Option(help: "Under mpirun: placement plan (JSON); default: contiguous (rank r holds experts ⌊rE/G⌋ ..< ⌊(r+1)E/G⌋).")
    var placement: String?

    @Option(help: "Under mpirun with --dispatch coherent or auto: how decode K/V rows reach every rank, layer (posted as each layer makes them, completed before the next step reads them) or step-end (in the step-end allgather).")
    var kvReplication: String = KVReplication.layer.rawValue

    @Option(help: "Under mpirun: the dtype of hidden-state rows between ranks, f32 (exact) or bf16 (half the bytes; logits within a tolerance).")
    var wireDtype: String = WireDType.f32.rawValue

    @Option(help: "Under mpirun: what expert ranks send back per token, per-expert rows (exact) or per-rank partial sums (fewer bytes; rounding differs where a token's experts are split).")
    var combine: String = CombineRows.perExpert.rawValue

    @Option(help: "Tokens one step of the cluster (under mpirun, or serve) runs at most: the running decodes first, then prompt chunks (each at most --prefill-chunk), so that a long prompt does not stall the others (default: serve 2048, else no limit).")
    var maxStepTokens: Int?

    @Option(help: "With decodes running, cut each step's prompt chunks to what a step of this length leaves after its decodes: a time (90ms) or a multiple of the slowest decode step measured (1.4x). The head learns a prefill pass's cost from the steps it runs (per pass, per token, per attended query-key pair), so chunks shrink as the context they attend to grows; --max-step-tokens still applies. Default: tokens only.")
    var stepTimeTarget: String?

    @Flag(inversion: .prefixedNo, help: "A step that runs prompt chunks while sequences decode runs both in one pass, streaming the weights once (under mpirun its decodes then reach experts as in ep2); --no-mixed-steps runs a prefill pass, then a decode pass.")
    var mixedSteps = true

    @Flag(help: "Keep the whole pages of finished prompts in the KV pool and start a later prompt with the same first tokens from them (vLLM's automatic prefix caching; pages no sequence holds are reused when the pool runs short). Under mpirun: with --dispatch coherent or auto (every rank keeps every cache); ignored with ep2 on several ranks. Not for requests with prompt log-probabilities or with --attention routed.")
    var enablePrefixCaching = false

    var mode: DispatchMode { DispatchMode(rawValue: dispatch)! }

    /// `--step-time-target` as a budget (validated).
    var stepBudget: StepBudget? { stepTimeTarget.flatMap(StepBudget.Target.init).map { StepBudget(target: $0) } }

    /// `--calibration` feeds the step-time model, which runs under `--dispatch auto` and for `bench --predict`; the
    /// command's own `validate` calls this (an option group cannot see its command's other flags).
    func validateCalibration(predicting: Bool = false) throws {
        if calibration != nil && dispatch != DispatchMode.auto.rawValue && !predicting {
            throw ValidationError("--calibration is for --dispatch auto and bench --predict")
        }
    }

    var replication: KVReplication { KVReplication(rawValue: kvReplication)! }

    func validate() throws {
        guard DispatchMode(rawValue: dispatch) != nil else { throw ValidationError("--dispatch must be ep2, coherent or auto, got '\(dispatch)'") }
        guard WireDType(rawValue: wireDtype) != nil else { throw ValidationError("--wire-dtype must be f32 or bf16, got '\(wireDtype)'") }
        guard CombineRows(rawValue: combine) != nil else { throw ValidationError("--combine must be per-expert or per-rank, got '\(combine)'") }
        if let n = maxStepTokens, n < 1 { throw ValidationError("--max-step-tokens must be at least 1") }
        if let t = stepTimeTarget, StepBudget.Target(t) == nil {
            throw ValidationError("--step-time-target must be a time such as 90ms or 0.09s, or a multiple of the decode time above 1 such as 1.4x, got '\(t)'")
        }
        guard KVReplication(rawValue: kvReplication) != nil else {
            throw ValidationError("--kv-replication must be layer or step-end, got '\(kvReplication)'")
        }
    }
}

/// A process of an `mpirun` job: MPI, this rank's model shard, and the agreement that every rank is ready.
struct DistributedRun {
    let comm: MPICommunicator
    let engine: ClusterEngine
    let label: String
    /// Bytes of routed-expert weights each rank holds, from the agreement step.
    let expertBytes: [Int]

    /// Whether this process was started by mpirun.
    static var active: Bool { MPICommunicator.launchedByMPI }

    /// Starts MPI, loads this rank's shard and agrees with every rank that all is well. `check` runs on every
    /// rank after loading (rank 0 validates its requests there). Any failure on any rank stops every rank
    /// with rank 0 printing the first failure, before any data moves.
    static func start(model options: ModelOptions, cluster: ClusterOptions,
                      check: (MoEDecoder, Int) throws -> Void = { _, _ in }) throws -> DistributedRun {
        let comm = try MPICommunicator()
        if let dir = ProcessInfo.processInfo.environment["MOE_PID_DIR"] {  // lets fault tests find a rank to kill
            try? "\(getpid())".write(toFile: "\(dir)/rank-\(comm.rank).pid", atomically: true, encoding: .utf8)
        }
        let localRanks = Int(ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"] ?? "1") ?? 1
        Parallel.configure(workers: options.threads ?? max(1, System.coreCount / max(localRanks, 1)))
        var engine: ClusterEngine?
        var calibration: StepTimeModel.Calibration?
        var failure: String?
        do {
            let spec = try options.spec()
            let placement: Placement
            if let path = cluster.placement {
                placement = try PlanFile.read(path: path).placement
            } else {
                placement = .contiguous(layers: spec.layers, experts: spec.experts, ranks: comm.size)
            }
            // A plan may give a rank more than ⌈E/G⌉ experts (`moe plan --experts-per-rank`): any count runs.
            try placement.validate(layers: spec.layers, experts: spec.experts, ranks: comm.size, capacity: spec.experts)
            let rank = comm.rank
            let table = placement.rankOf
            let model = try options.load(holding: { layer, expert in table[layer][expert] == rank })
            try check(model, rank)
            engine = ClusterEngine(comm: comm, model: model, placement: placement, mode: cluster.mode)
            engine?.kvReplication = cluster.replication
            engine?.wire = WireDType(rawValue: cluster.wireDtype)!
            engine?.combineRows = CombineRows(rawValue: cluster.combine)!
            engine?.maxStepTokens = cluster.maxStepTokens ?? Int.max
            engine?.stepBudget = cluster.stepBudget
            engine?.mixedSteps = cluster.mixedSteps
            if let path = cluster.calibration { calibration = try StepTimeModel.Calibration.load(path: path) }
        } catch {
            failure = "\(error)"
        }
        let statuses: [Int]
        do {
            let all = try Agreement.agree(comm, error: failure, expertBytes: engine?.model.bank.byteCount ?? 0,
                                          kvPages: engine?.model.kvPool?.pageCount ?? 0)
            statuses = all.map { Int($0.expertBytes) }
            // Every rank holds the same pool: the smallest (in coherent every rank keeps every sequence).
            let pages = all.map { Int($0.kvPages) }.min()!
            if let model = engine?.model, model.kvPool?.pageCount != pages { model.kvPool = options.kvPool(model.spec, pageCount: pages) }
            if cluster.enablePrefixCaching { engine?.model.kvPool?.enablePrefixCaching() }
        } catch let error as ClusterError {
            if comm.rank == 0 { FileHandle.standardError.write(Data("moe: error: \(error)\n".utf8)) }
            comm.finalize()
            throw ExitCode(1)
        }
        if cluster.enablePrefixCaching && comm.rank == 0, let engine {
            let why = cluster.mode == .ep2 && comm.size > 1 ? "--dispatch ep2 on several ranks (each owner's pool is its own; use coherent or auto)"
                : engine.model.router != nil ? "--attention routed (its router reads each prompt's first chunk)" : nil
            if let why { FileHandle.standardError.write(Data("moe: warning: --enable-prefix-caching has no effect with \(why)\n".utf8)) }
        }
        let run = DistributedRun(comm: comm, engine: engine!, label: options.label, expertBytes: statuses)
        if cluster.mode == .auto { try run.useStepModel(calibration) }
        return run
    }

    /// Gives the engine the step-time model of this job's shape, plan and options, with `calibration` or, without
    /// it, rates measured now by `moe calibrate`'s microbenchmarks on this rank's own experts (collective: every
    /// rank calls this at once).
    func useStepModel(_ calibration: StepTimeModel.Calibration?) throws {
        let model = engine.model
        let c = try calibration ?? MoE.Calibrate.measure(comm, spec: model.spec, type: model.embedding.type,
                                                         experts: model.bank.experts.joined().compactMap { $0 })
        var m = StepTimeModel(shape: .init(spec: model.spec, weightBytes: model.linearType.bytesPerWeight, kvDType: model.kvDType),
                              calibration: c, placement: engine.placement)
        m.kvReplication = engine.kvReplication
        m.wire = engine.wire
        m.combineRows = engine.combineRows
        engine.stepModel = m
    }

    /// Runs `requests` through the cluster; a run the head refuses (a request that can never fit every rank's KV
    /// pool) exits 1 on every rank, rank 0 printing why.
    func run(requests: [ClusterRequest], onResult: (ClusterResult) throws -> Void) throws -> ClusterRunStats {
        do {
            return try engine.run(requests: requests, onResult: onResult)
        } catch let error as ClusterError {
            if comm.rank == 0 { FileHandle.standardError.write(Data("moe: error: \(error)\n".utf8)) }
            throw ExitCode(1)
        }
    }

    /// Ends MPI.
    func finish() { comm.finalize() }
}

extension ModelOptions {
    /// The decoder spec of the model, before loading any weights.
    func spec() throws -> DecoderSpec {
        if let model {
            guard FileManager.default.fileExists(atPath: model) else { throw ModelError.missingFile(path: model) }
            let path = (model as NSString).appendingPathComponent("config.json")
            return try ModelRegistry.spec(try ModelConfig.load(path: path), path: path)
        }
        let preset = SyntheticModel.Preset(rawValue: preset)!
        return try ModelRegistry.spec(SyntheticModel.config(preset), path: "preset \(preset.rawValue)")
    }

    /// Loads the model keeping only the routed experts `holding` accepts.
    func load(holding: @escaping @Sendable (Int, Int) -> Bool) throws -> MoEDecoder {
        let options = LoadOptions(weights: weightsDtype.flatMap(WeightConversion.init), holdsExpert: holding)
        let loaded = try model.map { try MoEDecoder.load(directory: $0, options: options) }
            ?? SyntheticModel.build(SyntheticModel.Preset(rawValue: preset)!, options: options)
        try configure(loaded)
        return loaded
    }
}
