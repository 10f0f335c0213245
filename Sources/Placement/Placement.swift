import Foundation

/// Which rank holds each expert of each layer: `rankOf[layer][expert]`.
///
/// Pure data with its checks; the plan file format is the JSON of `../shared/DESIGN.md` (also the JSON mapping of
/// `Protocols/placement.proto`, with the proto field names).
public struct Placement: Sendable, Equatable {
    public var layers: Int
    public var experts: Int
    public var ranks: Int
    public var rankOf: [[Int]]

    public init(rankOf: [[Int]], ranks: Int) {
        self.rankOf = rankOf
        self.layers = rankOf.count
        self.experts = rankOf.first?.count ?? 0
        self.ranks = ranks
    }

    /// Rank r holds experts floor(r·E/G) ..< floor((r+1)·E/G) of every layer.
    public static func contiguous(layers: Int, experts: Int, ranks: Int) -> Placement {
        let row = (0..<experts).map { e in (0..<ranks).last { $0 * experts / ranks <= e }! }
        return Placement(rankOf: Array(repeating: row, count: layers), ranks: ranks)
    }

    /// Expert e of every layer on rank e mod G.
    public static func roundRobin(layers: Int, experts: Int, ranks: Int) -> Placement {
        Placement(rankOf: Array(repeating: (0..<experts).map { $0 % ranks }, count: layers), ranks: ranks)
    }

    /// The rows of model layers `ids` (a trace's routed layers), as a placement of those layers alone.
    public func routed(_ ids: [Int]) -> Placement { Placement(rankOf: ids.map { rankOf[$0] }, ranks: ranks) }

    /// A placement of routed layers `ids` as one of a model of `layers` layers: the dense layers between, which run
    /// no experts, get the contiguous row.
    public func model(layers: Int, routed ids: [Int]) -> Placement {
        var rows = Placement.contiguous(layers: layers, experts: experts, ranks: ranks).rankOf
        for (i, l) in ids.enumerated() { rows[l] = rankOf[i] }
        return Placement(rankOf: rows, ranks: ranks)
    }

    /// Per-rank capacity: ceil(E/G) experts of each layer.
    public var capacity: Int { (experts + ranks - 1) / max(ranks, 1) }

    /// Experts of `layer` held by `rank`, ascending.
    public func experts(of rank: Int, layer: Int) -> [Int] { (0..<experts).filter { rankOf[layer][$0] == rank } }

    /// Checks the placement against a model (`layers` MoE layers of `experts`) and a job of `ranks` ranks.
    public func validate(layers modelLayers: Int, experts modelExperts: Int, ranks jobRanks: Int, capacity limit: Int? = nil) throws {
        guard layers == modelLayers else { throw PlacementError.mismatch("the plan has \(layers) layers, the model \(modelLayers)") }
        guard experts == modelExperts else { throw PlacementError.mismatch("the plan has \(experts) experts per layer, the model \(modelExperts)") }
        guard ranks == jobRanks else { throw PlacementError.mismatch("the plan is for \(ranks) ranks, the job has \(jobRanks)") }
        let cap = limit ?? capacity
        for (l, row) in rankOf.enumerated() {
            guard row.count == experts else { throw PlacementError.invalid("layer \(l) lists \(row.count) experts, not \(experts)") }
            for (e, r) in row.enumerated() where r < 0 || r >= ranks {
                throw PlacementError.invalid("layer \(l) expert \(e) is on rank \(r), outside 0..<\(ranks)")
            }
            var counts = [Int](repeating: 0, count: ranks)
            for r in row { counts[r] += 1 }
            if let r = counts.indices.first(where: { counts[$0] > cap }) {
                throw PlacementError.invalid("layer \(l) puts \(counts[r]) experts on rank \(r), over the capacity of \(cap)")
            }
            if experts >= ranks, let r = counts.indices.first(where: { counts[$0] == 0 }) {
                throw PlacementError.invalid("layer \(l) leaves rank \(r) without experts")
            }
        }
    }
}

/// A plan that cannot be used.
public enum PlacementError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case mismatch(String)
    case invalid(String)
    /// A solver stopped (time limit, Ctrl-C) before it had any plan.
    case unsolved(String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "\(path): \(reason)"
        case .mismatch(let m): return "placement does not fit: \(m)"
        case .invalid(let m): return "invalid placement: \(m)"
        case .unsolved(let m): return "no plan: \(m)"
        }
    }
}

/// The plan file: a placement with what made it.
public struct PlanFile: Codable, Sendable, Equatable {
    public var version: Int
    public var layers: Int
    public var experts: Int
    public var topK: Int
    public var ranks: Int
    public var nodes: Int
    public var rankOf: [[Int]]
    public var solver: String
    public var objective: Double?
    public var lowerBound: Double?
    public var traceDigest: String?
    public var hash: String?
    /// The `--max-load` bound the plan was made under, if any.
    public var maxLoad: Double?
    /// The gate weights given to trace lines that had none (highest-ranked expert first); nil when every line of
    /// the traces carried its own.
    public var defaultWeights: [Double]?

    enum CodingKeys: String, CodingKey {
        case version, layers, experts, ranks, nodes, solver, objective, hash
        case maxLoad = "max_load"
        case defaultWeights = "default_weights"
        case topK = "top_k"
        case rankOf = "rank_of"
        case lowerBound = "lower_bound"
        case traceDigest = "trace_digest"
    }

    public init(placement: Placement, topK: Int, nodes: Int = 1, solver: String, objective: Double? = nil,
                lowerBound: Double? = nil, traceDigest: String? = nil) {
        version = 1
        layers = placement.layers
        experts = placement.experts
        self.topK = topK
        ranks = placement.ranks
        self.nodes = nodes
        rankOf = placement.rankOf
        self.solver = solver
        self.objective = objective
        self.lowerBound = lowerBound
        self.traceDigest = traceDigest
    }

    public var placement: Placement { Placement(rankOf: rankOf, ranks: ranks) }

    /// Reads a JSON plan, checking that its header agrees with its table.
    public static func load(path: String) throws -> PlanFile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PlacementError.unreadable(path: path, reason: FileManager.default.fileExists(atPath: path) ? "cannot read" : "no such file")
        }
        let plan: PlanFile
        do {
            plan = try JSONDecoder().decode(PlanFile.self, from: data)
        } catch {
            throw PlacementError.unreadable(path: path, reason: "not a plan file (\(Self.describe(error)))")
        }
        guard plan.version == 1 else { throw PlacementError.unreadable(path: path, reason: "unsupported version \(plan.version)") }
        guard plan.rankOf.count == plan.layers else {
            throw PlacementError.unreadable(path: path, reason: "rank_of has \(plan.rankOf.count) layers, the header says \(plan.layers)")
        }
        return plan
    }

    static func describe(_ error: Error) -> String {
        guard let e = error as? DecodingError else { return "not valid JSON" }
        switch e {
        case .keyNotFound(let key, _): return "missing key '\(key.stringValue)'"
        case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx):
            return "key '\(ctx.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: "."))' has the wrong type"
        default: return "not valid JSON"
        }
    }

    /// Writes the plan as one JSON object.
    public func write(path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path))
    }
}
