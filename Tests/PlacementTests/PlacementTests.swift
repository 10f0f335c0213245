import Foundation
import Placement
import Testing

@Suite struct PlacementTests {
    @Test(arguments: [(8, 1), (8, 2), (8, 3), (8, 4), (8, 8), (60, 7)])
    func contiguousGivesEachRankAnUnbrokenRun(experts: Int, ranks: Int) throws {
        let p = Placement.contiguous(layers: 2, experts: experts, ranks: ranks)
        for r in 0..<ranks {
            #expect(p.experts(of: r, layer: 1) == Array((r * experts / ranks)..<((r + 1) * experts / ranks)))
        }
        try p.validate(layers: 2, experts: experts, ranks: ranks)
    }

    @Test func validationNamesWhatDoesNotFit() {
        let p = Placement.contiguous(layers: 3, experts: 8, ranks: 4)
        #expect(throws: PlacementError.mismatch("the plan has 3 layers, the model 4")) {
            try p.validate(layers: 4, experts: 8, ranks: 4)
        }
        #expect(throws: PlacementError.mismatch("the plan is for 4 ranks, the job has 2")) { try p.validate(layers: 3, experts: 8, ranks: 2) }
        var crowded = p
        crowded.rankOf[1] = [0, 0, 0, 1, 1, 2, 2, 3]
        #expect(throws: PlacementError.invalid("layer 1 puts 3 experts on rank 0, over the capacity of 2")) {
            try crowded.validate(layers: 3, experts: 8, ranks: 4)
        }
        var outside = p
        outside.rankOf[2][5] = 4
        #expect(throws: PlacementError.invalid("layer 2 expert 5 is on rank 4, outside 0..<4")) {
            try outside.validate(layers: 3, experts: 8, ranks: 4)
        }
        var idle = Placement.contiguous(layers: 1, experts: 8, ranks: 4)
        idle.rankOf[0] = [0, 0, 1, 1, 2, 2, 2, 2]
        #expect(throws: PlacementError.self) { try idle.validate(layers: 1, experts: 8, ranks: 4, capacity: 4) }
    }

    @Test func planFilesRoundTripAndRejectBadOnes() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("plan-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let plan = PlanFile(placement: .roundRobin(layers: 2, experts: 8, ranks: 4), topK: 2, solver: "round-robin", objective: 1.5)
        try plan.write(path: path)
        #expect(try PlanFile.load(path: path) == plan)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        #expect(json["rank_of"] as? [[Int]] == [[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 3, 0, 1, 2, 3]])
        #expect(json["top_k"] as? Int == 2)

        try Data(#"{"version": 1, "layers": 3, "experts": 8, "top_k": 2, "ranks": 4, "nodes": 1, "rank_of": [[0]], "solver": "x"}"#.utf8)
            .write(to: URL(fileURLWithPath: path))
        #expect(throws: PlacementError.unreadable(path: path, reason: "rank_of has 1 layers, the header says 3")) { try PlanFile.load(path: path) }
        try Data(#"{"version": 1}"#.utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: PlacementError.self) { try PlanFile.load(path: path) }
        #expect(throws: PlacementError.unreadable(path: "/nonexistent.json", reason: "no such file")) { try PlanFile.load(path: "/nonexistent.json") }
    }

    @Test func tracesOfBothFormatsParseAndDropIncompleteTokens() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("trace-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let ours = dir.appendingPathComponent("ours.jsonl"), vllm = dir.appendingPathComponent("vllm.jsonl")
        var lines: [String] = []
        for t in 0..<3 { for l in 0..<2 { lines.append(#"{"sequence": 0, "token": \#(t), "layer": \#(l), "experts": [\#(t + l), 7], "weights": [0.75, 0.25]}"#) } }
        lines.removeLast()  // token 2 lacks layer 1
        try lines.joined(separator: "\n").write(to: ours, atomically: true, encoding: .utf8)
        try [#"{"dataset": "gsm8k", "problem_id": 4, "token_idx": 9, "layer": 1, "experts": [3, 1], "gating_probs": [0.6, 0.4]}"#,
             #"{"dataset": "gsm8k", "problem_id": 4, "token_idx": 9, "layer": 0, "experts": [2, 5], "gating_probs": [0.9, 0.1]}"#]
            .joined(separator: "\n").write(to: vllm, atomically: true, encoding: .utf8)
        let trace = try RoutingTrace.load(paths: [ours.path, vllm.path])
        #expect(trace.layers == 2 && trace.experts == 8 && trace.topK == 2)
        #expect(trace.skippedTokens == 1)
        #expect(trace.sequences.map(\.tokens.count) == [2, 1])
        #expect(trace.sequences[0].tokens[1][1] == RoutingTrace.Choice(experts: [2, 7], weights: [0.75, 0.25]))
        #expect(trace.sequences[1].name == "gsm8k/4")
        #expect(trace.sequences[1].tokens[0][0].experts == [2, 5])

        try #"{"sequence": 0, "token": 0, "layer": 0, "experts": [1, 2], "weights": [0.5]}"#.write(to: ours, atomically: true, encoding: .utf8)
        #expect(throws: RoutingTrace.LineError.self) { try RoutingTrace.load(paths: [ours.path]) }
        do {
            _ = try RoutingTrace.load(paths: [ours.path])
        } catch {
            #expect("\(error)" == "\(ours.path):1: 'weights' must be a list of 2 numbers >= 0")
        }
    }

    /// Lines are parsed concurrently; the first bad line in file order is still the one named.
    @Test func theFirstBadLineIsNamed() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID().uuidString).jsonl")
        defer { try? FileManager.default.removeItem(at: path) }
        var lines = (0..<200).map { #"{"sequence": 0, "token": \#($0 / 2), "layer": \#($0 % 2), "experts": [1, 2], "weights": [0.5, 0.5]}"# }
        lines[180] = "not json"
        lines[6] = #"{"sequence": 0, "token": 3, "layer": 0, "experts": [1, 2, 3], "weights": [0.5, 0.5, 0.1]}"#  // top-3 after top-2
        lines[60] = #"{"sequence": 0, "token": 30, "experts": [1, 2], "weights": [0.5, 0.5]}"#
        try lines.joined(separator: "\n").write(to: path, atomically: true, encoding: .utf8)
        #expect(throws: RoutingTrace.LineError(path: path.path, line: 7, reason: "3 experts where earlier lines had 2")) {
            try RoutingTrace.load(paths: [path.path])
        }
        lines[6] = lines[5]
        try lines.joined(separator: "\n").write(to: path, atomically: true, encoding: .utf8)
        #expect(throws: RoutingTrace.LineError(path: path.path, line: 61, reason: "'layer' is missing or negative")) {
            try RoutingTrace.load(paths: [path.path])
        }
    }

    /// A model whose layer 1 is dense (no routing): the trace keeps layers 0 and 2, a token's transition goes from
    /// one to the other, and a plan of those two layers becomes one of the model's three.
    @Test func denseLayersAreLeftOutOfTheTraceAndFilledInThePlan() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("dense-\(UUID().uuidString).jsonl")
        defer { try? FileManager.default.removeItem(at: path) }
        var lines: [String] = []
        for t in 0..<3 { for l in [0, 2] { lines.append(#"{"sequence": 0, "token": \#(t), "layer": \#(l), "experts": [\#(t + l)], "weights": [1]}"#) } }
        lines.removeLast()  // token 2 lacks layer 2
        try lines.joined(separator: "\n").write(to: path, atomically: true, encoding: .utf8)
        let trace = try RoutingTrace.load(paths: [path.path])
        #expect(trace.layers == 2 && trace.layerIds == [0, 2] && trace.modelLayers == 3)
        #expect(trace.skippedTokens == 1)
        #expect(trace.sequences[0].tokens.map { $0.map(\.experts) } == [[[0], [2]], [[1], [3]]])
        #expect(try RoutingTrace.load(paths: [path.path], layers: 5).modelLayers == 5)
        // Token 0 goes 0 → 2, token 1 goes 1 → 3: with {0, 1} | {2, 3} in layer 0 and {0, 2} | {1, 3} in layer 2 the
        // first stays on rank 0 and the second crosses to rank 1.
        let routed = Placement(rankOf: [[0, 0, 1, 1], [0, 1, 0, 1]], ranks: 2)
        #expect(Evaluation(placement: routed, trace: trace).crossRankTopOne == 0.5)
        let model = routed.model(layers: 3, routed: trace.layerIds)
        #expect(model.rankOf == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 0, 1]])
        #expect(model.routed(trace.layerIds) == routed)
    }
}
