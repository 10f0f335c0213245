import Foundation

/// Recorded routing: for each sequence, each token, each layer, the chosen experts (highest weight first) and
/// their weights.
///
/// Reads two JSONL forms, one object per (token, layer): this project's (`sequence`, `token`, `layer`,
/// `experts`, `weights`, as `moe trace` writes) and the vLLM dump of `../shared/data/traces` (`dataset`,
/// `problem_id`, `token_idx`, `layer`, `experts`, `gating_probs`). Tokens that lack a layer are skipped and
/// counted; the rest keep their order as consecutive positions. Lines may lack the weights (MT-Bench's dump records
/// expert ids only): such a choice is marked `weighted == false` and gets the default weights the reader is given
/// (equal shares unless told otherwise), which is what the planner's statistics then use. Lines with an
/// `attention` key (`moe trace`'s routed-attention decisions) are not routing and are skipped.
///
/// Layers no line mentions are dense (a model's MLP-only layers, such as Qwen-MoE's `mlp_only_layers`): the trace
/// keeps only the routed ones, in order, so a token's transitions go from one routed layer to the next, and
/// `layerIds` says which model layer each is.
public struct RoutingTrace: Sendable {
    /// One layer's decision for one token.
    public struct Choice: Sendable, Equatable {
        public var experts: [Int]
        public var weights: [Float]
        /// Whether the trace line carried these weights (false: filled in with the reader's default weights).
        public var weighted: Bool
        public init(experts: [Int], weights: [Float], weighted: Bool = true) {
            self.experts = experts
            self.weights = weights
            self.weighted = weighted
        }

        /// The gate weights scaled to sum to 1 (equal shares when they sum to 0).
        public var normalisedWeights: [Double] {
            let s = weights.reduce(0) { $0 + Double($1) }
            return weights.map { s > 0 ? Double($0) / s : 1 / Double(weights.count) }
        }
    }

    /// One sequence: `tokens[p][layer]`.
    public struct Sequence: Sendable {
        public var name: String
        public var tokens: [[Choice]]
        public init(name: String, tokens: [[Choice]]) { self.name = name; self.tokens = tokens }
    }

    public var sequences: [Sequence]
    /// Routed layers (the length of each token's list).
    public var layers: Int
    /// The model layer of each routed layer, ascending.
    public var layerIds: [Int]
    /// Layers of the model, routed or dense (given, or one more than the largest layer seen).
    public var modelLayers: Int
    /// One more than the largest expert id seen.
    public var experts: Int
    public var topK: Int
    /// Tokens dropped because some layer was missing.
    public var skippedTokens: Int
    /// Lines read without weights, and the weights they were given (nil when every line had its own).
    public var unweightedLines = 0
    public var defaultWeights: [Float]?

    /// A trace line that cannot be read.
    public struct LineError: Error, CustomStringConvertible, Equatable {
        public let path: String
        public let line: Int
        public let reason: String
        public init(path: String, line: Int, reason: String) {
            self.path = path
            self.line = line
            self.reason = reason
        }
        /// `path:line: reason`, or `path: reason` for the file as a whole (line 0).
        public var description: String { line > 0 ? "\(path):\(line): \(reason)" : "\(path): \(reason)" }
    }

    public init(sequences: [Sequence], layers: Int, experts: Int, topK: Int, skippedTokens: Int = 0, layerIds: [Int]? = nil, modelLayers: Int? = nil) {
        self.sequences = sequences
        self.layers = layers
        self.layerIds = layerIds ?? Array(0..<layers)
        self.modelLayers = modelLayers ?? layers
        self.experts = experts
        self.topK = topK
        self.skippedTokens = skippedTokens
    }

    /// One line of a trace file, parsed on its own.
    enum ParsedLine {
        case blank
        /// `weights` nil: the line has none.
        case record((sequence: String, token: Int, layer: Int, ids: [Int], weights: [Float]?))
        case failure(String)
    }

    /// Parses each line (both forms) with the checks that need no other line.
    static func parse(_ raw: Substring) -> ParsedLine {
        let line = raw.trimmingCharacters(in: .whitespaces)
        if line.isEmpty { return .blank }
        guard let o = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else { return .failure("not a JSON object") }
        if o["attention"] != nil { return .blank }  // `moe trace`'s routed-attention decisions: not routing
        let sequence: String, token: Int, weightsKey: String
        if let s = o["sequence"] {
            sequence = "\(s)"
            guard let t = o["token"] as? Int else { return .failure("'token' is missing or not an integer") }
            token = t
            weightsKey = "weights"
        } else if let p = o["problem_id"] {
            sequence = "\(o["dataset"] ?? "")/\(p)"
            guard let t = o["token_idx"] as? Int else { return .failure("'token_idx' is missing or not an integer") }
            token = t
            weightsKey = "gating_probs"
        } else {
            return .failure("neither 'sequence' nor 'problem_id': not a routing trace line")
        }
        guard let layer = o["layer"] as? Int, layer >= 0 else { return .failure("'layer' is missing or negative") }
        guard let ids = o["experts"] as? [Int], !ids.isEmpty, ids.allSatisfy({ $0 >= 0 }) else {
            return .failure("'experts' must be a non-empty list of expert ids >= 0")
        }
        guard let given = o[weightsKey], !(given is NSNull) else { return .record((sequence, token, layer, ids, nil)) }
        guard let weights = (given as? [Any])?.compactMap({ ($0 as? NSNumber)?.floatValue }), weights.count == ids.count,
              weights.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
            return .failure("'\(weightsKey)' must be a list of \(ids.count) numbers >= 0")
        }
        return .record((sequence, token, layer, ids, weights))
    }

    /// `parse` over all lines, in chunks on every core; results in line order.
    static func parseConcurrently(_ lines: [Substring]) -> [ParsedLine] {
        var out = [ParsedLine](repeating: .blank, count: lines.count)
        let chunks = min(lines.count, 4 * ProcessInfo.processInfo.activeProcessorCount)
        guard chunks > 1 else { return lines.map(parse) }
        out.withUnsafeMutableBufferPointer { buffer in
            nonisolated(unsafe) let slots = buffer
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                for i in (c * lines.count / chunks)..<((c + 1) * lines.count / chunks) { slots[i] = parse(lines[i]) }
            }
        }
        return out
    }

    /// Reads and merges JSONL trace files; with `layers` or `experts` given (the model's), a line outside them
    /// is an error naming its line. Lines without weights get `defaultWeights` (one per expert of a token, highest
    /// first; default: equal shares); a count that does not match the line's experts is an error naming it.
    public static func load(paths: [String], layers modelLayers: Int? = nil, experts modelExperts: Int? = nil,
                            defaultWeights: [Float]? = nil) throws -> RoutingTrace {
        var records: [String: [Int: [Int: Choice]]] = [:]  // sequence → token → layer → choice
        var order: [String] = []
        var seen = Set<Int>(), experts = 0, topK = 0, unweighted = 0
        for path in paths {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw LineError(path: path, line: 0, reason: FileManager.default.fileExists(atPath: path) ? "cannot read" : "no such file")
            }
            // Lines are parsed on every core (JSON is most of the time), then checked and merged in order, so the
            // first bad line is the one reported.
            let lines = String(decoding: data, as: UTF8.self).split(omittingEmptySubsequences: false, whereSeparator: \.isNewline)
            let parsed = parseConcurrently(lines)
            for (n, line) in parsed.enumerated() {
                func bad(_ reason: String) -> LineError { LineError(path: path, line: n + 1, reason: reason) }
                let sequence: String, token: Int, layer: Int, ids: [Int], weights: [Float]?
                switch line {
                case .blank: continue
                case .failure(let reason): throw bad(reason)
                case .record(let r): (sequence, token, layer, ids, weights) = (r.sequence, r.token, r.layer, r.ids, r.weights)
                }
                if let modelLayers, layer >= modelLayers { throw bad("layer \(layer) is out of range for a model of \(modelLayers) layers") }
                if let modelExperts, let e = ids.first(where: { $0 >= modelExperts }) {
                    throw bad("expert \(e) is out of range for a model of \(modelExperts) experts per layer")
                }
                guard Set(ids).count == ids.count else { throw bad("an expert appears twice in \(ids)") }
                if topK == 0 { topK = ids.count } else if ids.count != topK {
                    throw bad("\(ids.count) experts where earlier lines had \(topK)")
                }
                let choice: Choice
                if let weights { choice = Choice(experts: ids, weights: weights) } else {
                    if let d = defaultWeights, d.count != ids.count {
                        throw bad("no weights on the line, and --default-weights has \(d.count) for its \(ids.count) experts")
                    }
                    choice = Choice(experts: ids, weights: defaultWeights ?? Array(repeating: 1 / Float(ids.count), count: ids.count), weighted: false)
                    unweighted += 1
                }
                if records[sequence] == nil { order.append(sequence) }
                records[sequence, default: [:]][token, default: [:]][layer] = choice
                seen.insert(layer)
                experts = max(experts, ids.max()! + 1)
            }
        }
        let layerIds = seen.sorted()
        var sequences: [Sequence] = []
        var skipped = 0
        for name in order {
            var tokens: [[Choice]] = []
            for (_, byLayer) in records[name]!.sorted(by: { $0.key < $1.key }) {
                guard byLayer.count == layerIds.count else { skipped += 1; continue }
                tokens.append(layerIds.map { byLayer[$0]! })
            }
            if !tokens.isEmpty { sequences.append(Sequence(name: name, tokens: tokens)) }
        }
        guard !sequences.isEmpty else {
            throw LineError(path: paths.joined(separator: ", "), line: 0, reason: "no complete token in the trace")
        }
        var trace = RoutingTrace(sequences: sequences, layers: layerIds.count, experts: modelExperts ?? experts, topK: topK, skippedTokens: skipped,
                                 layerIds: layerIds, modelLayers: modelLayers ?? (layerIds.last! + 1))
        trace.unweightedLines = unweighted
        if unweighted > 0 { trace.defaultWeights = defaultWeights ?? Array(repeating: 1 / Float(topK), count: topK) }
        return trace
    }
}
