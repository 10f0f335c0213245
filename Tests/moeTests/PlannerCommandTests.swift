import Foundation
@testable import Models
import Placement
import Testing

@Suite(.serialized) struct PlannerCommandTests {
    @Test func traceRecordsEveryTokenAndLayerAsTheRouterChose() throws {
        let trace = TemporaryPath(".jsonl")
        let r = try MoEBinary.run(["trace", "--model", fixture("tiny-mixtral"), "--prompt-ids", "43,255,161", "--max-new-tokens", "4",
                                   "--output", trace.path])
        #expect(r.status == 0, "\(r.stderr)")
        let t = try RoutingTrace.load(paths: [trace.path])
        // 3 prompt positions, then 3 decode steps (the 4th token is sampled, never run): 6 positions × 3 layers.
        #expect(t.layers == 3 && t.topK == 2 && t.sequences.count == 1 && t.sequences[0].tokens.count == 6)
        let model = try MoEDecoder.load(directory: fixture("tiny-mixtral"))
        var ids: [[Int]] = []
        model.routingObserver = { _, r in for i in 0..<r.tokens { ids.append((0..<r.topK).map { Int(r.ids[i * r.topK + $0]) }) } }
        _ = try model.forward(.init(tokens: [43, 255, 161], cache: model.makeCache()), logits: .all)
        for l in 0..<3 { for p in 0..<3 { #expect(t.sequences[0].tokens[p][l].experts == ids[l * 3 + p]) } }
    }

    /// With `--attention routed` the trace begins each sequence with its decisions, one line per layer, the same
    /// under mpirun as in one process and the same as `moe generate` reports; the planner skips them.
    @Test func traceRecordsRoutedAttentionDecisionsThatThePlannerSkips() throws {
        let requests = TemporaryPath(".jsonl"), single = TemporaryPath(".jsonl"), cluster = TemporaryPath(".jsonl")
        try """
        {"id": "a", "prompt_ids": [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], "max_new_tokens": 3, "temperature": 0}
        {"id": "b", "prompt_ids": [200, 17, 3], "max_new_tokens": 3, "temperature": 0, "arrival_step": 1}
        """.write(toFile: requests.path, atomically: true, encoding: .utf8)
        let flags = ["--model", fixture("tiny-mixtral-router"), "--requests", requests.path, "--attention", "routed",
                     "--sparse-sink", "0", "--sparse-window", "4", "--sparse-block", "1", "--router-pool", "3"]
        let s = try MoEBinary.run(["trace"] + flags + ["--output", single.path])
        let c = try MPIRun.run(3, ["trace"] + flags + ["--output", cluster.path, "--dispatch", "coherent"])
        let g = try MoEBinary.run(["generate"] + flags)
        #expect(s.status == 0 && c.status == 0 && g.status == 0, "\(s.stderr) \(c.stderr) \(g.stderr)")
        func decisions(_ path: String) throws -> [[String: Any]] {
            try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
                .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }.filter { $0["attention"] != nil }
        }
        let a = try decisions(single.path), b = try decisions(cluster.path)
        #expect(a.count == 2 * 3 && b.count == a.count)
        for (x, y) in zip(a, b) {
            #expect(x["sequence"] as? Int == y["sequence"] as? Int && x["layer"] as? Int == y["layer"] as? Int)
            #expect(x["attention"] as? String == y["attention"] as? String)
        }
        let reported = g.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        for (sequence, id) in ["a", "b"].enumerated() {
            let sparse = reported.first { $0["id"] as? String == id }?["sparse_layers"] as? [Int]
            let traced = a.filter { $0["sequence"] as? Int == sequence && $0["attention"] as? String == "sparse" }.compactMap { $0["layer"] as? Int }
            #expect(sparse != nil && traced == sparse, "\(id)")
        }
        let t = try RoutingTrace.load(paths: [single.path])
        #expect(t.sequences.count == 2 && t.sequences[0].tokens.count == 12 + 2 && t.layers == 3)
    }

    /// Qwen3-MoE's fixture has a dense layer 1: trace, plan, evaluate and the cluster all take it.
    @Test func aModelWithADenseLayerIsTracedPlannedAndRun() throws {
        let trace = TemporaryPath(".jsonl"), plan = TemporaryPath(".json")
        let ref = Reference.all["tiny-qwen3moe"]!
        let prompt = ref.prompt.map(String.init).joined(separator: ",")
        let r = try MoEBinary.run(["trace", "--model", fixture("tiny-qwen3moe"), "--prompt-ids", prompt, "--max-new-tokens", "6", "--output", trace.path])
        #expect(r.status == 0, "\(r.stderr)")
        let t = try RoutingTrace.load(paths: [trace.path])
        #expect(t.layerIds == [0, 2] && t.modelLayers == 3)
        let p = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "2", "--output", plan.path])
        #expect(p.status == 0, "\(p.stderr)")
        #expect(p.stdout.contains("2 layers (and 1 dense) × 8 experts"), "\(p.stdout)")
        let file = try PlanFile.load(path: plan.path)
        #expect(file.layers == 3)
        let problem = PlacementProblem(statistics: TraceStatistics(t), ranks: 2)
        #expect(abs(problem.objective.cost(file.placement.routed(t.layerIds), problem.statistics) - file.objective!) < 1e-6)
        let e = try MoEBinary.run(["plan", "evaluate", "--plan", plan.path, "--trace", trace.path, "--json"])
        #expect(e.status == 0, "\(e.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(e.lastLine.utf8)) as! [String: Any]
        #expect(abs((json["cross_rank_top1"] as! Double) - Evaluation(placement: file.placement.routed(t.layerIds), trace: t).crossRankTopOne) < 1e-12)
        let g = try MPIRun.run(2, ["generate", "--model", fixture("tiny-qwen3moe"), "--prompt-ids", prompt, "--max-new-tokens", "8",
                                   "--temperature", "0", "--json", "--placement", plan.path])
        #expect(g.status == 0, "\(g.stderr)")
        #expect((try JSONSerialization.jsonObject(with: Data(g.lastLine.utf8)) as? [String: Any])?["tokens"] as? [Int] == ref.greedy)
        // The trace drives the cluster's routers on this model, and is refused by one whose layers all route.
        let bench = ["bench", "--batch", "1", "--prompt-len", "2", "--gen-len", "2", "--repetitions", "1", "--format", "json",
                     "--routing", "replay:" + trace.path]
        let b = try MPIRun.run(2, bench + ["--model", fixture("tiny-qwen3moe"), "--placement", plan.path])
        #expect(b.status == 0, "\(b.stderr)")
        let wrong = try MPIRun.run(2, bench + ["--model", fixture("tiny-mixtral")])
        #expect(wrong.status == 1)
        #expect(wrong.stderr.contains("the trace routes layers 0,2, 8 experts, top-2; the model 3 layers, 8, top-2"), "\(wrong.stderr)")
    }

    @Test func planEvaluateAndImportAgreeWithTheLibrary() throws {
        let trace = TemporaryPath(".jsonl"), plan = TemporaryPath(".json"), pb = TemporaryPath(".pb")
        try randomTraceLines(layers: 4, experts: 8, tokens: 60).write(toFile: trace.path, atomically: true, encoding: .utf8)
        let r = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "4", "--output", plan.path])
        #expect(r.status == 0, "\(r.stderr)")
        let file = try PlanFile.load(path: plan.path)
        #expect(file.solver == "exact" && file.ranks == 4 && file.layers == 4 && file.topK == 2)
        let t = try RoutingTrace.load(paths: [trace.path])
        let problem = PlacementProblem(statistics: TraceStatistics(t), ranks: 4)
        #expect(abs(problem.objective.cost(file.placement, problem.statistics) - file.objective!) < 1e-6)
        #expect(file.lowerBound == file.objective)
        #expect(file.hash?.hasPrefix("fnv1a64:") == true && file.traceDigest?.hasPrefix("fnv1a64:") == true)

        let b = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "4", "--solver", "ilp", "--time-limit", "5", "--output", pb.path])
        #expect(b.status == 0, "\(b.stderr)")
        let ilp = try PlanFile.read(path: pb.path)
        // Within its time limit CBC may stop short of the optimum, but never below it, and its bound stays under it.
        #expect(ilp.objective! >= file.objective! - 1e-6)
        #expect(ilp.lowerBound! <= file.objective! + 1e-6)
        #expect(abs(problem.objective.cost(ilp.placement, problem.statistics) - ilp.objective!) < 1e-6)

        let e = try MoEBinary.run(["plan", "evaluate", "--plan", plan.path, "--trace", trace.path, "--json"])
        #expect(e.status == 0, "\(e.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(e.lastLine.utf8)) as! [String: Any]
        let want = Evaluation(placement: file.placement, trace: t)
        #expect(abs((json["cross_rank_top1"] as! Double) - want.crossRankTopOne) < 1e-12)
        for key in ["cross_rank_topk", "hops_per_token", "secondary_remote", "max_mean_load", "contiguous", "round_robin"] {
            #expect(json[key] != nil, "\(key)")
        }

        let csv = TemporaryPath(".csv"), imported = TemporaryPath(".json")
        try ("Expert,Node\n" + (0..<32).map { "\($0),\(($0 * 3) % 4)" }.joined(separator: "\n")).write(toFile: csv.path, atomically: true, encoding: .utf8)
        let i = try MoEBinary.run(["plan", "import", "--exflow", csv.path, "--output", imported.path])
        #expect(i.status == 0, "\(i.stderr)")
        #expect(try PlanFile.load(path: imported.path).rankOf[1] == (8..<16).map { ($0 * 3) % 4 })
    }

    @Test(arguments: [
        (#"{"sequence": 0, "token": 0, "layer": 0, "experts": [1, 2], "weights": [0.5, 0.5]}"# + "\nnot json\n", ["--ranks", "2"], ":2: not a JSON object"),
        (#"{"sequence": 0, "token": 0, "layer": 0, "experts": [1, 9], "weights": [0.5, 0.5]}"#, ["--ranks", "2", "--experts", "8"],
         ":1: expert 9 is out of range for a model of 8 experts per layer"),
        (#"{"sequence": 0, "token": 0, "layer": 5, "experts": [1, 2], "weights": [0.5, 0.5]}"#, ["--ranks", "2", "--layers", "4"],
         ":1: layer 5 is out of range for a model of 4 layers"),
        ("\n\n", ["--ranks", "2"], ".jsonl: no complete token in the trace"),
        (#"{"sequence": 0, "token": 0, "layer": 0, "experts": [1, 2], "weights": [0.5, 0.5]}"#, ["--ranks", "2", "--experts", "8", "--experts-per-rank", "3"],
         "2 ranks × 3 experts per rank cannot hold 8 experts per layer"),
        // One token: experts 1 and 2 carry all of layer 0's load, so on 4 ranks each is 2× the mean.
        (#"{"sequence": 0, "token": 0, "layer": 0, "experts": [1, 2], "weights": [0.5, 0.5]}"#, ["--ranks", "4", "--experts", "8", "--max-load", "1.5"],
         "expert 1 of layer 0 alone carries 2.00× the mean rank load; --max-load 1.5 cannot be met"),
    ] as [(String, [String], String)])
    func badTracesAndProblemsFailWithOneLine(content: String, args: [String], message: String) throws {
        let trace = TemporaryPath(".jsonl")
        try content.write(toFile: trace.path, atomically: true, encoding: .utf8)
        let r = try MoEBinary.run(["plan", "--trace", trace.path, "--output", "/tmp/unused-plan.json"] + args)
        #expect(r.status == 1)
        #expect(r.stderr.contains(message), "\(r.stderr)")
    }

    /// `--max-load`: every layer's rank loads within the bound in the written plan, for each solver that takes it;
    /// below 1 is a usage error.
    @Test(arguments: ["auto", "exact", "ilp", "local", "bisect"])
    func maxLoadIsKeptByThePlan(solver: String) throws {
        let trace = TemporaryPath(".jsonl"), plan = TemporaryPath(".json")
        try randomTraceLines(layers: 4, experts: 8, tokens: 120).write(toFile: trace.path, atomically: true, encoding: .utf8)
        let r = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "4", "--max-load", "1.1", "--solver", solver,
                                   "--time-limit", "4", "--output", plan.path])
        #expect(r.status == 0, "\(r.stderr)")
        let problem = PlacementProblem(statistics: TraceStatistics(try RoutingTrace.load(paths: [trace.path])), ranks: 4)
        let bounded = PlacementProblem(statistics: problem.statistics, ranks: 4, maxLoad: 1.1)
        #expect(bounded.overload(try ExactSolver().solve(problem).placement) > 0, "the bound binds: the unbounded optimum breaks it")
        let file = try PlanFile.load(path: plan.path)
        #expect(file.maxLoad == 1.1)
        let placement = file.placement
        for l in 0..<4 {
            let mean = problem.statistics.load[l].reduce(0, +) / 4
            #expect(problem.rankLoads(placement, layer: l).max()! <= 1.1 * mean + 1e-9, "layer \(l)")
        }
        let bad = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "4", "--max-load", "0.8", "--output", plan.path])
        #expect(bad.status == 64)
        // The contiguous baseline does not look at the bound: it is refused, not written.
        let other = TemporaryPath(".json")
        let baseline = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "4", "--max-load", "1.1", "--solver", "contiguous", "--output", other.path])
        #expect(bounded.overload(.contiguous(layers: 4, experts: 8, ranks: 4)) > 0)
        #expect(baseline.status == 1 && baseline.stderr.contains("the contiguous plan breaks --max-load 1.1"), "\(baseline.stderr)")
        #expect(!FileManager.default.fileExists(atPath: other.path))
    }

    /// Ctrl-C while the ILP or local search runs (after its first progress line): the command ends within seconds,
    /// exit 0, with the best plan so far written and the plan line saying which.
    @Test(arguments: [("ilp", 16, 8, 400, "CBC running", "ilp (interrupted, start kept)"),
                      ("local", 24, 64, 1500, "local search, objective", "local:")])
    func ctrlCKeepsTheBestPlanSoFar(solver: String, layers: Int, experts: Int, tokens: Int, progress: String, line: String) throws {
        let plan = TemporaryPath(".json")
        let r = try interruptPlan(["--ranks", "4", "--solver", solver, "--time-limit", "120", "--output", plan.path], layers: layers, experts: experts, tokens: tokens,
                                  after: progress)
        #expect(r.status == 0 && r.seconds < 3, "exit \(r.status) after \(r.seconds) s")
        #expect(r.stdout.contains(line), "\(r.stdout)")
        let written = try PlanFile.load(path: plan.path)
        try written.placement.validate(layers: layers, experts: experts, ranks: 4)
    }

    /// The exact program has no plan until it ends: Ctrl-C stops it at once with a message and no file.
    @Test func ctrlCStopsTheExactSolverWithoutAPlan() throws {
        let plan = TemporaryPath(".json")
        // A limit long enough for the whole program (else it gives up at once, seeing it cannot end in time).
        let r = try interruptPlan(["--ranks", "3", "--solver", "exact", "--time-limit", "36000", "--output", plan.path], layers: 6, experts: 12, tokens: 100,
                                  after: "moe plan: exact")
        #expect(r.status == 1 && r.seconds < 3, "exit \(r.status) after \(r.seconds) s")
        #expect(r.stderr.contains("no plan: interrupted before the exact solver finished"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: plan.path))
    }

    /// Runs `moe plan` on a random trace, sends SIGINT once stderr shows `progress`, and waits up to 30 s.
    func interruptPlan(_ args: [String], layers: Int, experts: Int, tokens: Int, after progress: String) throws
        -> (status: Int32, seconds: Double, stdout: String, stderr: String) {
        let trace = TemporaryPath(".jsonl"), err = TemporaryPath(".err")
        try randomTraceLines(layers: layers, experts: experts, tokens: tokens).write(toFile: trace.path, atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        let p = Process()
        p.executableURL = MoEBinary.url
        p.arguments = ["plan", "--trace", trace.path] + args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle(forWritingAtPath: err.path)
        try p.run()
        let waitUntil = Date().addingTimeInterval(60)
        while Date() < waitUntil, p.isRunning, !((try? String(contentsOfFile: err.path, encoding: .utf8))?.contains(progress) ?? false) {
            usleep(20_000)
        }
        #expect(p.isRunning, "the solver should still be running when interrupted")
        p.interrupt()
        let sent = Date()
        while p.isRunning && Date().timeIntervalSince(sent) < 30 { usleep(20_000) }
        let seconds = Date().timeIntervalSince(sent)
        if p.isRunning { p.terminate() }
        p.waitUntilExit()
        let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (p.terminationStatus, seconds, stdout, (try? String(contentsOfFile: err.path, encoding: .utf8)) ?? "")
    }

    /// On two nodes CBC's root can run a minute past a 3 s limit (its own limit is checked between search nodes):
    /// the planner gives up on it at the limit and keeps the start.
    @Test func ilpKeepsItsTimeLimit() throws {
        let trace = TemporaryPath(".jsonl"), plan = TemporaryPath(".json")
        try randomTraceLines(layers: 16, experts: 8, tokens: 400).write(toFile: trace.path, atomically: true, encoding: .utf8)
        let started = Date()
        let r = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "8", "--nodes", "2", "--solver", "ilp", "--time-limit", "3", "--output", plan.path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Date().timeIntervalSince(started) < 8)
        let file = try PlanFile.load(path: plan.path)
        try file.placement.validate(layers: 16, experts: 8, ranks: 8)
        #expect(file.solver.hasPrefix("ilp"))
    }

    /// 12 experts on 3 ranks have 5,775 groupings per layer: the exact program takes far longer than a second.
    @Test func exactGivesUpAtTheTimeLimitAndAutoFallsBack() throws {
        let trace = TemporaryPath(".jsonl"), plan = TemporaryPath(".json")
        try randomTraceLines(layers: 6, experts: 12, tokens: 100).write(toFile: trace.path, atomically: true, encoding: .utf8)
        let started = Date()
        let exact = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "3", "--solver", "exact", "--time-limit", "1", "--output", plan.path])
        #expect(exact.status == 1)
        #expect(exact.stderr.contains("no plan: the exact solver would take about") && exact.stderr.contains("over the time limit (5775 groupings per layer)"),
                "\(exact.stderr)")
        #expect(!FileManager.default.fileExists(atPath: plan.path))
        #expect(Date().timeIntervalSince(started) < 10)
        let auto = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "3", "--time-limit", "3", "--output", plan.path])
        #expect(auto.status == 0, "\(auto.stderr)")
        let file = try PlanFile.load(path: plan.path)
        #expect(file.solver.hasPrefix("ilp") || file.solver == "local", "\(file.solver)")
        try file.placement.validate(layers: 6, experts: 12, ranks: 3, capacity: 4)
    }

    @Test func aPlanForAnotherShapeIsRefusedByEvaluate() throws {
        let trace = TemporaryPath(".jsonl"), plan = TemporaryPath(".json")
        try randomTraceLines(layers: 4, experts: 8, tokens: 10).write(toFile: trace.path, atomically: true, encoding: .utf8)
        try PlanFile(placement: .contiguous(layers: 3, experts: 8, ranks: 2), topK: 2, solver: "contiguous").write(path: plan.path)
        let r = try MoEBinary.run(["plan", "evaluate", "--plan", plan.path, "--trace", trace.path])
        #expect(r.status == 1)
        #expect(r.stderr.contains(":4: layer 3 is out of range for a model of 3 layers"), "\(r.stderr)")
    }

    @Test func evaluateAgainstAnotherPlanGivesTheSavingAndItsSpread() throws {
        let trace = TemporaryPath(".jsonl"), plan = TemporaryPath(".json"), other = TemporaryPath(".json")
        try randomTraceLines(layers: 4, experts: 8, tokens: 80).write(toFile: trace.path, atomically: true, encoding: .utf8)
        #expect(try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "4", "--output", plan.path]).status == 0)
        try PlanFile(placement: .contiguous(layers: 4, experts: 8, ranks: 4), topK: 2, solver: "contiguous").write(path: other.path)
        let args = ["plan", "evaluate", "--plan", plan.path, "--trace", trace.path, "--against", other.path, "--json"]
        let r = try MoEBinary.run(args)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("| against |") && r.stdout.contains("bootstrap sd"), "\(r.stdout)")
        let json = try JSONSerialization.jsonObject(with: Data(r.lastLine.utf8)) as! [String: Any]
        let against = json["against"] as! [String: Any]
        let t = try RoutingTrace.load(paths: [trace.path])
        let mine = Evaluation(placement: try PlanFile.load(path: plan.path).placement, trace: t)
        let theirs = Evaluation(placement: .contiguous(layers: 4, experts: 8, ranks: 4), trace: t)
        let saving = against["saving_top1"] as! Double, interval = against["saving_interval"] as! [Double]
        #expect(abs(saving - (theirs.crossRankTopOne - mine.crossRankTopOne)) < 1e-12)
        #expect(abs((against["cross_rank_top1"] as! Double) - theirs.crossRankTopOne) < 1e-12)
        #expect(saving > 0 && (against["saving_sd"] as! Double) > 0 && interval[0] <= saving && saving <= interval[1])
        #expect((against["saving_per_sequence"] as! [[String: Any]]).count == 1)
        // The same seed gives the same interval.
        #expect(try MoEBinary.run(args).lastLine == r.lastLine)
    }

    @Test(arguments: [
        (["--block", "0"], "--block must be at least 1"),
        (["--resamples", "0"], "--resamples must be between 1 and 1,000,000"),
        (["--against", "/nonexistent/plan.json"], "/nonexistent/plan.json"),
        (["--against", "SHAPE"], ": the plan has 3 layers of 8 experts, PLAN 4 of 8"),
    ] as [([String], String)])
    func badComparisonsFailWithOneLine(extra: [String], message: String) throws {
        let trace = TemporaryPath(".jsonl"), plan = TemporaryPath(".json"), shape = TemporaryPath(".json")
        try randomTraceLines(layers: 4, experts: 8, tokens: 10).write(toFile: trace.path, atomically: true, encoding: .utf8)
        try PlanFile(placement: .contiguous(layers: 4, experts: 8, ranks: 2), topK: 2, solver: "contiguous").write(path: plan.path)
        try PlanFile(placement: .contiguous(layers: 3, experts: 8, ranks: 2), topK: 2, solver: "contiguous").write(path: shape.path)
        let r = try MoEBinary.run(["plan", "evaluate", "--plan", plan.path, "--trace", trace.path] + extra.map { $0 == "SHAPE" ? shape.path : $0 })
        #expect(r.status != 0)
        #expect(r.stderr.contains(message.replacingOccurrences(of: "PLAN", with: plan.path)), "\(r.stderr)")
        #expect(r.stdout.isEmpty, "\(r.stdout)")
    }
}

/// Trace lines in moe trace's form with top-2 routing from a seeded generator.

/// MT-Bench's dump records expert ids only: `moe plan`, `plan evaluate` and `bench --routing replay:` take such lines.
@Suite(.serialized) struct UnweightedTraceCommandTests {
    /// `randomTraceLines` in the vLLM form without `gating_probs`.
    static func idsOnly(layers: Int, experts: Int, tokens: Int) -> String {
        randomTraceLines(layers: layers, experts: experts, tokens: tokens).split(separator: "\n").map { line -> String in
            let o = try! JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return #"{"dataset": "mtbench_x", "problem_id": \#(o["sequence"]!), "layer": \#(o["layer"]!), "experts": \#(o["experts"] as! [Int]), "token_idx": \#(o["token"]!)}"#
        }.joined(separator: "\n")
    }

    @Test func planAndEvaluateTakeLinesWithoutWeights() throws {
        let trace = TemporaryPath(".jsonl"), plan = TemporaryPath(".json"), given = TemporaryPath(".json")
        try Self.idsOnly(layers: 4, experts: 8, tokens: 50).write(toFile: trace.path, atomically: true, encoding: .utf8)
        let r = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "2", "--solver", "exact", "--output", plan.path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("200 trace lines have no weights: their experts get 0.5, 0.5"), "\(r.stderr)")
        #expect(try PlanFile.load(path: plan.path).defaultWeights == [0.5, 0.5])
        let w = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "2", "--solver", "exact", "--default-weights", "0.65,0.35",
                                   "--output", given.path])
        #expect(w.status == 0, "\(w.stderr)")
        let p = try PlanFile.load(path: given.path)
        #expect(p.defaultWeights == [0.65, 0.35])
        // The objective is the library's with those weights.
        let t = try RoutingTrace.load(paths: [trace.path], defaultWeights: [0.65, 0.35])
        let problem = PlacementProblem(statistics: TraceStatistics(t), ranks: 2)
        #expect(abs(problem.objective.cost(p.placement, problem.statistics) - p.objective!) < 1e-6)
        let e = try MoEBinary.run(["plan", "evaluate", "--plan", given.path, "--trace", trace.path, "--json"])
        #expect(e.status == 0, "\(e.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(e.lastLine.utf8)) as! [String: Any]
        #expect(abs((json["cross_rank_topk"] as! Double) - Evaluation(placement: p.placement, trace: t).crossRankTopK) < 1e-12)
    }

    @Test(arguments: [("0.3,0.7", "highest first"), ("0.5,x", "positive numbers"), ("0,1", "positive numbers"), ("0.5,0.3,0.2", "--default-weights has 3 for its 2 experts")])
    func badDefaultWeightsAreRefused(weights: String, message: String) throws {
        let trace = TemporaryPath(".jsonl"), plan = TemporaryPath(".json")
        try Self.idsOnly(layers: 2, experts: 4, tokens: 5).write(toFile: trace.path, atomically: true, encoding: .utf8)
        let r = try MoEBinary.run(["plan", "--trace", trace.path, "--ranks", "2", "--default-weights", weights, "--output", plan.path])
        #expect(r.status != 0)
        #expect(r.stderr.contains(message), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: plan.path))
    }

    /// The pair test's routing without weights: replay runs, and keeps its point-to-point traffic at zero.
    @Test func replayTakesLinesWithoutWeights() throws {
        let trace = TemporaryPath(".jsonl"), plan = TemporaryPath(".json")
        var lines: [String] = []
        for s in 0..<3 { for p in 0..<8 { for l in 0..<3 {
            let i = (p * 3 + l + s) % 4
            lines.append(#"{"dataset": "d", "problem_id": \#(s), "token_idx": \#(p), "layer": \#(l), "experts": [\#(2 * i + 1), \#(2 * i)]}"#)
        } } }
        try lines.joined(separator: "\n").write(toFile: trace.path, atomically: true, encoding: .utf8)
        try PlanFile(placement: Placement(rankOf: Array(repeating: (0..<8).map { $0 / 4 }, count: 3), ranks: 2), topK: 2, solver: "pairs").write(path: plan.path)
        let r = try MPIRun.run(2, ["bench", "--model", fixture("tiny-mixtral"), "--batch", "3", "--prompt-len", "4", "--gen-len", "4", "--repetitions", "1",
                                   "--format", "json", "--dispatch", "coherent", "--routing", "replay:" + trace.path, "--placement", plan.path])
        #expect(r.status == 0, "\(r.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(r.lastLine.utf8)) as! [String: Any]
        #expect((report["collectives_per_moe_layer"] as! [String: Double])["point_to_point"] == 0)
    }
}

func randomTraceLines(layers: Int, experts: Int, tokens: Int) -> String {
    var s: UInt64 = 99
    func next() -> Int { s = s &* 6364136223846793005 &+ 1442695040888963407; return Int(s >> 33) }
    var lines: [String] = []
    for t in 0..<tokens {
        var e = next() % experts
        for l in 0..<layers {
            var f = next() % experts
            if f == e { f = (f + 1) % experts }
            lines.append(#"{"sequence": 0, "token": \#(t), "layer": \#(l), "experts": [\#(e), \#(f)], "weights": [0.7, 0.3]}"#)
            e = next() % 3 == 0 ? next() % experts : (e + 2 * l + 1) % experts
        }
    }
    return lines.joined(separator: "\n")
}
