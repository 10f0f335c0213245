import Comm
import Kernels
import Models

extension ClusterEngine {
    /// One `coherent` decode step. A token starts on its home rank (where its last token was sampled), runs
    /// attention there against the replicated cache, and at each MoE layer moves with one all-to-all to the
    /// ranks of its experts; the rank holding most of them (then the highest weight) becomes its new home.
    /// Experts elsewhere send their weighted rows to the new home point-to-point, only between ranks that have
    /// something to send. The last home samples. K/V rows go to every rank as `kvReplication` says.
    func decodeCoherent(_ sequences: [SequenceState]) throws {
        var local = sequences.filter { $0.home == comm.rank }
        let tokens = local.map { $0.tokens.last! }
        var xp = x.reserve(max(local.count, 1) * h)
        model.embed(tokens, into: xp)
        for l in 0..<model.spec.layers {
            let n = local.count
            try completeReplication(layer: l)  // other ranks' rows of this layer from the last step
            if n > 0 {
                let batch = MoEDecoder.Batch(tokens: Array(repeating: 0, count: n),  // ids unused by attention
                                             segments: local.map { .init(cache: $0.cache!, count: 1) })
                model.attention(layer: l, batch: batch, x: xp, rotary: model.rotaryTable(batch))
            }
            try replicate(layer: l, local, decoding: sequences.count)
            if !model.spec.moeLayers[l] {
                let xn = model.feedForwardNorm(layer: l, x: xp, tokens: n)
                let yp = y.reserve(max(n, 1) * h)
                if n > 0 { model.denseFeedForward(layer: l, normed: xn, tokens: n, into: yp) }
                Elementwise.add(yp, into: xp, n * h)
                continue
            }
            (local, xp) = try moveToExperts(layer: l, tokens: local, x: xp)
        }
        sampleAndEmit(local, x: xp)
    }

    /// The new home of a token whose experts sit on `ranksOf` (router order, highest weight first): the rank
    /// holding most of them, the first such in router order on a tie. The step-time model uses the same rule.
    static func newHome(_ ranksOf: [Int], ranks g: Int) -> Int {
        var count = [Int](repeating: 0, count: g)
        for r in ranksOf { count[r] += 1 }
        let most = count.max()!
        return ranksOf.first { count[$0] == most }!
    }

    /// The MoE layer of coherent mode. Returns the tokens whose new home is this rank, in slot order, and their
    /// residual streams after the layer.
    func moveToExperts(layer l: Int, tokens local: [SequenceState], x xp: UnsafeMutablePointer<Float>)
        throws -> ([SequenceState], UnsafeMutablePointer<Float>) {
        let g = comm.size, me = comm.rank, n = local.count, codec = codec, perRank = combineRows == .perRank
        let xn = model.feedForwardNorm(layer: l, x: xp, tokens: n)
        let routing = decide(layer: l, normed: xn, at: local.map { ($0.slot, $0.cache!.length) })
        let k = routing.topK

        // Dispatch: record = slot, new home, k × (expert, weight), residual row; once to every rank involved.
        var send = [ByteWriter](repeating: ByteWriter(), count: g)
        for (i, s) in local.enumerated() {
            let ranksOf = (0..<k).map { rankOf(l, routing.ids[i * k + $0]) }
            let home = Self.newHome(ranksOf, ranks: g)
            for d in 0..<g where d == home || ranksOf.contains(d) {
                send[d].int(s.slot)
                send[d].int(home)
                for j in 0..<k { send[d].int(Int(routing.ids[i * k + j])); send[d].float(routing.weights[i * k + j]) }
                codec.write(xp + i * h, into: &send[d])
            }
        }
        let received = try comm.alltoallv(send.map(\.bytes), kind: .dispatch)

        struct Arrival { var slot: Int; var home: Int; var experts: [(Int32, Float)]; var from: Int }
        var arrivals: [Arrival] = []
        let xr = rows.reserve(max(received.reduce(0) { $0 + $1.count } / codec.rowBytes, 1) * h)
        for src in 0..<g {
            var r = ByteReader(received[src])
            while !r.atEnd {
                let slot = r.int(), home = r.int()
                var experts: [(Int32, Float)] = []
                for _ in 0..<k { experts.append((Int32(r.int()), r.float())) }
                codec.read(&r, into: xr + arrivals.count * h)
                arrivals.append(Arrival(slot: slot, home: home, experts: experts, from: src))
            }
        }

        // Experts this rank holds, on the arrivals' normed rows.
        let xnr = model.feedForwardNorm(layer: l, x: xr, tokens: arrivals.count)
        var assignments: [ExpertAssignment] = []
        for (i, a) in arrivals.enumerated() {
            for (e, w) in a.experts where rankOf(l, e) == me {
                assignments.append(ExpertAssignment(row: Int32(i), expert: e, weight: w))
            }
        }
        let out = outputs.reserve(max(assignments.count, 1) * h)
        model.bank.apply(layer: l, hidden: xnr, assignments: &assignments, into: out)
        expertRows[l] += assignments.count
        remoteExpertRows += assignments.reduce(0) { $0 + (arrivals[Int($1.row)].from == me ? 0 : 1) }
        var index: [Int64: Int] = [:]
        for (i, a) in assignments.enumerated() { index[Int64(a.row) << 32 | Int64(a.expert)] = i }

        // Point-to-point to new homes elsewhere: per destination, by slot, each token's experts ascending (or,
        // per rank, their sum).
        var messages: [Int: ByteWriter] = [:]
        let sum = partial.reserve(h)
        for i in arrivals.indices.sorted(by: { arrivals[$0].slot < arrivals[$1].slot }) where arrivals[i].home != me {
            let mine = arrivals[i].experts.map(\.0).filter { rankOf(l, $0) == me }.sorted()
            if perRank && mine.count > 1 {
                sum.update(repeating: 0, count: h)
                for e in mine { Elementwise.add(out + index[Int64(i) << 32 | Int64(e)]! * h, into: sum, h) }
                codec.write(sum, into: &messages[arrivals[i].home, default: ByteWriter()])
            } else {
                for e in mine { codec.write(out + index[Int64(i) << 32 | Int64(e)]! * h, into: &messages[arrivals[i].home, default: ByteWriter()]) }
            }
        }
        // What this rank, as new home, expects: per source, by slot, a row per remote expert (or per remote rank).
        let homed = arrivals.indices.filter { arrivals[$0].home == me }.sorted { arrivals[$0].slot < arrivals[$1].slot }
        var expected: [Int: Int] = [:]
        for i in homed {
            let remote = arrivals[i].experts.map { rankOf(l, $0.0) }.filter { $0 != me }
            for r in (perRank ? Array(Set(remote)) : remote) { expected[r, default: 0] += codec.rowBytes }
        }
        let partials = try comm.exchange(send: messages.mapValues(\.bytes), receive: expected)

        // New local tokens: residual + Σ expert rows in expert order (a per-rank sum at its first expert) (+ the
        // shared expert).
        let m = homed.count
        let next = x.reserve(max(m, 1) * h)  // x is free: its rows were copied into the dispatch
        for (j, i) in homed.enumerated() { (next + j * h).update(from: xr + i * h, count: h) }
        let yp = y.reserve(max(m, 1) * h)
        yp.update(repeating: 0, count: m * h)
        var cursor: [Int: Int] = [:]
        for (j, i) in homed.enumerated() {
            var summed: Set<Int> = []
            for (e, _) in arrivals[i].experts.sorted(by: { $0.0 < $1.0 }) {
                let owner = rankOf(l, e)
                if owner == me {
                    Elementwise.add(out + index[Int64(i) << 32 | Int64(e)]! * h, into: yp + j * h, h)
                } else if !perRank || summed.insert(owner).inserted {
                    let offset = cursor[owner, default: 0]
                    partials[owner]!.withUnsafeBytes { raw in codec.add(raw.baseAddress! + offset, into: yp + j * h) }
                    cursor[owner] = offset + codec.rowBytes
                }
            }
        }
        if m > 0 {
            let xnHome = model.feedForwardNorm(layer: l, x: next, tokens: m)
            model.addSharedExpert(layer: l, normed: xnHome, tokens: m, into: yp)
        }
        Elementwise.add(yp, into: next, m * h)
        return (homed.map { sequences[arrivals[$0].slot]! }, next)
    }
}
