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
