import Foundation
import Kernels
import Models
import Placement

/// Predicted seconds and traffic of decode steps in each dispatch mode, for tokens whose routing is known.
///
/// A step is a chain of phases that end where every rank meets (an all-to-all, an exchange, the step-end
/// allgather). A compute phase lasts as long as its slowest rank; a communication round costs the link's latency
/// plus the busiest rank's bytes (sent or received, whichever is more) over the bandwidth. Compute is weight
/// streaming: each rank reads every weight matrix it uses once per phase, whatever its token rows, at the rate
/// calibrated for that many rows (`Calibration.secondsPerByte`); small-batch decode is bound by these bytes.
/// The K/V rows and the control messages are counted as the cluster sends them: with `kvReplication` `.layer`
/// the K/V rows travel while later layers compute and cost time only where their transfer outlasts the step;
/// with `.stepEnd` they ride the step-end allgather.
public struct StepTimeModel: Sendable {
    /// What one round and one byte cost on this machine and link (`moe calibrate`).
    public struct Calibration: Codable, Sendable, Equatable {
        /// Seconds of one communication round between the ranks (a 0-byte all-to-all).
        public var latency: Double
        /// Bytes per second one rank moves to the other ranks in a round.
        public var bandwidth: Double
        /// Token-row counts at which streaming was measured, ascending, and the seconds per weight byte there.
        public var rows: [Int]
        public var secondsPerByte: [Double]

        enum CodingKeys: String, CodingKey {
            case latency = "latency_s", bandwidth = "bandwidth_bytes_per_s", rows = "stream_rows", secondsPerByte = "stream_s_per_byte"
        }

        public init(latency: Double, bandwidth: Double, rows: [Int], secondsPerByte: [Double]) {
            self.latency = latency
            self.bandwidth = bandwidth
            self.rows = rows
            self.secondsPerByte = secondsPerByte
        }

        /// Reads a calibration file (`moe calibrate`), naming the file in any error.
        public static func load(path: String) throws -> Calibration {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw PlacementError.unreadable(path: path, reason: FileManager.default.fileExists(atPath: path) ? "cannot read" : "no such file")
            }
            let c: Calibration
            do { c = try JSONDecoder().decode(Calibration.self, from: data) } catch {
                throw PlacementError.unreadable(path: path, reason: "not a calibration file (moe calibrate writes one)")
            }
            guard c.latency >= 0, c.bandwidth > 0, !c.rows.isEmpty, c.rows.count == c.secondsPerByte.count,
                  zip(c.rows, c.rows.dropFirst()).allSatisfy({ $0 < $1 }), c.rows[0] > 0, c.secondsPerByte.allSatisfy({ $0 > 0 }) else {
                throw PlacementError.unreadable(path: path, reason: "latency must be >= 0, bandwidth > 0, stream rows ascending with one positive rate each")
            }
            return c
        }

        /// Seconds to stream `bytes` of weights for `n` token rows (linear between measured row counts).
        public func stream(_ bytes: Double, rows n: Int) -> Double {
            guard n > 0, bytes > 0 else { return 0 }
            guard let hi = rows.firstIndex(where: { $0 >= n }) else { return bytes * secondsPerByte.last! * Double(n) / Double(rows.last!) }
            if hi == 0 || rows[hi] == n { return bytes * secondsPerByte[hi] }
            let f = Double(n - rows[hi - 1]) / Double(rows[hi] - rows[hi - 1])
            return bytes * (secondsPerByte[hi - 1] + f * (secondsPerByte[hi] - secondsPerByte[hi - 1]))
        }

        /// Seconds of one round in which the busiest rank moves `bytes`.
        public func round(bytes: Double) -> Double { latency + bytes / bandwidth }
    }

    /// Sizes that set the cost: bytes of weights per matrix group, bytes per row on the wire.
    public struct Shape: Sendable {
        public var layers: Int
        public var hidden: Int
        public var experts: Int
        public var topK: Int
        public var moeLayers: [Bool]
        /// Weight bytes of one routed expert (gate, up, down), of one layer's attention (q, k, v, o), of a dense MLP,
        /// of a shared expert (0: none), and of the LM head.
        public var expertBytes: Double
        public var attentionBytes: Double
        public var denseBytes: Double
        public var sharedBytes: Double
        public var lmHeadBytes: Double
        /// K and V of one token at one layer, in bytes.
        public var kvBytes: Double

        /// `weightBytes`: bytes per weight of the linear layers, scales included (`ElementType.bytesPerWeight`).
        public init(spec s: DecoderSpec, weightBytes b: Double, kvDType: KVDType = .f32) {
            layers = s.layers
            hidden = s.hiddenSize
            experts = s.experts
            topK = s.topK
            moeLayers = s.moeLayers
            let w = b
            expertBytes = w * Double(3 * s.hiddenSize * s.expertIntermediate)
            attentionBytes = w * Double(s.hiddenSize * (s.qDim + 2 * s.kvDim) + s.qDim * s.hiddenSize)
            denseBytes = w * Double(3 * s.hiddenSize * s.denseIntermediate)
            sharedBytes = s.sharedExpertIntermediate.map { w * Double(3 * s.hiddenSize * $0 + s.hiddenSize) } ?? 0
            lmHeadBytes = w * Double(s.vocabSize * s.hiddenSize)
            kvBytes = Double(2 * s.kvDim * kvDType.byteSize)
        }
    }

    /// One step's prediction.
    public struct Step: Sendable, Equatable {
        public var seconds = 0.0
        /// Communication rounds, and the part of `seconds` they take.
        public var rounds = 0
        public var communicationSeconds = 0.0
        /// Bytes that cross ranks (summed over ranks), by kind: dispatch, combine, point_to_point, allgather.
        public var bytes: [String: Double] = [:]
        /// MoE layers in which some rank sends partial rows point-to-point (`coherent`).
        public var pointToPointLayers = 0
        /// Where each token ends the step (`coherent`: its last home; `ep2`: its owner).
        public var homes: [Int] = []
    }

    public var shape: Shape
    public var calibration: Calibration
    public var placement: Placement
    /// Ranks per node: bytes between ranks of one node are taken as free (shared memory), the link's latency and
    /// bandwidth are paid by what crosses nodes (each node's traffic shares its link). Default: one rank per node.
    public var ranksPerNode: Int
    public var ranks: Int { placement.ranks }
    /// How the cluster replicates K/V rows (what it costs the step), the dtype of its rows on the wire, and
    /// whether expert ranks send a row per expert or per rank.
    public var kvReplication = KVReplication.layer
    public var wire = WireDType.f32
    public var combineRows = CombineRows.perExpert

    public init(shape: Shape, calibration: Calibration, placement: Placement, ranksPerNode: Int = 1) {
        self.shape = shape
        self.calibration = calibration
        self.placement = placement
        self.ranksPerNode = max(1, ranksPerNode)
    }

    /// Rounds per step outside the layers: the step plan's broadcast and the step-end allgather, one round each up
    /// to `MPICommunicator.directCollectiveRanks` (8) ranks; beyond, MPI's own (sizes first, then a tree or ring of
    /// about log2 G steps).
    var controlRounds: Int { ranks <= 8 ? 2 : 2 * (1 + Int((log2(Double(ranks))).rounded(.up))) }
    /// Bytes of a coherent dispatch record beyond its row: slot, home, k × (expert, weight), 4 bytes each.
    func dispatchHeader(_ k: Int) -> Double { Double(8 + 8 * k) }

    /// Bytes between each pair of ranks in one round.
    struct Traffic {
        var bytes: [[Double]]
        init(_ g: Int) { bytes = Array(repeating: Array(repeating: 0, count: g), count: g) }
        mutating func add(_ from: Int, _ to: Int, _ n: Double) { if from != to { bytes[from][to] += n } }
        var total: Double { bytes.joined().reduce(0, +) }
        var isEmpty: Bool { total == 0 }
    }

    /// Seconds of one round: latency plus the busiest node's bytes in or out over the bandwidth (one rank per
    /// node: the busiest rank's).
    func roundSeconds(_ t: Traffic) -> Double {
        let g = ranks, nodes = (g + ranksPerNode - 1) / ranksPerNode
        var out = [Double](repeating: 0, count: nodes), into = [Double](repeating: 0, count: nodes)
        for a in 0..<g {
            for b in 0..<g where a / ranksPerNode != b / ranksPerNode {
                out[a / ranksPerNode] += t.bytes[a][b]
                into[b / ranksPerNode] += t.bytes[a][b]
            }
        }
        let busiest = zip(out, into).map { max($0, $1) }.max() ?? 0
        return nodes > 1 ? calibration.round(bytes: busiest) : calibration.latency
    }

    /// One decode step of `routing[token][layer]` (each token's experts in router order; empty for dense layers)
    /// with tokens starting on `homes[token]` (`ep2`: their owners) and `contexts[token]` cached positions.
    /// `replicating`: every K/V row goes to every rank (always in `coherent`; in `ep2` steps of `auto`).
    public func step(_ mode: DispatchMode, routing: [[[Int]]], homes start: [Int], contexts: [Int], replicating: Bool = false) -> Step {
        let c = calibration, g = ranks, h = Double(shape.hidden * (wire == .f32 ? 4 : 2)), k = shape.topK
        let perRank = combineRows == .perRank
        var out = Step()
        var home = start
        var kvTraffic = [Double](repeating: 0, count: g)  // K/V bytes each rank makes (coherent), for the allgather
        func tokensOn(_ r: Int) -> Int { home.reduce(0) { $0 + ($1 == r ? 1 : 0) } }
        func round(_ kind: String, _ t: Traffic) {
            let seconds = roundSeconds(t)
            out.seconds += seconds
            out.communicationSeconds += seconds
            out.rounds += 1
            out.bytes[kind, default: 0] += t.total
        }
        for l in 0..<shape.layers {
            // Attention (with norms and router) where each token is: its weights once, its K/V rows.
            out.seconds += (0..<g).map { r -> Double in
                let kv = Double(zip(home, contexts).filter { $0.0 == r }.reduce(0) { $0 + $1.1 }) * shape.kvBytes
                return c.stream(shape.attentionBytes, rows: tokensOn(r)) + kv * c.secondsPerByte[0]
            }.max() ?? 0
            if mode != .ep2 || replicating { for t in routing.indices { kvTraffic[home[t]] += shape.kvBytes + 16 } }
            guard shape.moeLayers[l] else {
                out.seconds += (0..<g).map { c.stream(shape.denseBytes, rows: tokensOn($0)) }.max() ?? 0
                continue
            }
            let row = placement.rankOf[l]
            var rowsOf = [Int](repeating: 0, count: shape.experts)
            for t in routing.indices { for e in routing[t][l] { rowsOf[e] += 1 } }
            let experts = (0..<g).map { r in
                (0..<shape.experts).filter { row[$0] == r }.reduce(0.0) { $0 + c.stream(shape.expertBytes, rows: rowsOf[$1]) }
            }.max() ?? 0
            var dispatch = Traffic(g), back = Traffic(g)
            switch mode {
            case .ep2:
                // The normed row once to each other rank holding some of the token's experts; one row per
                // (token, remote expert) back.
                for t in routing.indices {
                    var byRank: [Int: Int] = [:]
                    for e in routing[t][l] { byRank[row[e], default: 0] += 1 }
                    for (d, n) in byRank {
                        dispatch.add(home[t], d, h + 8 + 8 * Double(n))
                        back.add(d, home[t], Double(perRank ? 1 : n) * h)
                    }
                }
                round("dispatch", dispatch)
                out.seconds += experts
                round("combine", back)
            case .coherent, .auto:
                // The residual row to every rank holding some of its experts and to its new home; rows of experts
                // away from the new home go there point-to-point, only where there are any.
                for t in routing.indices {
                    let ranksOf = routing[t][l].map { row[$0] }
                    let next = ClusterEngine.newHome(ranksOf, ranks: g)
                    for d in Set(ranksOf + [next]) { dispatch.add(home[t], d, h + dispatchHeader(k)) }
                    for r in (perRank ? Array(Set(ranksOf)) : ranksOf) { back.add(r, next, h) }
                    home[t] = next
                }
                round("dispatch", dispatch)
                out.seconds += experts
                if !back.isEmpty {
                    round("point_to_point", back)
                    out.pointToPointLayers += 1
                }
            }
            if shape.sharedBytes > 0 { out.seconds += (0..<g).map { c.stream(shape.sharedBytes, rows: tokensOn($0)) }.max() ?? 0 }
        }
        // The LM head where each token ends; the step-end allgather: 12 bytes per token and, in coherent mode,
        // every K/V row of the step; the step plan's broadcast.
        out.seconds += (0..<g).map { c.stream(shape.lmHeadBytes, rows: tokensOn($0)) }.max() ?? 0
        var gather = Traffic(g), kv = Traffic(g)
        let kvInGather = kvReplication == .stepEnd
        for r in 0..<g {
            let mine = Double(12 * tokensOn(r)) + (kvInGather ? kvTraffic[r] : 0) + 8
            for d in 0..<g {
                gather.add(r, d, mine)
                if !kvInGather { kv.add(r, d, kvTraffic[r]) }
            }
        }
        let seconds = roundSeconds(gather) + Double(controlRounds - 1) * c.latency
        out.seconds += seconds
        out.communicationSeconds += seconds
        out.rounds += controlRounds
        out.bytes["allgather", default: 0] += gather.total
        if !kv.isEmpty {
            // Posted per layer: hidden behind the step unless moving them takes longer than the step itself.
            let hidden = max(0, roundSeconds(kv) - c.latency - out.seconds)
            out.seconds += hidden
            out.communicationSeconds += hidden
            out.bytes["kv_replication", default: 0] += kv.total
        }
        out.homes = home
        return out
    }
}
