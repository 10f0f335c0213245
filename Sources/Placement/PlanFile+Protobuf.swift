import Foundation
import SwiftProtobuf
import Wire

extension PlanFile {
    /// The protobuf message of this plan (`Protocols/placement.proto`).
    public var message: Moe_Placement_Plan {
        var m = Moe_Placement_Plan()
        m.version = Int32(version)
        m.layers = Int32(layers)
        m.experts = Int32(experts)
        m.topK = Int32(topK)
        m.ranks = Int32(ranks)
        m.nodes = Int32(nodes)
        m.rankOf = rankOf.map { row in Google_Protobuf_ListValue(values: row.map { Google_Protobuf_Value(numberValue: Double($0)) }) }
        m.solver = solver
        m.objective = objective ?? 0
        m.lowerBound = lowerBound ?? 0
        m.traceDigest = traceDigest ?? ""
        m.hash = hash ?? ""
        m.maxLoad = maxLoad ?? 0
        m.defaultWeights = (defaultWeights ?? []).map(Float.init)
        return m
    }

    public init(message m: Moe_Placement_Plan) {
        self.init(placement: Placement(rankOf: m.rankOf.map { $0.values.map { Int($0.numberValue) } }, ranks: Int(m.ranks)), topK: Int(m.topK),
                  nodes: Int(m.nodes), solver: m.solver, objective: m.objective, lowerBound: m.lowerBound,
                  traceDigest: m.traceDigest.isEmpty ? nil : m.traceDigest)
        version = Int(m.version)
        layers = Int(m.layers)
        experts = Int(m.experts)
        hash = m.hash.isEmpty ? nil : m.hash
        maxLoad = m.maxLoad > 0 ? m.maxLoad : nil
        defaultWeights = m.defaultWeights.isEmpty ? nil : m.defaultWeights.map(Double.init)
    }

    /// Writes the plan as binary protobuf.
    public func writeProtobuf(path: String) throws {
        try Data(message.serializedBytes() as [UInt8]).write(to: URL(fileURLWithPath: path))
    }

    /// Reads a plan file, JSON or binary protobuf by its extension (`.pb`, `.binpb`) or, failing that, its first byte.
    public static func read(path: String) throws -> PlanFile {
        let isBinary = path.hasSuffix(".pb") || path.hasSuffix(".binpb")
        guard isBinary else { return try load(path: path) }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PlacementError.unreadable(path: path, reason: FileManager.default.fileExists(atPath: path) ? "cannot read" : "no such file")
        }
        let plan: PlanFile
        do { plan = PlanFile(message: try Moe_Placement_Plan(serializedBytes: [UInt8](data))) } catch {
            throw PlacementError.unreadable(path: path, reason: "not a protobuf plan")
        }
        guard plan.version == 1, plan.rankOf.count == plan.layers else {
            throw PlacementError.unreadable(path: path, reason: "not a version-1 plan with one rank_of row per layer")
        }
        return plan
    }
}
