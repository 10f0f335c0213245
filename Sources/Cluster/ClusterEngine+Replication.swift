import Comm
import Models

/// How K/V rows reach every rank in the modes that replicate them (`coherent`, `auto`).
public enum KVReplication: String, Sendable, CaseIterable {
    /// Each layer's new decode rows leave as soon as attention has written them (a posted allgather, progressed by
    /// the layer loop's MPI calls) and are completed just before the next step's same layer reads them.
    case layer
    /// Every row of a step travels in the step-end allgather (on the critical path).
    case stepEnd = "step-end"
}

extension ClusterEngine {
    /// Bytes of one decode K/V row on the wire: slot, layer (with the routed-attention decision), first position,
    /// count, then keys and values in the cache's dtype.
    var kvRowBytes: Int { 16 + 2 * model.spec.kvDim * model.kvDType.byteSize }

    /// Queues or posts the K/V rows `sequences` wrote at `layer` in this decode step (one position each). Every
    /// rank calls it at every layer of a decode step, with or without rows, so all post the same sequence.
    /// `decoding`: sequences in the step (bounds any rank's block).
    func replicate(layer l: Int, _ sequences: [SequenceState], decoding: Int) throws {
        switch kvReplication {
        case .stepEnd:
            for s in sequences { emitKV(s, layer: l, first: s.cache!.length, count: 1) }
        case .layer:
            var out = ByteWriter()
            for s in sequences { writeKV(s, layer: l, first: s.cache!.length, count: 1, into: &out) }
            postedKV[l] = try comm.postAllgather(out.bytes, capacity: decoding * kvRowBytes)
            for p in postedKV.values { _ = try p.test() }  // lets earlier layers' rows move meanwhile
        }
    }

    /// Completes the posted rows of `layer` (from the previous step) into the caches: before the layer reads them.
    func completeReplication(layer l: Int) throws {
        guard let posted = postedKV.removeValue(forKey: l) else { return }
        try posted.wait { _, block in readKV(ByteReader(Array(block))) }
        kvWaitSeconds += posted.waitedSeconds
    }

    /// Completes every posted row (before the run returns).
    func completeAllReplication() throws {
        for l in postedKV.keys.sorted() { try completeReplication(layer: l) }
    }

    /// K/V row records (`writeKV`'s layout) into the caches of the sequences they name.
    func readKV(_ reader: ByteReader) {
        var r = reader
        let row = model.spec.kvDim * model.kvDType.byteSize
        while !r.atEnd {
            let slot = r.int(), (layer, route) = Self.layerAndRoute(r.int()), first = r.int(), count = r.int()
            guard let cache = sequences[slot]?.cache else { r.skip(bytes: 2 * count * row); continue }
            if let route { cache.routedSparse[layer] = route }
            // Admission took pages for the prompt and every new token, so the rows always have room.
            cache.forEachRun(layer: layer, first: first, count: count) { _, n, keys, _ in r.bytes(n * row, into: keys) }
            cache.forEachRun(layer: layer, first: first, count: count) { _, n, _, values in r.bytes(n * row, into: values) }
            cache.noteKeys(layer: layer, first: first, count: count)  // the pages' key bounds (--sparse-kind topk)
        }
    }

    /// A record's layer field (a 32-bit int on the wire): the layer in the low 24 bits and the sequence's
    /// routed-attention decision above them (0 none yet, 1 full, 2 sparse), so the decision travels with the K/V
    /// and every rank applies it.
    static func layerField(_ layer: Int, route: Bool?) -> Int { layer | (route.map { $0 ? 2 : 1 } ?? 0) << 24 }
    static func layerAndRoute(_ field: Int) -> (layer: Int, route: Bool?) {
        let code = field >> 24
        return (field & 0xFF_FFFF, code == 0 ? nil : code == 2)
    }

    /// Appends K/V rows `first ..< first + count` of `layer` of `s` to `out`.
    func writeKV(_ s: SequenceState, layer: Int, first: Int, count: Int, into out: inout ByteWriter) {
        guard let cache = s.cache else { return }
        out.int(s.slot)
        out.int(Self.layerField(layer, route: cache.routedSparse[layer]))
        out.int(first)
        out.int(count)
        let row = cache.rowBytes
        cache.forEachRun(layer: layer, first: first, count: count) { _, n, keys, _ in out.bytes(keys, count: n * row) }
        cache.forEachRun(layer: layer, first: first, count: count) { _, n, _, values in out.bytes(values, count: n * row) }
    }
}
