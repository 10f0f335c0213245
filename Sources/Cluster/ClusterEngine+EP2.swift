import Comm
import Kernels
import Models

extension ClusterEngine {
    /// Prefill of the step's prompt chunks, as in `ep2` for both modes: each owner runs its sequences' next
    /// `count` prompt tokens (from `prefilled` on), attending to what its cache holds; routed experts are reached
    /// by a dispatch and a combine all-to-all per MoE layer. A chunk longer than `prefillChunk` runs in passes of
    /// at most that many tokens (every rank runs as many passes as the longest chunk needs, so all make the same
    /// collectives). A sequence whose prompt ends in this step has its first token sampled by its owner; in
    /// coherent mode the owner also queues the chunk's K/V for the step-end allgather.
    ///
    /// `riding`: the step's decodes, when they run in the same pass (a mixed step: one stream of the weights for
    /// both). Each runs where it is at home, as `ep2` decodes do, first in its rank's first pass; in modes that
    /// replicate K/V its rows go to every rank layer by layer, as `auto`'s `ep2` steps send them. Coherent mode
    /// gives up its single all-to-all for these steps only: its tokens change rank inside the pass, prompt
    /// chunks do not.
    /// - Returns: on the owner, the logits of the chosen rows (`.all` for `moe forward`).
    @discardableResult
    func prefill(_ chunks: [PrefillChunk], logits rows: MoEDecoder.LogitRows = .lastOfEachSegment,
                 riding decoding: [SequenceState] = []) throws -> [Float] {
        let mine = chunks.filter { $0.sequence.owner == comm.rank }
        let decodes = decoding.filter { $0.home == comm.rank }
        let longest = chunks.map(\.count).max() ?? 0
        let pass = model.prefillChunk ?? max(longest, 1)
        let vocab = model.spec.vocabSize
        var all: [Float] = []  // `.all`: every row of this rank's chunks, pass by pass
        var last: [Int: [Float]] = [:]  // slot → logits of its prompt's last position
        for lo in stride(from: 0, to: longest, by: pass) {
            let inPass = mine.filter { $0.count > lo }
            let pieces = inPass.map(\.sequence)
            let spans = inPass.map { c in (c.start + lo)..<(c.start + min(c.count, lo + pass)) }
            let riders = lo == 0 ? decodes : []
            let tokens = riders.map { $0.tokens.last! } + zip(pieces, spans).flatMap { Array($0.request.promptIds[$1]) }
            let batch = MoEDecoder.Batch(tokens: tokens, segments: riders.map { .init(cache: $0.cache!, count: 1) }
                                            + zip(pieces, spans).map { .init(cache: $0.cache!, count: $1.count) })
            let xp = x.reserve(max(tokens.count, 1) * h)
            model.embed(tokens, into: xp)
            let positions = riders.map { ($0.slot, $0.cache!.length) } + zip(pieces, spans).flatMap { s, span in span.map { (s.slot, $0) } }
            try ownedLayers(batch: batch, positions: positions, x: xp, observe: decoding.isEmpty,
                            replicate: !decoding.isEmpty && lo == 0 && replicatesKV ? (decodes, decoding.count) : nil)
            sampleAndEmit(riders, x: xp)
            let chunkRows = xp + riders.count * h  // the chunks' rows follow the decodes'
            for (s, span) in zip(pieces, spans) { s.cache!.commit(span.count) }  // the next pass attends to it
            // Rows of prompts that end in this pass: (sequence, its last row in the pass).
            var ending: [(SequenceState, Int)] = []
            var end = 0
            for (s, span) in zip(pieces, spans) {
                end += span.count
                if span.upperBound == s.request.promptIds.count { ending.append((s, end - 1)) }
            }
            let selected = rows == .all ? Array(0..<(tokens.count - riders.count)) : ending.map(\.1)
            let logits = selected.isEmpty ? [] : model.logits(chunkRows, rows: selected)
            if rows == .all { all += logits }
            for (j, (s, lastRow)) in ending.enumerated() {
                let row = rows == .all ? lastRow : j
                last[s.slot] = Array(logits[(row * vocab)..<((row + 1) * vocab)])
            }
            var first = 0
            for (s, span) in zip(pieces, spans) {
                defer { first += span.count }
                guard let n = s.request.promptLogprobs else { continue }
                promptLogprobs(s, n, x: chunkRows, rows: first, positions: span)
            }
        }
        for c in chunks {
            c.sequence.prefilled += c.count
            c.sequence.prefillSteps += 1
        }
        for c in mine {
            let s = c.sequence
            if replicatesKV {
                for l in 0..<model.spec.layers { emitKV(s, layer: l, first: c.start, count: c.count) }
            }
            guard let logits = last[s.slot] else { continue }  // its prompt goes on in a later step
            logits.withUnsafeBufferPointer { emitToken(s, s.sample($0), logits: $0) }
        }
        return rows == .all ? all : mine.compactMap { last[$0.sequence.slot] }.flatMap { $0 }
    }

    /// Appends to `s.pendingPromptLogprobs` those of the prompt tokens after `positions` (rows `first...` of x
    /// hold their hidden states), each with `n` alternatives; the LM head runs in blocks of rows.
    func promptLogprobs(_ s: SequenceState, _ n: Int, x xp: UnsafePointer<Float>, rows first: Int, positions: Range<Int>) {
        let prompt = s.request.promptIds, vocab = model.spec.vocabSize
        let predicting = positions.lowerBound..<min(positions.upperBound, prompt.count - 1)  // the last predicts no prompt token
        for lo in stride(from: predicting.lowerBound, to: predicting.upperBound, by: 64) {
            let block = lo..<min(lo + 64, predicting.upperBound)
            let logits = model.logits(xp, rows: block.map { first + $0 - positions.lowerBound })
            logits.withUnsafeBufferPointer { all in
                for (j, p) in block.enumerated() {
                    s.pendingPromptLogprobs.append(TokenLogprob(UnsafeBufferPointer(rebasing: all[(j * vocab)..<((j + 1) * vocab)]),
                                                                token: prompt[p + 1], top: n))
                }
            }
        }
    }

    /// One `ep2` decode step: every owner runs its sequences' last tokens through all layers and samples. In
    /// `auto` mode a token runs where its last one was sampled (its home) and its K/V rows are replicated.
    func decodeOwned(_ sequences: [SequenceState]) throws {
        let mine = sequences.filter { $0.home == comm.rank }
        let tokens = mine.map { $0.tokens.last! }
        let batch = MoEDecoder.Batch(tokens: tokens, segments: mine.map { .init(cache: $0.cache!, count: 1) })
        let xp = x.reserve(max(tokens.count, 1) * h)
        model.embed(tokens, into: xp)
        try ownedLayers(batch: batch, positions: mine.map { ($0.slot, $0.cache!.length) }, x: xp, observe: false,
                        replicate: replicatesKV ? (mine, sequences.count) : nil)
        sampleAndEmit(mine, x: xp)
    }

    /// All layers over tokens whose caches are on this rank; MoE layers through `ep2Combine`.
    /// `replicate`: in a decode step of `auto`, this rank's sequences, whose new K/V rows go to every rank, and
    /// how many the step decodes in all.
    func ownedLayers(batch: MoEDecoder.Batch, positions: [(slot: Int, position: Int)], x xp: UnsafeMutablePointer<Float>,
                     observe: Bool, replicate: (sequences: [SequenceState], decoding: Int)? = nil) throws {
        let t = batch.tokens.count
        let table = model.rotaryTable(batch)
        for l in 0..<model.spec.layers {
            if replicate != nil { try completeReplication(layer: l) }
            if t > 0 { model.attention(layer: l, batch: batch, x: xp, rotary: table) }
            if let replicate { try self.replicate(layer: l, replicate.sequences, decoding: replicate.decoding) }
            let xn = model.feedForwardNorm(layer: l, x: xp, tokens: t)
            let yp = y.reserve(max(t, 1) * h)
            if !model.spec.moeLayers[l] {
                if t > 0 { model.denseFeedForward(layer: l, normed: xn, tokens: t, into: yp) }
            } else {
                let routing = decide(layer: l, normed: xn, at: positions)
                if observe { routingObserver?(l, routing) }
                try ep2Combine(layer: l, normed: xn, routing: routing, into: yp)
                if t > 0 { model.addSharedExpert(layer: l, normed: xn, tokens: t, into: yp) }
            }
            Elementwise.add(yp, into: xp, t * h)
        }
    }

    /// `y[t] = Σ_j w[t,j] · expert_{id[t,j]}(xn[t])` with experts on any rank: dispatch all-to-all (each token's
    /// normed state once to each rank holding some of its experts), experts, combine all-to-all (back to the
    /// owner, one weighted row per token and expert, or per token and rank with `combineRows` `.perRank`), summed
    /// in expert order as the single process does (per-rank sums at their first expert).
    func ep2Combine(layer l: Int, normed xn: UnsafePointer<Float>, routing: RoutingDecision, into yp: UnsafeMutablePointer<Float>) throws {
        let g = comm.size, k = routing.topK, t = routing.tokens, codec = codec, perRank = combineRows == .perRank
        // Dispatch: record = row, n, n × (expert, weight), normed row.
        var send = [ByteWriter](repeating: ByteWriter(), count: g)
        var sentExperts = [[(row: Int, experts: [Int32])]](repeating: [], count: g)
        for row in 0..<t {
            var byRank: [Int: [(Int32, Float)]] = [:]
            for j in 0..<k {
                let e = routing.ids[row * k + j]
                byRank[rankOf(l, e), default: []].append((e, routing.weights[row * k + j]))
            }
            for (d, list) in byRank.sorted(by: { $0.key < $1.key }) {
                let held = list.sorted { $0.0 < $1.0 }
                send[d].int(row)
                send[d].int(held.count)
                for (e, w) in held { send[d].int(Int(e)); send[d].float(w) }
                codec.write(xn + row * h, into: &send[d])
                sentExperts[d].append((row, held.map(\.0)))
            }
        }
        let received = try comm.alltoallv(send.map(\.bytes), kind: .dispatch)

        // Experts on the received rows (every record carries one row, so bytes / row size bounds the count).
        var assignments: [ExpertAssignment] = []
        var recordsFrom = [[[Int32]]](repeating: [], count: g)  // per source: each record's experts, ascending
        let xr = rows.reserve(max(received.reduce(0) { $0 + $1.count } / codec.rowBytes, 1) * h)
        var totalRows = 0
        for src in 0..<g {
            var r = ByteReader(received[src])
            while !r.atEnd {
                _ = r.int()
                let n = r.int()
                var experts: [Int32] = []
                for _ in 0..<n {
                    let e = Int32(r.int()), w = r.float()
                    experts.append(e)
                    assignments.append(ExpertAssignment(row: Int32(totalRows), expert: e, weight: w))
                }
                if src != comm.rank { remoteExpertRows += n }
                codec.read(&r, into: xr + totalRows * h)
                recordsFrom[src].append(experts)
                totalRows += 1
            }
        }
        let out = outputs.reserve(max(assignments.count, 1) * h)
        model.bank.apply(layer: l, hidden: xr, assignments: &assignments, into: out)
        expertRows[l] += assignments.count
        var index: [Int64: Int] = [:]  // (row, expert) → output row
        for (i, a) in assignments.enumerated() { index[Int64(a.row) << 32 | Int64(a.expert)] = i }

        // Combine: per source, its records in order, each record's experts ascending (or their sum).
        var reply = [ByteWriter](repeating: ByteWriter(), count: g)
        var row = 0
        let sum = partial.reserve(h)
        for src in 0..<g {
            for experts in recordsFrom[src] {
                if perRank && experts.count > 1 {
                    sum.update(repeating: 0, count: h)
                    for e in experts { Elementwise.add(out + index[Int64(row) << 32 | Int64(e)]! * h, into: sum, h) }
                    codec.write(sum, into: &reply[src])
                } else {
                    for e in experts { codec.write(out + index[Int64(row) << 32 | Int64(e)]! * h, into: &reply[src]) }
                }
                row += 1
            }
        }
        let back = try comm.alltoallv(reply.map(\.bytes), kind: .combine)

        // Sum each token's contributions in expert order (a per-rank sum at its first expert).
        var contributions = [[(expert: Int32, source: Int, offset: Int)]](repeating: [], count: t)
        for d in 0..<g {
            var offset = 0
            for (tokenRow, experts) in sentExperts[d] {
                for e in (perRank ? Array(experts.prefix(1)) : experts) {
                    contributions[tokenRow].append((e, d, offset))
                    offset += codec.rowBytes
                }
            }
        }
        yp.update(repeating: 0, count: t * h)
        for tokenRow in 0..<t {
            for c in contributions[tokenRow].sorted(by: { $0.expert < $1.expert }) {
                back[c.source].withUnsafeBytes { raw in codec.add(raw.baseAddress! + c.offset, into: yp + tokenRow * h) }
            }
        }
    }
}
