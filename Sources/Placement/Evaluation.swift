/// How a placement does on a trace: the figures `moe plan evaluate` reports.
public struct Evaluation: Sendable, Equatable {
    /// Fraction of top-1 transitions (layer l → l+1) whose experts sit on different ranks.
    public var crossRankTopOne: Double
    /// The same over all top-k pairs, each weighted by the product of the two (normalised) gate weights.
    public var crossRankTopK: Double
    /// Hop-weighted transition cost per token (weighted top-k pairs; hop 1 within a node, 2 across).
    public var hopsPerToken: Double
    /// Fraction of (token, layer) whose secondary experts are not all on the primary's rank.
    public var secondaryRemote: Double
    /// Mean over layers of max/mean top-k assignments per rank.
    public var maxMeanLoad: Double

    public init(placement p: Placement, trace: RoutingTrace, ranksPerNode: Int = Int.max) {
        let objective = PlacementObjective(ranksPerNode: ranksPerNode == Int.max ? p.ranks : ranksPerNode)
        var top1 = 0.0, top1Cross = 0.0, topk = 0.0, topkCross = 0.0, hops = 0.0
        var pairs = 0.0, remote = 0.0, tokens = 0.0
        var load = Array(repeating: Array(repeating: 0.0, count: p.ranks), count: trace.layers)
        for sequence in trace.sequences {
            for token in sequence.tokens {
                tokens += 1
                let w = token.map(\.normalisedWeights)
                for l in 0..<trace.layers {
                    let c = token[l]
                    for e in c.experts { load[l][p.rankOf[l][e]] += 1 }
                    pairs += 1
                    let home = p.rankOf[l][c.experts[0]]
                    if c.experts.dropFirst().contains(where: { p.rankOf[l][$0] != home }) { remote += 1 }
                    guard l + 1 < trace.layers else { continue }
                    let n = token[l + 1]
                    top1 += 1
                    if p.rankOf[l][c.experts[0]] != p.rankOf[l + 1][n.experts[0]] { top1Cross += 1 }
                    for (i, a) in c.experts.enumerated() {
                        for (j, b) in n.experts.enumerated() {
                            let weight = w[l][i] * w[l + 1][j]
                            let hop = objective.hop(p.rankOf[l][a], p.rankOf[l + 1][b])
                            topk += weight
                            if hop > 0 { topkCross += weight }
                            hops += weight * hop
                        }
                    }
                }
            }
        }
        crossRankTopOne = top1 > 0 ? top1Cross / top1 : 0
        crossRankTopK = topk > 0 ? topkCross / topk : 0
        hopsPerToken = tokens > 0 ? hops / tokens : 0
        secondaryRemote = pairs > 0 ? remote / pairs : 0
        let ratios = load.map { row -> Double in
            let mean = row.reduce(0, +) / Double(row.count)
            return mean > 0 ? row.max()! / mean : 1
        }
        maxMeanLoad = ratios.isEmpty ? 1 : ratios.reduce(0, +) / Double(ratios.count)
    }
}

extension Placement {
    /// Reads ExFlow's published placements: CSV `Expert,Node` with global expert id = layer · E + expert.
    public static func importExFlow(csv text: String, experts: Int, path: String) throws -> Placement {
        var entries: [(Int, Int)] = []
        for (n, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || (n == 0 && line.lowercased().hasPrefix("expert")) { continue }
            let parts = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, let e = Int(parts[0]), let r = Int(parts[1]), e >= 0, r >= 0 else {
                throw PlacementError.unreadable(path: path, reason: "line \(n + 1): expected 'expert,node' integers, got '\(line)'")
            }
            entries.append((e, r))
        }
        guard !entries.isEmpty, entries.count % experts == 0 else {
            throw PlacementError.unreadable(path: path, reason: "\(entries.count) experts is not a whole number of layers of \(experts)")
        }
        let layers = entries.count / experts
        var rankOf = Array(repeating: Array(repeating: -1, count: experts), count: layers)
        for (e, r) in entries {
            guard e < layers * experts, rankOf[e / experts][e % experts] == -1 else {
                throw PlacementError.unreadable(path: path, reason: "expert \(e) is listed twice or out of range")
            }
            rankOf[e / experts][e % experts] = r
        }
        let ranks = (entries.map(\.1).max() ?? 0) + 1
        return Placement(rankOf: rankOf, ranks: ranks)
    }
}
