import Foundation
import Placement
import SwiftProtobuf
import Testing
import Wire

@Suite struct PlanFormatTests {
    func samplePlan() -> PlanFile {
        var plan = PlanFile(placement: Placement(rankOf: [[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1]], ranks: 2), topK: 2, nodes: 1,
                            solver: "exact", objective: 12.5, lowerBound: 12.5, traceDigest: "fnv1a64:0123")
        plan.hash = "fnv1a64:abcd"
        plan.maxLoad = 1.25
        return plan
    }

    @Test func protobufRoundTrips() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("plan-\(UUID().uuidString).pb").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try samplePlan().writeProtobuf(path: path)
        #expect(try PlanFile.read(path: path) == samplePlan())
        try Data("not protobuf at all".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: PlacementError.self) { try PlanFile.read(path: path) }
    }

    @Test func theJSONFormIsTheProtobufJSONMappingWithProtoFieldNames() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("plan-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try samplePlan().write(path: path)
        let json = try Data(contentsOf: URL(fileURLWithPath: path))
        // Our JSON parses as the message ...
        let message = try Moe_Placement_Plan(jsonUTF8Data: json)
        #expect(PlanFile(message: message) == samplePlan())
        // ... and the message's own JSON, with proto field names, reads back as our plan file.
        var options = JSONEncodingOptions()
        options.preserveProtoFieldNames = true
        let mapped = try message.jsonUTF8Data(options: options)
        try mapped.write(to: URL(fileURLWithPath: path))
        #expect(try PlanFile.load(path: path) == samplePlan())
        let object = try JSONSerialization.jsonObject(with: mapped) as! [String: Any]
        #expect(object["rank_of"] as? [[Int]] == samplePlan().rankOf)
        #expect(object["lower_bound"] as? Double == 12.5)
        #expect(object["max_load"] as? Double == 1.25)
    }
}

/// Traces whose lines carry expert ids only (MT-Bench's dump): read, weighted by default, and recorded in plans.
@Suite struct UnweightedTraceTests {
    func write(_ lines: [String]) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("trace-\(UUID().uuidString).jsonl").path
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func line(_ token: Int, _ layer: Int, _ experts: [Int], weights: [Double]? = nil) -> String {
        let w = weights.map { #", "gating_probs": \#($0)"# } ?? ""
        return #"{"dataset": "mtbench_math", "problem_id": 3, "layer": \#(layer), "experts": \#(experts)\#(w), "token_idx": \#(token)}"#
    }

    @Test func linesWithoutWeightsGetEqualSharesOrTheGivenOnes() throws {
        let path = try write([line(0, 0, [3, 1]), line(0, 1, [2, 0], weights: [0.9, 0.1]), line(1, 0, [1, 2]), line(1, 1, [0, 3])])
        defer { try? FileManager.default.removeItem(atPath: path) }
        let equal = try RoutingTrace.load(paths: [path])
        #expect(equal.unweightedLines == 3 && equal.defaultWeights == [0.5, 0.5])
        let tokens = equal.sequences[0].tokens
        #expect(tokens[0][0] == .init(experts: [3, 1], weights: [0.5, 0.5], weighted: false))
        #expect(tokens[0][1] == .init(experts: [2, 0], weights: [0.9, 0.1], weighted: true))
        let given = try RoutingTrace.load(paths: [path], defaultWeights: [0.65, 0.35])
        #expect(given.sequences[0].tokens[1][1].weights == [0.65, 0.35] && given.defaultWeights == [0.65, 0.35])
        // The statistics follow the weights: the (3 → 2) transition of token 0 weighs 0.5 · 0.9 with equal shares.
        let stats = TraceStatistics(equal)
        #expect(abs(stats.transitions[0][3 * 4 + 2] - 0.45) < 1e-6)
        // Every line weighted: nothing filled in.
        let weighted = try write([line(0, 0, [3, 1], weights: [0.6, 0.4])])
        defer { try? FileManager.default.removeItem(atPath: weighted) }
        let w = try RoutingTrace.load(paths: [weighted])
        #expect(w.unweightedLines == 0 && w.defaultWeights == nil)
    }

    @Test func wrongWeightsStillNameTheirLine() throws {
        let path = try write([line(0, 0, [3, 1]), line(0, 1, [2, 0], weights: [0.9])])
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: RoutingTrace.LineError(path: path, line: 2, reason: "'gating_probs' must be a list of 2 numbers >= 0")) {
            try RoutingTrace.load(paths: [path])
        }
        #expect(throws: RoutingTrace.LineError(path: path, line: 1, reason: "no weights on the line, and --default-weights has 3 for its 2 experts")) {
            try RoutingTrace.load(paths: [path], defaultWeights: [0.5, 0.3, 0.2])
        }
    }

    @Test func plansRecordTheDefaultWeightsInBothForms() throws {
        var plan = PlanFile(placement: Placement(rankOf: [[0, 1], [1, 0]], ranks: 2), topK: 2, solver: "exact")
        plan.defaultWeights = [0.65, 0.35]
        let json = FileManager.default.temporaryDirectory.appendingPathComponent("plan-\(UUID().uuidString).json").path
        let pb = json.replacingOccurrences(of: ".json", with: ".pb")
        defer { try? FileManager.default.removeItem(atPath: json); try? FileManager.default.removeItem(atPath: pb) }
        try plan.write(path: json)
        try plan.writeProtobuf(path: pb)
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as! [String: Any]
        #expect(object["default_weights"] as? [Double] == [0.65, 0.35])
        #expect(try PlanFile.read(path: json).defaultWeights == [0.65, 0.35])
        // float on the wire: 0.65 comes back as Float(0.65) widened.
        #expect(try PlanFile.read(path: pb).defaultWeights == [Double(Float(0.65)), Double(Float(0.35))])
    }
}
