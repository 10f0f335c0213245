import ArgumentParser
import Foundation
import Placement
import Models

extension MoE {
    /// `moe plan`: expert placements from routing traces, and their evaluation.
    struct Plan: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Place experts on ranks from routing traces so that tokens rarely change rank.",
            subcommands: [Solve.self, Evaluate.self, Import.self],
            defaultSubcommand: Solve.self)
    }
}

extension MoE.Plan {
    struct Solve: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "solve",
            abstract: "Plan a placement (the default: `moe plan --trace …` is `moe plan solve --trace …`).")

        @Option(help: "Routing trace (JSONL: moe trace's form or the vLLM dump); repeat for several.")
        var trace: [String] = []

        @Option(help: "Ranks of the job.")
        var ranks: Int

        @Option(help: "Experts per layer of the model (default: the largest id in the trace + 1).")
        var experts: Int?

        @Option(help: "Layers of the model (default: from the trace).")
        var layers: Int?

        @Option(help: "Nodes the ranks are spread over (hop 1 within a node, 2 across).")
        var nodes: Int = 1

        @Option(help: "Experts of one layer a rank may hold (default ⌈E/G⌉).")
        var expertsPerRank: Int?

        @Option(help: "auto (exact where it fits, else ILP started from local search), exact, ilp, bisect, local, contiguous or round-robin.")
        var solver: String = "auto"

        @Option(help: "Weight of co-activation within a layer (a token's experts on different ranks).")
        var coactivation: Double = PlanDefaults.coactivation

        @Option(help: "Load-balance bound: in every layer no rank takes more than this times the mean rank load (routed token rows in the trace).")
        var maxLoad: Double?

        @Option(help: "Seconds the solver may take.")
        var timeLimit: Double = 60

        @Option(help: "Gate weights for trace lines without any, highest-ranked expert first (default: equal shares); recorded in the plan.")
        var defaultWeights: String?

        @Option(help: "Output plan file.")
        var output: String

        @Option(help: "json or pb (default: from the output's extension, .pb or .binpb for protobuf).")
        var format: String?

        func validate() throws {
            if let format, format != "json" && format != "pb" { throw ValidationError("--format must be json or pb") }
            if trace.isEmpty { throw ValidationError("give at least one --trace") }
            if ranks < 1 { throw ValidationError("--ranks must be at least 1") }
            if nodes < 1 { throw ValidationError("--nodes must be at least 1") }
            if !["auto", "exact", "ilp", "bisect", "local", "contiguous", "round-robin"].contains(solver) {
                throw ValidationError("--solver must be auto, exact, ilp, bisect, local, contiguous or round-robin")
            }
            if timeLimit <= 0 { throw ValidationError("--time-limit must be positive") }
            if let maxLoad, !(maxLoad >= 1) { throw ValidationError("--max-load must be at least 1 (max/mean load per rank)") }
            _ = try parsedDefaultWeights()
        }

        /// `--default-weights` as numbers: positive, finite, highest first.
        func parsedDefaultWeights() throws -> [Double]? { try MoE.Plan.parseDefaultWeights(defaultWeights) }

        func run() throws {
            let started = Date()
            try reportingErrors {
                let given = try parsedDefaultWeights()
                let t = try RoutingTrace.load(paths: trace, layers: layers, experts: experts, defaultWeights: given?.map(Float.init))
                if t.unweightedLines > 0 {
                    let w = t.defaultWeights!.map { String(format: "%g", $0) }.joined(separator: ", ")
                    FileHandle.standardError.write(Data("moe plan: \(t.unweightedLines) trace lines have no weights: their experts get \(w)\n".utf8))
                }
                if t.skippedTokens > 0 { FileHandle.standardError.write(Data("moe plan: skipped \(t.skippedTokens) incomplete tokens\n".utf8)) }
                let problem = PlacementProblem(statistics: TraceStatistics(t), ranks: ranks, nodes: nodes, capacity: expertsPerRank,
                                               coactivationWeight: coactivation, maxLoad: maxLoad)
                try problem.validate()
                let solution = try Interrupt.catching { try PlanDefaults.solve(problem, solver: solver, deadline: started.addingTimeInterval(timeLimit * 0.95)) }
                if problem.overload(solution.placement) > 0 {  // the baselines do not look at the bound
                    throw PlacementError.invalid("the \(solution.solver) plan breaks --max-load \(maxLoad.map { String(format: "%g", $0) } ?? "")")
                }
                // Dense layers (none in the trace) get a row too: the cluster indexes the plan by model layer.
                var plan = PlanFile(placement: solution.placement.model(layers: t.modelLayers, routed: t.layerIds), topK: t.topK, nodes: nodes, solver: solution.solver,
                                    objective: solution.objective, lowerBound: solution.lowerBound, traceDigest: try TraceDigest.of(paths: trace))
                plan.maxLoad = maxLoad
                // As given (decimal), or the equal shares the reader used.
                plan.defaultWeights = t.unweightedLines == 0 ? nil : given ?? Array(repeating: 1 / Double(t.topK), count: t.topK)
                plan.hash = plan.contentHash
                let binary = format.map { $0 == "pb" } ?? (output.hasSuffix(".pb") || output.hasSuffix(".binpb"))
                if binary { try plan.writeProtobuf(path: output) } else { try plan.write(path: output) }
                let e = Evaluation(placement: solution.placement, trace: t, ranksPerNode: ranks / nodes)
                let bound = solution.lowerBound.map {
                    String(format: " (lower bound %.3f, gap %.1f %%)", $0, solution.objective > 0 ? 100 * (solution.objective - $0) / solution.objective : 0)
                }
                let worstLoad = (0..<t.layers).map { l -> Double in
                    let loads = problem.rankLoads(solution.placement, layer: l), mean = loads.reduce(0, +) / Double(ranks)
                    return mean > 0 ? loads.max()! / mean : 1
                }.max() ?? 1
                let dense = t.modelLayers - t.layers
                emit(String(format: "%@: %d layers%@ × %d experts on %d ranks, objective %.3f%@; training trace: %.3f of top-1 transitions cross ranks, max/mean load %.2f (worst layer); %.1f s",
                            solution.solver, t.layers, dense > 0 ? " (and \(dense) dense)" : "", t.experts, ranks, solution.objective, bound ?? "",
                            e.crossRankTopOne, worstLoad, Date().timeIntervalSince(started)))
            }
        }
    }

    struct Evaluate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Score a plan on a trace, beside the contiguous and round-robin baselines (and, with --against, another plan).")

        @Option(help: "Plan file (JSON, or protobuf for .pb and .binpb).")
        var plan: String

        @Option(help: "Routing trace; repeat for several.")
        var trace: [String] = []

        @Option(help: "A second plan to compare with: how many top-1 transitions the plan keeps that this one sends across ranks, with a bootstrap interval.")
        var against: String?

        @Option(help: "Tokens per bootstrap block (consecutive tokens of one sequence) for --against.")
        var block: Int = 16

        @Option(help: "Bootstrap resamples for --against.")
        var resamples: Int = 2000

        @Option(help: "Seed of the bootstrap for --against.")
        var seed: UInt64 = 1

        @Option(help: "Gate weights for trace lines without any, highest-ranked expert first (default: those the plan records, else equal shares).")
        var defaultWeights: String?

        @Flag(help: "Print one JSON object on the last line.")
        var json = false

        func validate() throws {
            if trace.isEmpty { throw ValidationError("give at least one --trace") }
            _ = try MoE.Plan.parseDefaultWeights(defaultWeights)
            if block < 1 { throw ValidationError("--block must be at least 1") }
            if !(1...1_000_000).contains(resamples) { throw ValidationError("--resamples must be between 1 and 1,000,000") }
        }

        func run() throws {
            try reportingErrors {
                let p = try PlanFile.read(path: plan)
                // The plan is the model's shape: a trace line outside it is an error naming its line.
                let weights = try MoE.Plan.parseDefaultWeights(defaultWeights) ?? p.defaultWeights
                let t = try RoutingTrace.load(paths: trace, layers: p.layers, experts: p.experts, defaultWeights: weights?.map(Float.init))
                let reference = try against.map { path -> PlanFile in
                    let r = try PlanFile.read(path: path)
                    guard r.layers == p.layers, r.experts == p.experts else {
                        throw PlacementError.mismatch("\(path): the plan has \(r.layers) layers of \(r.experts) experts, \(plan) \(p.layers) of \(p.experts)")
                    }
                    return r
                }
                let perNode = p.ranks / max(p.nodes, 1)
                var rows: [(String, Evaluation)] = [
                    ("plan", Evaluation(placement: p.placement.routed(t.layerIds), trace: t, ranksPerNode: perNode)),
                    ("contiguous", Evaluation(placement: .contiguous(layers: t.layers, experts: p.experts, ranks: p.ranks), trace: t, ranksPerNode: perNode)),
                    ("round-robin", Evaluation(placement: .roundRobin(layers: t.layers, experts: p.experts, ranks: p.ranks), trace: t, ranksPerNode: perNode)),
                ]
                if let reference {
                    rows.append(("against", Evaluation(placement: reference.placement.routed(t.layerIds), trace: t,
                                                       ranksPerNode: reference.ranks / max(reference.nodes, 1))))
                }
                func object(_ e: Evaluation) -> [String: Any] {
                    ["cross_rank_top1": e.crossRankTopOne, "cross_rank_topk": e.crossRankTopK, "hops_per_token": e.hopsPerToken,
                     "secondary_remote": e.secondaryRemote, "max_mean_load": e.maxMeanLoad]
                }
                emit("| placement | cross-rank top-1 | cross-rank top-k | hops/token | secondary remote | max/mean load |")
                emit("|---|---|---|---|---|---|")
                for (name, e) in rows {
                    emit(String(format: "| %@ | %.3f | %.3f | %.2f | %.3f | %.2f |", name, e.crossRankTopOne, e.crossRankTopK,
                                e.hopsPerToken, e.secondaryRemote, e.maxMeanLoad))
                }
                var comparison: PlacementComparison?
                if let reference {
                    var generator = SplitMix64(seed: seed)
                    let c = PlacementComparison(p.placement.routed(t.layerIds), against: reference.placement.routed(t.layerIds), trace: t,
                                                block: block, resamples: resamples, using: &generator)
                    let parts = c.parts.map { String(format: "%@ %+.4f (%d)", $0.name, $0.saving, $0.transitions) }.joined(separator: ", ")
                    emit(String(format: "plan against %@: %+.4f of top-1 transitions kept on their rank (bootstrap sd %.4f, 95 %% interval %+.4f to %+.4f; blocks of %d tokens, %d resamples); per sequence (transitions): %@",
                                against ?? "", c.saving, c.standardError, c.interval.low, c.interval.high, block, resamples, parts))
                    comparison = c
                }
                if json {
                    var o = object(rows[0].1)
                    o["contiguous"] = object(rows[1].1)
                    o["round_robin"] = object(rows[2].1)
                    if let comparison {
                        var a = object(rows[3].1)
                        a["saving_top1"] = comparison.saving
                        a["saving_sd"] = comparison.standardError
                        a["saving_interval"] = [comparison.interval.low, comparison.interval.high]
                        a["saving_per_sequence"] = comparison.parts.map { ["sequence": $0.name, "transitions": $0.transitions, "saving": $0.saving] as [String: Any] }
                        o["against"] = a
                    }
                    emit(try jsonLine(o))
                }
            }
        }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Turn ExFlow's published placement (CSV Expert,Node) into a plan file.")

        @Option(help: "ExFlow CSV (global expert id = layer × E + expert).")
        var exflow: String

        @Option(help: "Experts per layer.")
        var experts: Int = 8

        @Option(help: "Top-k of the model, recorded in the plan.")
        var topK: Int = 2

        @Option(help: "Output plan file.")
        var output: String

        func run() throws {
            try reportingErrors {
                guard let data = FileManager.default.contents(atPath: exflow) else { throw PlacementError.unreadable(path: exflow, reason: "no such file") }
                let placement = try Placement.importExFlow(csv: String(decoding: data, as: UTF8.self), experts: experts, path: exflow)
                var plan = PlanFile(placement: placement, topK: topK, solver: "exflow")
                plan.hash = plan.contentHash
                try plan.write(path: output)
                emit("imported \(placement.layers) layers × \(placement.experts) experts on \(placement.ranks) ranks")
            }
        }
    }
}

/// The planner's defaults and solver choice.
enum PlanDefaults {
    /// Largest ILP (columns) `auto` hands to CBC; larger instances get local search and the combinatorial bound.
    static let ilpColumnLimit = 150_000

    /// Co-activation weight λ (chosen by cross-validation inside training halves; see README).
    static let coactivation = 0.0

    static func solve(_ p: PlacementProblem, solver: String, deadline: Date) throws -> PlacementSolution {
        switch solver {
        case "contiguous": return try ContiguousSolver().solve(p)
        case "round-robin": return try RoundRobinSolver().solve(p)
        case "exact": return try exact(deadline: deadline).solve(p)
        case "local": return try search(deadline: deadline).solve(p)
        case "ilp":
            // CBC starts from local search (a quarter of the time) where that finds a feasible plan.
            let start = try? search(deadline: Date().addingTimeInterval(deadline.timeIntervalSinceNow / 4)).solve(p)
            return try cbc(deadline: deadline, start: start?.placement).solve(p)
        case "bisect": return try BisectionSolver(deadline: deadline, shouldStop: { Interrupt.requested }).solve(p)
        default:
            // Exact where its pace says it ends within 90 % of the time (it gives up at once when not); else the
            // time goes to the ILP or to bisection and local search.
            let exactBy = Date().addingTimeInterval(deadline.timeIntervalSinceNow * 0.9)
            if let exact = try? exact(deadline: exactBy).solve(p) { return exact }
            if Interrupt.requested { throw PlacementError.unsolved("interrupted before any plan was found") }
            let bound = CombinatorialBound.lowerBound(p)
            guard ILPSolver.columns(p) <= ilpColumnLimit else {
                // Too large for CBC: bisection for half the time, then local search from its plan.
                let halfway = Date().addingTimeInterval(deadline.timeIntervalSinceNow / 2)
                let start = try? BisectionSolver(deadline: halfway, shouldStop: { Interrupt.requested }).solve(p)
                var refine = search(deadline: deadline)
                refine.start = start?.placement
                var local = try refine.solve(p)
                local.solver = start == nil ? "local" : "bisect+local"
                local.lowerBound = bound
                return local
            }
            let local = try search(deadline: Date().addingTimeInterval(deadline.timeIntervalSinceNow / 4)).solve(p)
            var best = try cbc(deadline: deadline, start: local.placement).solve(p)
            if local.objective < best.objective { best = PlacementSolution(placement: local.placement, objective: local.objective,
                                                                          lowerBound: best.lowerBound, solver: "local") }
            best.lowerBound = max(best.lowerBound ?? 0, bound)
            return best
        }
    }
}

extension PlanDefaults {
    /// The ILP with a progress line while CBC runs; Ctrl-C returns the start plan at once.
    static func cbc(deadline: Date, start: Placement?) -> ILPSolver {
        let terminal = isatty(STDERR_FILENO) != 0
        let limit = max(1, deadline.timeIntervalSinceNow)
        return ILPSolver(timeLimit: limit, start: start, progress: { seconds in
            let line = String(format: "moe plan: CBC running, %.0f of %.0f s (Ctrl-C keeps the start plan)", seconds, limit)
            FileHandle.standardError.write(Data((terminal ? "\r" + line : line + "\n").utf8))
        }, shouldStop: { Interrupt.requested })
    }

    /// The exact program, with a progress line once it has run for a second: on a terminal every half second, else
    /// a plain line every 5 s.
    static func exact(deadline: Date) -> ExactSolver {
        let terminal = isatty(STDERR_FILENO) != 0
        let start = Date()
        nonisolated(unsafe) var shown = start
        return ExactSolver(deadline: deadline, progress: { done, total in
            guard Date().timeIntervalSince(shown) >= (shown == start ? 1 : terminal ? 0.5 : 5) else { return }
            shown = Date()
            let line = String(format: "moe plan: exact, %.0f %% after %.1f s", 100 * Double(done) / Double(max(total, 1)), Date().timeIntervalSince(start))
            FileHandle.standardError.write(Data((terminal ? "\r" + line : line + "\n").utf8))
        }, shouldStop: { Interrupt.requested })
    }

    /// Local search that shows its progress on stderr and stops on Ctrl-C with the best plan so far.
    static func search(deadline: Date) -> LocalSearchSolver {
        let terminal = isatty(STDERR_FILENO) != 0
        let start = Date()
        nonisolated(unsafe) var shown: Date?
        return LocalSearchSolver(deadline: deadline, progress: { objective in
            // Improvements come many a second: a line at most every half second.
            guard shown.map({ Date().timeIntervalSince($0) >= 0.5 }) ?? true else { return }
            shown = Date()
            let line = String(format: "moe plan: local search, objective %.3f after %.1f s", objective, Date().timeIntervalSince(start))
            FileHandle.standardError.write(Data((terminal ? "\r" + line : line + "\n").utf8))
        }, shouldStop: { Interrupt.requested })
    }
}

/// Ctrl-C during a solve: the solvers that can stop early return their best plan, which is written as usual.
enum Interrupt {
    nonisolated(unsafe) static var flag: sig_atomic_t = 0
    static var requested: Bool { flag != 0 }

    static let handler: @convention(c) (Int32) -> Void = { _ in Interrupt.flag = 1 }

    static func catching<T>(_ body: () throws -> T) rethrows -> T {
        // A parent may have started us with SIGINT blocked (a thread of a test runner or a service manager).
        var unblock = sigset_t()
        sigemptyset(&unblock)
        sigaddset(&unblock, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        let previous = signal(SIGINT, handler)
        defer {
            signal(SIGINT, previous)
            if isatty(STDERR_FILENO) != 0 { FileHandle.standardError.write(Data("\n".utf8)) }
        }
        return try body()
    }
}

/// A short digest of trace files' bytes (FNV-1a 64), recorded in plans.
enum TraceDigest {
    static func of(paths: [String]) throws -> String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for p in paths {
            guard let data = FileManager.default.contents(atPath: p) else { throw PlacementError.unreadable(path: p, reason: "cannot read") }
            for b in data { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        }
        return String(format: "fnv1a64:%016llx", h)
    }
}

extension MoE.Plan {
    /// Parses `--default-weights W1,W2,…`: positive finite numbers, highest first (nil when not given).
    static func parseDefaultWeights(_ text: String?) throws -> [Double]? {
        guard let text else { return nil }
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard !parts.isEmpty, parts.allSatisfy({ $0 != nil && $0!.isFinite && $0! > 0 }) else {
            throw ValidationError("--default-weights takes positive numbers separated by commas, such as 0.65,0.35, not '\(text)'")
        }
        let w = parts.map { $0! }
        guard zip(w, w.dropFirst()).allSatisfy({ $0 >= $1 }) else {
            throw ValidationError("--default-weights go highest first (the trace lists a token's experts by weight), not '\(text)'")
        }
        return w
    }
}

extension PlanFile {
    /// FNV-1a 64 of the placement table and shape, so a plan's content can be recognised.
    var contentHash: String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for v in [layers, experts, topK, ranks, nodes] + rankOf.joined() {
            for b in withUnsafeBytes(of: Int64(v).littleEndian, Array.init) { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        }
        return String(format: "fnv1a64:%016llx", h)
    }
}
