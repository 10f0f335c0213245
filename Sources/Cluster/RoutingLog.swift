import Comm
import Models

/// One router decision: a token of a sequence at one MoE layer, its experts highest weight first.
public struct RoutingRecord: Sendable, Equatable {
    public var sequence: Int
    public var token: Int
    public var layer: Int
    public var experts: [Int]
    public var weights: [Float]

    public init(sequence: Int, token: Int, layer: Int, experts: [Int], weights: [Float]) {
        self.sequence = sequence
        self.token = token
        self.layer = layer
        self.experts = experts
        self.weights = weights
    }

    /// The line of `moe trace`'s JSONL form.
    public var jsonLine: String {
        #"{"sequence":\#(sequence),"token":\#(token),"layer":\#(layer),"experts":\#(experts),"weights":\#(weights)}"#
    }

    /// Records of one decision for tokens at `positions` of `sequence`.
    public static func of(_ routing: RoutingDecision, layer: Int, sequence: Int, positions: Range<Int>) -> [RoutingRecord] {
        let k = routing.topK
        return positions.enumerated().map { t, position in
            RoutingRecord(sequence: sequence, token: position, layer: layer,
                          experts: (0..<k).map { Int(routing.ids[t * k + $0]) }, weights: (0..<k).map { routing.weights[t * k + $0] })
        }
    }
}

/// The router decisions this rank made, in a cluster run: each (token, layer) is decided on exactly one rank (the
/// owner in prefill and ep2 decode, the token's current home in coherent decode), so the union over ranks is the
/// whole trace. Sequences are identified by slot.
public final class RoutingLog {
    private var out = ByteWriter()
    private var topK = 0

    public init() {}

    func record(_ routing: RoutingDecision, layer: Int, at positions: [(slot: Int, position: Int)]) {
        topK = routing.topK
        for (i, p) in positions.enumerated() {
            out.int(p.slot)
            out.int(p.position)
            out.int(layer)
            for j in 0..<routing.topK {
                out.int(Int(routing.ids[i * routing.topK + j]))
                out.float(routing.weights[i * routing.topK + j])
            }
        }
    }

    /// Every rank's records on every rank, ordered by (slot, token, layer); `sequence` holds the slot. A
    /// collective: every rank calls it once at the end of the run.
    public func gather(_ comm: Communicator, topK k: Int) throws -> [RoutingRecord] {
        precondition(topK == 0 || topK == k, "routing log of top-\(topK) read as top-\(k)")
        var records: [RoutingRecord] = []
        for bytes in try comm.allgatherv(out.bytes) {
            var r = ByteReader(bytes)
            while !r.atEnd {
                let slot = r.int(), token = r.int(), layer = r.int()
                var experts: [Int] = [], weights: [Float] = []
                for _ in 0..<k {
                    experts.append(r.int())
                    weights.append(r.float())
                }
                records.append(RoutingRecord(sequence: slot, token: token, layer: layer, experts: experts, weights: weights))
            }
        }
        return records.sorted { ($0.sequence, $0.token, $0.layer) < ($1.sequence, $1.token, $1.layer) }
    }
}
