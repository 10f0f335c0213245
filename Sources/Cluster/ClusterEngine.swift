import Comm
import Foundation
import Kernels
import Models
import Placement

/// How routed experts are reached across ranks.
public enum DispatchMode: String, Sendable, CaseIterable {
    /// Each sequence has an owner rank holding its KV cache; per MoE layer a dispatch and a combine all-to-all.
    case ep2
    /// Every rank holds every sequence's KV cache; a token moves to a rank holding its experts (its new home);
    /// per MoE layer one all-to-all, then point-to-point only where experts sit away from the new home (ExFlow).
    case coherent
    /// Every rank holds every K/V row; before each decode step the head picks `ep2` or `coherent` for it, whichever
    /// the step-time model predicts faster on the tokens' last routing.
    case auto
}

/// One sequence, as every rank tracks it.
final class SequenceState {
    let slot: Int
    let request: GenerationRequest
    let id: String
    let owner: Int
    /// Rank where the sequence's next token starts: where its last token was sampled.
    var home: Int
    /// The experts its last token went to, per layer (empty for dense layers), as the step-end allgather shares
    /// them in `auto` mode: the forecast of its next step's routing.
    var lastRouting: [[Int]] = []
    /// The KV cache, on the ranks that keep one (ep2: the owner; coherent: every rank).
    let cache: KVCache?
    var tokens: [Int] = []
    /// Prompt tokens run so far (every rank counts them from the plans); below the prompt's length the sequence
    /// is prefilling: it takes a chunk in a step's prefill and no part in its decode.
    var prefilled = 0
    var prefilling: Bool { prefilled < request.promptIds.count }
    /// Steps that ran a chunk of its prompt.
    var prefillSteps = 0
    /// Prompt tokens it read from cached pages instead of computing them (prefix caching).
    var cachedPromptTokens = 0
    /// The layers that ran sparse attention for it, as its first token's record tells every rank.
    var sparseLayers: [Int]?
    /// Log-probabilities of its tokens (`request.logprobs`) and of its prompt's tokens after the first
    /// (`request.promptLogprobs`), as the step-end allgather brings them from the ranks that computed them.
    var logprobs: [TokenLogprob] = []
    var promptLogprobs: [TokenLogprob]?
    /// On the owner, between its prefill and the first token's record: the prompt's log-probabilities.
    var pendingPromptLogprobs: [TokenLogprob] = []
    var finishReason: FinishReason = .length
    var done = false
    let admitted: UInt64
    var firstToken: UInt64 = 0
    var finished: UInt64 = 0

    init(slot: Int, id: String, request: GenerationRequest, owner: Int, cache: KVCache?) {
        self.slot = slot
        self.id = id
        self.request = request
        self.owner = owner
        self.home = owner
        self.cache = cache
        admitted = Clock.now
    }

    var sampler: Sampler { Sampler(request.sampling) }
    /// Its next token from `logits` `[vocab]`: the request's sampling, penalties and `min_tokens` over its prompt and
    /// tokens so far (every rank keeps them, so the rank that samples draws what one process would).
    func sample(_ logits: UnsafeBufferPointer<Float>) -> Int {
        sampler.sample(logits, prompt: request.promptIds, output: tokens, stopIds: request.stopIds)
    }
}

/// The next `count` prompt tokens of a sequence that a step runs, from position `start` (what it had run before).
struct PrefillChunk {
    let sequence: SequenceState
    let start: Int
    let count: Int

    init(_ sequence: SequenceState, count: Int) {
        self.sequence = sequence
        start = sequence.prefilled
        self.count = count
    }
}

/// The per-rank runtime of the cluster: this rank's expert shard, the replicated rest of the model, and the
/// two dispatch modes. Every rank runs the same sequence of collectives, decided by state all ranks share.
public final class ClusterEngine {
    public let comm: Communicator
    public let model: MoEDecoder
    public let placement: Placement
    public let mode: DispatchMode
    /// When set, routers follow this trace: sequence slot s takes trace sequence s mod count, position p its
    /// token p (`--routing replay:`); where a line has no weights, the router's own probabilities of its experts
    /// (renormalised when the model renormalises) weigh them.
    public var replay: RoutingTrace?
    /// Called on the owner with the router's decision during prefill (`moe forward`, traces).
    public var routingObserver: ((_ layer: Int, _ routing: RoutingDecision) -> Void)?
    /// When set, every router decision this rank makes is recorded (`moe trace` under mpirun).
    public var routingLog: RoutingLog?
    /// Predicts decode steps: in `auto` both modes (the head picks the faster); with it set, the head also sums its
    /// prediction of each step run (`ClusterRunStats.predictedDecodeSeconds`). Set on every rank or none: the
    /// step-end allgather carries the routing it needs.
    public var stepModel: StepTimeModel?
    /// The dtype of activation rows between ranks, and whether expert ranks send one row per expert or per rank.
    public var wire = WireDType.f32
    public var combineRows = CombineRows.perExpert
    var codec: RowCodec { RowCodec(dtype: wire, width: h) }
    /// How decode K/V rows reach every rank (modes that replicate them).
    public var kvReplication = KVReplication.layer
    /// Posted K/V rows by layer, from this or the previous decode step, not yet completed.
    var postedKV: [Int: PostedAllgather] = [:]
    /// Seconds spent waiting for posted K/V rows (what the overlap did not hide), since start.
    public internal(set) var kvWaitSeconds = 0.0
    /// Router decisions this rank made in this step (`auto` mode): slot → layer → experts of its latest position.
    var routingThisStep: [Int: [Int: [Int]]] = [:]
    var sequences: [Int: SequenceState] = [:]
    /// Sequences running at once at most (`moe serve --max-batch`); more wait.
    public var maxBatch = Int.max
    /// Tokens one step runs at most (`--max-step-tokens`): the running decodes, then prompt chunks in what is left
    /// (at least one token).
    public var maxStepTokens = Int.max
    /// Whether a step that runs prompt chunks while sequences decode runs both in one pass (one stream of the
    /// weights, as vLLM's and Sarathi-Serve's mixed batches), else a prefill pass and then a decode pass.
    public var mixedSteps = true
    /// The head's time budget for prompt chunks (`--step-time-target`), learned from the steps it runs; nil: tokens
    /// only.
    public var stepBudget: StepBudget?
    /// Step-end payload this rank contributes: sampled tokens, and (coherent) K/V rows it computed.
    var tokenOut = ByteWriter(), kvOut = ByteWriter()
    /// Free KV pages of every rank as of the last step-end allgather (the head admits by them).
    lazy var freePages = Array(repeating: model.kvPool?.pageCount ?? Int(Int32.max), count: comm.size)
    /// When set (on every rank or none: it changes the step-end allgather), each rank adds its counters so far to
    /// the step-end allgather, expert rows per layer and bytes sent per kind, and every rank holds all of them in
    /// `rankExpertRows` and `rankBytesSent` (`moe serve`'s metrics).
    public var sharesCounters = false
    /// `[rank][layer]`: token rows each rank's experts computed so far, as of the last step (`sharesCounters`).
    public internal(set) lazy var rankExpertRows = Array(repeating: Array(repeating: 0, count: model.spec.layers), count: comm.size)
    /// `[rank][kind]` (`CommCounters.Kind.allCases` order): bytes each rank sent so far (`sharesCounters`).
    public internal(set) lazy var rankBytesSent = Array(repeating: Array(repeating: 0, count: CommCounters.Kind.allCases.count), count: comm.size)
    /// This rank's counters as of its last report (`sharesCounters`).
    lazy var reportedRows = Array(repeating: 0, count: model.spec.layers)
    lazy var reportedBytes = Array(repeating: 0, count: CommCounters.Kind.allCases.count)
    var reportedRemote = 0
    /// `[rank]`: each rank's `remoteExpertRows` (`sharesCounters`).
    public internal(set) lazy var rankRemoteRows = Array(repeating: 0, count: comm.size)
    var tokenCount = 0
    let h: Int
    var x = GrowableBuffer<Float>(), y = GrowableBuffer<Float>(), rows = GrowableBuffer<Float>()
    var outputs = GrowableBuffer<Float>(), partial = GrowableBuffer<Float>()
    /// (token, expert) rows this rank's experts computed, per layer, since start (load balance figures).
    public internal(set) var expertRows: [Int]
    /// Those of them whose token came from another rank (it was at home elsewhere when the layer began).
    public internal(set) var remoteExpertRows = 0

    public init(comm: Communicator, model: MoEDecoder, placement: Placement, mode: DispatchMode) {
        self.comm = comm
        self.model = model
        self.placement = placement
        self.mode = mode
        h = model.spec.hiddenSize
        expertRows = Array(repeating: 0, count: model.spec.layers)
    }

    /// Whether every rank keeps every sequence's K/V rows (`coherent`, and `auto` so either mode can run).
    var replicatesKV: Bool { mode != .ep2 }

    func rankOf(_ layer: Int, _ expert: Int32) -> Int { placement.rankOf[layer][Int(expert)] }

    /// The router's decision for tokens at (slot, position), or the trace's when replaying.
    func decide(layer l: Int, normed xn: UnsafePointer<Float>, at positions: [(slot: Int, position: Int)]) -> RoutingDecision {
        let routing = model.route(layer: l, normed: xn, tokens: positions.count)
        defer {
            routingLog?.record(routing, layer: l, at: positions)
            if stepModel != nil { shareRouting(routing, layer: l, at: positions) }  // auto, bench --predict
        }
        guard let replay else { return routing }
        // The decision's buffers are the model's workspace, writable until its next route call.
        let ids = UnsafeMutablePointer(mutating: routing.ids), weights = UnsafeMutablePointer(mutating: routing.weights)
        let k = routing.topK
        let routed = replay.layerIds.firstIndex(of: l)!  // checkReplay: the trace routes exactly the MoE layers
        for (i, p) in positions.enumerated() {
            let choice = replay.sequences[p.slot % replay.sequences.count].tokens[p.position][routed]
            for j in 0..<k { ids[i * k + j] = Int32(choice.experts[j]) }
            if choice.weighted {
                for j in 0..<k { weights[i * k + j] = choice.weights[j] }
            } else {
                // The trace has the ids only: weigh them as this router would (its probabilities of those experts).
                routing.routerWeights(token: i, for: ids + i * k, count: k, into: weights + i * k)
            }
        }
        return routing
    }

    /// Checks that a trace can drive this model for sequences of `positions` tokens.
    public static func checkReplay(_ trace: RoutingTrace, spec: DecoderSpec, positions: Int) throws {
        let moe = spec.moeLayers.indices.filter { spec.moeLayers[$0] }
        guard trace.layerIds == moe, trace.experts <= spec.experts, trace.topK == spec.topK else {
            func layers(_ ids: [Int]) -> String { ids == Array(0..<ids.count) ? "\(ids.count) layers" : "layers \(ids.map(String.init).joined(separator: ","))" }
            throw PlacementError.mismatch("the trace routes \(layers(trace.layerIds)), \(trace.experts) experts, top-\(trace.topK); "
                + "the model \(layers(moe)), \(spec.experts), top-\(spec.topK)")
        }
        let shortest = trace.sequences.map(\.tokens.count).min()!
        guard shortest >= positions else {
            throw PlacementError.mismatch("the trace's shortest sequence has \(shortest) complete tokens; the run needs \(positions)")
        }
    }

    // MARK: Admission and the step-end synchronisation

    /// Adds a sequence on every rank (ids and owner chosen by the head, which admitted it only where its pages
    /// were free).
    ///
    /// With prefix caching, the cache starts with the cached pages of the longest whole-page prefix of the prompt
    /// (never the last prompt token: its logits are needed); every rank keeping the cache finds the same ones, and
    /// the sequence's prefill starts after them.
    func admit(slot: Int, id: String, request: GenerationRequest, owner: Int) throws {
        let keepsCache = replicatesKV || owner == comm.rank
        var cache: KVCache?
        let limit = cachesPrefix(request) ? request.promptIds.count - 1 : 0
        do {
            if keepsCache {
                if let pool = model.kvPool, limit > 0 {
                    cache = try KVCache(pool: pool, capacity: request.promptIds.count + request.maxNewTokens, prompt: request.promptIds, cacheLimit: limit)
                    cache?.promptLength = request.promptIds.count
                } else {
                    cache = try model.makeCache(capacity: request.promptIds.count + request.maxNewTokens, promptLength: request.promptIds.count)
                }
            }
        } catch {
            // The head admits only where pages are free, so this is a bug; the other ranks would wait for this one
            // in the next collective: end the job instead.
            FileHandle.standardError.write(Data("moe: error: rank \(comm.rank): admitting '\(id)': \(error)\n".utf8))
            comm.abort(code: 1)
        }
        let s = SequenceState(slot: slot, id: id, request: request, owner: owner, cache: cache)
        // Prefix caching runs only where every rank keeps the cache (one rank, or K/V on every rank), so every rank
        // starts the prefill at the same position; elsewhere nothing is cached and it starts at 0.
        s.prefilled = cache?.length ?? 0
        s.cachedPromptTokens = s.prefilled
        sequences[slot] = s
    }

    /// Whether `request` may start from cached prompt pages: the pool keeps them, every rank that keeps caches
    /// keeps this sequence's (one rank, or `coherent` / `auto`), no prompt log-probabilities are wanted (they
    /// need every prompt position's logits), and no layer router decides attention from the first chunk's queries.
    func cachesPrefix(_ request: GenerationRequest) -> Bool {
        model.kvPool?.prefixCaching == true && (comm.size == 1 || replicatesKV) && request.promptLogprobs == nil
            && model.router == nil
    }

    /// Ends `s` on this rank: its pages go back to the pool now (in the same order on every rank).
    func retire(_ s: SequenceState) {
        s.cache?.free()
        sequences[s.slot] = nil
    }

    /// Sequences in the batch (prefilling or generating), by slot.
    var running: [SequenceState] { sequences.values.filter { !$0.done }.sorted { $0.slot < $1.slot } }
    /// Of those, the ones whose prompts are done: a step decodes them.
    var decodable: [SequenceState] { running.filter { !$0.prefilling } }

    /// Bytes this rank sent so far, by kind (`CommCounters.Kind.allCases` order).
    var sentBytes: [Int] { CommCounters.Kind.allCases.map { comm.counters.bytes[$0] ?? 0 } }

    /// The counters as they are now count as reported: the next report carries only what grows after this.
    func markCountersReported() {
        reportedRows = expertRows
        reportedBytes = sentBytes
        reportedRemote = remoteExpertRows
    }

    /// Shares the tokens sampled this step (and, coherent or auto, the K/V rows; auto, the routing) with every
    /// rank: one allgather. `prefilled`: the prompt chunks the step ran. Returns the sequences that finished.
    func synchronise(prefilled: [PrefillChunk], decoded: [SequenceState]) throws -> [SequenceState] {
        var header = ByteWriter()
        header.int(tokenCount)
        var routes = ByteWriter()
        header.int(routingThisStep.count)
        header.int(model.kvPool?.freePages ?? Int(Int32.max))
        if sharesCounters {
            // What grew since the last step (a step's counts fit the message's 32-bit integers; totals would not).
            for (n, before) in zip(expertRows, reportedRows) { header.int(n - before) }
            for (n, before) in zip(sentBytes, reportedBytes) { header.int(n - before) }
            header.int(remoteExpertRows - reportedRemote)
            markCountersReported()
        }
        for (slot, layers) in routingThisStep.sorted(by: { $0.key < $1.key }) {
            routes.int(slot)
            routes.int(layers.count)
            for (l, ids) in layers.sorted(by: { $0.key < $1.key }) {
                routes.int(l)
                for e in ids { routes.int(e) }
            }
        }
        let all = try comm.allgatherv(header.bytes + tokenOut.bytes + routes.bytes + kvOut.bytes)
        tokenOut = ByteWriter()
        kvOut = ByteWriter()
        tokenCount = 0
        routingThisStep = [:]
        let k = model.spec.topK, layers = model.spec.layers
        var finished: [SequenceState] = []
        for (src, bytes) in all.enumerated() {
            var r = ByteReader(bytes)
            let tokenCount = r.int(), routed = r.int()
            freePages[src] = r.int()
            if sharesCounters {
                for l in 0..<layers { rankExpertRows[src][l] += r.int() }
                for k in CommCounters.Kind.allCases.indices { rankBytesSent[src][k] += r.int() }
                rankRemoteRows[src] += r.int()
            }
            for _ in 0..<tokenCount {
                let slot = r.int(), token = r.int(), home = r.int()
                let sparse = r.int()  // -1: full attention; else that many sparse layers follow
                let sparseLayers = sparse < 0 ? nil : (0..<sparse).map { _ in r.int() }
                let prompt = r.int()  // -1: no prompt log-probabilities; else that many follow
                let promptLogprobs = prompt < 0 ? nil : (0..<prompt).map { _ in Self.readLogprob(&r) }
                let logprob = (0..<r.int()).map { _ in Self.readLogprob(&r) }
                guard let s = sequences[slot] else { continue }
                if s.tokens.isEmpty { s.sparseLayers = sparseLayers }
                if s.tokens.isEmpty { s.promptLogprobs = promptLogprobs }
                s.logprobs += logprob
                if s.tokens.isEmpty { s.firstToken = Clock.now }
                s.tokens.append(token)
                s.home = home
                if s.request.stopIds.contains(token) {
                    s.finishReason = .stop
                    s.done = true
                } else if s.tokens.count >= s.request.maxNewTokens {
                    s.done = true
                }
                if s.done { s.finished = Clock.now; finished.append(s) }
            }
            for _ in 0..<routed {  // a token's experts per layer: it may have been routed on several ranks
                let slot = r.int(), count = r.int()
                for _ in 0..<count {
                    let l = r.int()
                    let ids = (0..<k).map { _ in r.int() }
                    guard let s = sequences[slot] else { continue }
                    if s.lastRouting.count != layers { s.lastRouting = Array(repeating: [], count: layers) }
                    s.lastRouting[l] = ids
                }
            }
            readKV(r)  // K/V rows: slot, layer, first position, count, then keys and values
        }
        for c in prefilled where c.sequence.owner != comm.rank { c.sequence.cache?.commit(c.count) }  // owners did as they ran it
        for s in decoded { s.cache?.commit(1) }
        for s in prefilled.map(\.sequence) + decoded { if let c = s.cache { model.releaseUnread(c) } }
        // Prompts whose last chunk ran: their whole pages are stored on every rank that keeps them now.
        for c in prefilled where !c.sequence.prefilling && cachesPrefix(c.sequence.request) {
            c.sequence.cache?.cachePrompt(c.sequence.request.promptIds)
        }
        return finished.sorted { $0.slot < $1.slot }
    }

    /// Keeps this step's router decisions for the step-time model (`auto`, `bench --predict`): for each slot and
    /// layer, those of its latest position.
    func shareRouting(_ routing: RoutingDecision, layer l: Int, at positions: [(slot: Int, position: Int)]) {
        let k = routing.topK
        for (i, p) in positions.enumerated() {
            routingThisStep[p.slot, default: [:]][l] = (0..<k).map { Int(routing.ids[i * k + $0]) }
        }
    }

    /// Final norm, LM head and sampling for sequences whose last hidden states are the rows of x; queues the
    /// tokens for the step-end allgather.
    func sampleAndEmit(_ sequences: [SequenceState], x xp: UnsafePointer<Float>) {
        guard !sequences.isEmpty else { return }
        let logits = model.logits(xp, rows: Array(sequences.indices))
        let vocab = model.spec.vocabSize
        logits.withUnsafeBufferPointer { all in
            for (i, s) in sequences.enumerated() {
                let row = UnsafeBufferPointer(rebasing: all[(i * vocab)..<((i + 1) * vocab)])
                emitToken(s, s.sample(row), logits: row)
            }
        }
    }

    /// Queues a sampled token for the step-end allgather: slot, token, the rank that sampled it; with a
    /// sequence's first token the layers its attention ran sparse (decided where it was prefilled) and its
    /// prompt's log-probabilities when asked for; the token's log-probability from `logits` when asked for.
    func emitToken(_ s: SequenceState, _ token: Int, logits: UnsafeBufferPointer<Float>) {
        tokenOut.int(s.slot)
        tokenOut.int(token)
        tokenOut.int(comm.rank)
        let first = s.tokens.isEmpty
        let sparse = first ? s.cache.flatMap(model.sparseLayers) : nil
        tokenOut.int(sparse?.count ?? -1)
        for l in sparse ?? [] { tokenOut.int(l) }
        let prompt = first && s.request.promptLogprobs != nil ? s.pendingPromptLogprobs : nil
        tokenOut.int(prompt?.count ?? -1)
        for e in prompt ?? [] { Self.write(e, into: &tokenOut) }
        s.pendingPromptLogprobs = []
        if let n = s.request.logprobs {
            tokenOut.int(1)
            Self.write(TokenLogprob(logits, token: token, top: n), into: &tokenOut)
        } else {
            tokenOut.int(0)
        }
        tokenCount += 1
    }

    static func write(_ e: TokenLogprob, into out: inout ByteWriter) {
        out.int(e.token)
        out.float(e.logprob)
        out.int(e.top.count)
        for a in e.top {
            out.int(a.token)
            out.float(a.logprob)
        }
    }

    static func readLogprob(_ r: inout ByteReader) -> TokenLogprob {
        let token = r.int(), logprob = r.float()
        let top = (0..<r.int()).map { _ in TokenLogprob.Alternative(token: r.int(), logprob: r.float()) }
        return TokenLogprob(token: token, logprob: logprob, top: top)
    }

    /// Queues K/V rows `first ..< first + count` of `layer` for the step-end allgather.
    func emitKV(_ s: SequenceState, layer: Int, first: Int, count: Int) {
        writeKV(s, layer: layer, first: first, count: count, into: &kvOut)
    }
}
