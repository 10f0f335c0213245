import Comm
import Foundation
import Models
import SwiftProtobuf
import Wire

/// A request as the head node schedules it.
public struct ClusterRequest: Sendable {
    public var id: String
    public var request: GenerationRequest
    /// The step at which it joins the batch (0: the first).
    public var arrivalStep: Int

    public init(id: String, request: GenerationRequest, arrivalStep: Int = 0) {
        self.id = id
        self.request = request
        self.arrivalStep = arrivalStep
    }
}

/// A finished request, as rank 0 reports it.
public struct ClusterResult: Sendable {
    public var id: String
    public var tokens: [Int]
    public var promptTokens: Int
    public var finishReason: FinishReason
    /// Seconds from admission to the first token, and to the last.
    public var timeToFirstToken: Double
    public var latency: Double
    /// The layers that ran sparse attention for it (`--attention sparse` or `routed`); nil when full.
    public var sparseLayers: [Int]?
    /// Its tokens' log-probabilities (`GenerationRequest.logprobs`; else empty) and its prompt's after the first
    /// (`promptLogprobs`; else nil).
    public var logprobs: [TokenLogprob] = []
    public var promptLogprobs: [TokenLogprob]?
    /// Steps its prompt's chunks ran in (1 unless `maxStepTokens` or `prefillChunk` split it; 0 in one process).
    public var prefillSteps = 0
    /// Prompt tokens read from cached pages (prefix caching) instead of computed.
    public var cachedPromptTokens = 0

    public init(id: String, tokens: [Int], promptTokens: Int, finishReason: FinishReason, timeToFirstToken: Double, latency: Double,
                sparseLayers: [Int]? = nil, logprobs: [TokenLogprob] = [], promptLogprobs: [TokenLogprob]? = nil, prefillSteps: Int = 0,
                cachedPromptTokens: Int = 0) {
        self.prefillSteps = prefillSteps
        self.cachedPromptTokens = cachedPromptTokens
        self.sparseLayers = sparseLayers
        self.logprobs = logprobs
        self.promptLogprobs = promptLogprobs
        self.id = id
        self.tokens = tokens
        self.promptTokens = promptTokens
        self.finishReason = finishReason
        self.timeToFirstToken = timeToFirstToken
        self.latency = latency
    }
}

/// What a run did, for `moe bench`.
public struct ClusterRunStats: Sendable {
    public var steps = 0
    /// Decode steps, tokens they made, their time, and what they communicated (this rank's counters).
    public var decodeSteps = 0
    public var decodeTokens = 0
    public var decodeSeconds = 0.0
    public var decodeCounters = CommCounters()
    /// Prompt tokens run, and the seconds of the passes that ran them (a mixed step's whole time: its decodes ride
    /// in the prompt chunks' pass).
    public var prefillTokens = 0
    public var prefillSeconds = 0.0
    /// Prompt tokens read from cached pages instead (prefix caching).
    public var cachedPromptTokens = 0
    /// Steps whose decodes rode in the prompt chunks' pass (`ClusterEngine.mixedSteps`).
    public var mixedSteps = 0
    /// Decode steps run in each mode (`ep2`, `coherent`; under `auto` the head's choices).
    public var modeSteps: [String: Int] = [:]
    /// Seconds decode steps waited for posted K/V rows (`--kv-replication layer`: what the overlap did not hide).
    public var kvWaitSeconds = 0.0
    /// On the head, with a step-time model (`auto`, `bench --predict`): the seconds it predicts for the decode
    /// steps above, each from the routing its tokens actually took, their homes and contexts at its start.
    public var predictedDecodeSeconds: Double?
    /// The part of it the model gives to communication rounds.
    public var predictedCommunicationSeconds: Double?
}

/// Where the head's requests come from while the cluster runs, and where it reports their progress (`moe serve`'s
/// queue; a fixed list for `moe generate --requests`). Called on rank 0's step-loop thread only.
public protocol RequestSource: AnyObject {
    /// Requests that arrived since the last call. With `wait` (nothing runs or waits), blocks until one arrives or
    /// the source closes. `nil`: closed, and nothing more will come.
    func next(wait: Bool) -> [ClusterRequest]?
    /// Ids of requests to drop: waiting ones are removed, running ones end at the next step without a result.
    func takeCancellations() -> [String]
    /// After each step: a sequence that made a token, with all it has made so far.
    func progress(_ p: SequenceProgress)
    /// A request that arrived but can never run here (it does not fit the KV pool every rank agreed on).
    func refuse(id: String, reason: String)
    /// After each step that ran sequences: what the cluster looks like (for metrics).
    func stepEnded(_ report: StepReport)
}

extension RequestSource {
    public func stepEnded(_ report: StepReport) {}
}

/// A running sequence after a step in which it made a token.
public struct SequenceProgress: Sendable {
    public var id: String
    /// Every token so far, and the log-probabilities of each when asked for (else empty).
    public var tokens: [Int]
    public var logprobs: [TokenLogprob]
    /// Of its prompt's tokens after the first, when asked for.
    public var promptLogprobs: [TokenLogprob]?
    /// Set once it is done.
    public var finished: FinishReason?
    /// Prompt tokens read from cached pages (prefix caching).
    public var cachedPromptTokens = 0
}

/// The cluster after one step, as the head sees it.
public struct StepReport: Sendable {
    /// KV pages in use and in all, on the rank with the fewest free (every rank holds the same pool size).
    public var kvPagesInUse: Int
    public var kvPages: Int
    /// Whether the step only decoded, and the tokens it made.
    public var decodeOnly: Bool
    public var tokens: Int
    /// Bytes every rank sent to others so far, summed, by kind (`ClusterEngine.sharesCounters`; else empty).
    public var bytesSent: [String: Int]
    /// `[rank][layer]`: token rows each rank's experts computed so far (`sharesCounters`; else empty).
    public var expertRows: [[Int]]
    /// Of those, summed over ranks and layers, the rows whose token was at home on another rank (`sharesCounters`).
    public var remoteExpertRows = 0
}

/// The requests of a file, all known at the start.
final class FixedRequests: RequestSource {
    private var requests: [ClusterRequest]?
    init(_ requests: [ClusterRequest]) { self.requests = requests }
    func next(wait: Bool) -> [ClusterRequest]? { defer { requests = nil }; return requests }
    func takeCancellations() -> [String] { [] }
    func progress(_ p: SequenceProgress) {}
    func refuse(id: String, reason: String) {}
}

extension ClusterEngine {
    /// The head's admission by KV pages: the owner of a request that fits where its pages go (every rank in
    /// `coherent` and `auto`, the owner in `ep2`: round-robin, else the rank with the most free pages), taking
    /// them from the head's view; nil when they are not free yet (it waits, and those behind it with it).
    func placeCache(_ request: GenerationRequest, slot: Int) -> Int? {
        let need = model.kvPool?.pages(for: request.promptIds.count + request.maxNewTokens) ?? 0
        if replicatesKV {
            guard freePages.min()! >= need else { return nil }
            for r in freePages.indices { freePages[r] -= need }
            return slot % comm.size
        }
        let preferred = slot % comm.size
        let owner = freePages[preferred] >= need ? preferred : freePages.indices.filter { freePages[$0] >= need }.max { freePages[$0] < freePages[$1] }
        if let owner { freePages[owner] -= need }
        return owner
    }

    /// The step loop on every rank. Rank 0 is the head: it holds `requests` (ignored elsewhere), admits each at
    /// its arrival step (continuous batching: a sequence joins at the next step and leaves when done) and
    /// broadcasts each step's plan; every rank then runs the same prefill and decode collectives. Rank 0 calls
    /// `onResult` as soon as a request finishes.
    public func run(requests: [ClusterRequest], onResult: (ClusterResult) throws -> Void) throws -> ClusterRunStats {
        try run(source: FixedRequests(requests), onResult: onResult)
    }

    /// The step loop with requests from `source` (read on rank 0 between steps; a request joins at the next step).
    /// While nothing runs the head blocks in `source.next(wait: true)` and the other ranks wait for its next plan
    /// sleeping between polls (`broadcastPatiently`), so an idle cluster leaves the cores to others.
    public func run(source: any RequestSource, onResult: (ClusterResult) throws -> Void) throws -> ClusterRunStats {
        var pending: [ClusterRequest] = []
        var sourceOpen = comm.rank == 0
        if comm.rank == 0 {
            if let first = source.next(wait: false) { pending = Self.admissionOrder(first).map { first[$0] } } else { sourceOpen = false }
        }
        var firstStep = true
        var stats = ClusterRunStats()
        var step = 0
        var nextSlot = 0
        // The pool every rank agreed on may be smaller than the one the head validated the requests against.
        let refusal = comm.rank == 0 ? pending.lazy.compactMap { r in
            Engine.poolProblem(prompt: r.request.promptIds.count, maxNewTokens: r.request.maxNewTokens, pool: self.model.kvPool)
                .map { "request '\(r.id)': \($0)" }
        }.first : nil
        while true {
            var plan = Moe_Control_StepPlan()
            if let refusal {
                plan.shutdown = true
                plan.error = refusal
            } else if comm.rank == 0 {
                if sourceOpen, !firstStep {
                    if let arrived = source.next(wait: pending.isEmpty && running.isEmpty) {
                        for var r in arrived {
                            if let reason = Engine.poolProblem(prompt: r.request.promptIds.count, maxNewTokens: r.request.maxNewTokens, pool: model.kvPool) {
                                source.refuse(id: r.id, reason: reason)
                                continue
                            }
                            r.arrivalStep = max(r.arrivalStep, step)
                            pending.append(r)
                        }
                    } else {
                        sourceOpen = false
                    }
                }
                firstStep = false
                let cancelled = Set(source.takeCancellations())
                if !cancelled.isEmpty {
                    pending.removeAll { cancelled.contains($0.id) }
                    plan.cancel = running.filter { cancelled.contains($0.id) }.map { Int32($0.slot) }
                }
                let batch = running.filter { !cancelled.contains($0.id) }
                if pending.isEmpty && batch.isEmpty && !sourceOpen {
                    plan.shutdown = true
                } else {
                    if batch.isEmpty, let next = pending.first, next.arrivalStep > step { step = next.arrivalStep }
                    plan.step = Int64(step)
                    schedule(&plan, batch: batch, pending: &pending, step: step, nextSlot: &nextSlot)
                    if mode == .auto { plan.decodeMode = chooseMode(batch.filter { !$0.prefilling }).rawValue }
                }
            }
            let bytes = try comm.broadcastPatiently(try plan.serializedBytes() as [UInt8], root: 0)
            plan = try Moe_Control_StepPlan(serializedBytes: bytes)
            for slot in plan.cancel { if let s = sequences[Int(slot)] { retire(s) } }
            if plan.shutdown {
                if !plan.error.isEmpty { throw ClusterError.refused(plan.error) }
                try completeAllReplication()
                break
            }
            step = Int(plan.step)

            let decoding = decodable
            for a in plan.admit {
                try admit(slot: Int(a.sequence), id: a.request.id, request: Self.request(a.request), owner: Int(a.owner))
                stats.cachedPromptTokens += sequences[Int(a.sequence)]?.cachedPromptTokens ?? 0
            }
            let chunks = try plan.prefill.map { c in
                guard let s = sequences[Int(c.sequence)], c.count > 0, s.prefilled + Int(c.count) <= s.request.promptIds.count else {
                    throw ClusterError.refused("step \(plan.step): the plan's prefill chunk of sequence \(c.sequence) does not fit its prompt")
                }
                return PrefillChunk(s, count: Int(c.count))
            }
            // A mixed step: the decodes ride in the prompt chunks' pass (`mixedSteps`; not while an observer
            // wants prefill's routing alone).
            let mixed = mixedSteps && !chunks.isEmpty && !decoding.isEmpty && routingObserver == nil
            let chunkShapes = chunks.map { StepBudget.Chunk(count: $0.count, context: $0.start) }
            let stepStart = Clock.now
            if !chunks.isEmpty && !mixed {
                try prefill(chunks)
                let seconds = Clock.since(stepStart)
                stats.prefillSeconds += seconds
                if comm.rank == 0 && !decoding.isEmpty { stepBudget?.observePrefill(chunkShapes, seconds: seconds) }
            }
            stats.prefillTokens += chunks.reduce(0) { $0 + $1.count }
            let stepMode = mode == .auto ? (DispatchMode(rawValue: plan.decodeMode) ?? .coherent) : mode
            let startState = comm.rank == 0 && stepModel != nil ? decoding.map { ($0.home, $0.cache?.length ?? 0) } : []
            let before = comm.counters, start = Clock.now, waitedBefore = kvWaitSeconds
            if mixed {
                try prefill(chunks, riding: decoding)
            } else if !decoding.isEmpty {
                switch stepMode {
                case .ep2: try decodeOwned(decoding)
                case .coherent, .auto: try decodeCoherent(decoding)
                }
            }
            let finished = try synchronise(prefilled: chunks, decoded: decoding)
            if mixed {
                let seconds = Clock.since(stepStart)
                stats.mixedSteps += 1
                stats.prefillSeconds += seconds
                if comm.rank == 0 { stepBudget?.observeMixed(chunkShapes, decoding: decoding.count, seconds: seconds) }
            } else if comm.rank == 0 && !decoding.isEmpty {
                stepBudget?.observeDecode(sequences: decoding.count, seconds: Clock.since(start))
            }
            if !decoding.isEmpty && chunks.isEmpty {
                stats.decodeSeconds += Clock.since(start)
                stats.decodeSteps += 1
                stats.decodeTokens += decoding.count
                stats.modeSteps[stepMode.rawValue, default: 0] += 1
                stats.kvWaitSeconds += kvWaitSeconds - waitedBefore
                if let stepModel, !startState.isEmpty {
                    // After the step-end allgather the head knows every token's experts of this step.
                    let p = stepModel.step(stepMode, routing: decoding.map(\.lastRouting), homes: startState.map(\.0),
                                           contexts: startState.map(\.1), replicating: mode == .auto)
                    stats.predictedDecodeSeconds = (stats.predictedDecodeSeconds ?? 0) + p.seconds
                    stats.predictedCommunicationSeconds = (stats.predictedCommunicationSeconds ?? 0) + p.communicationSeconds
                }
                let d = comm.counters.since(before)
                for kind in CommCounters.Kind.allCases {
                    stats.decodeCounters.calls[kind, default: 0] += d.calls[kind] ?? 0
                    stats.decodeCounters.bytes[kind, default: 0] += d.bytes[kind] ?? 0
                    stats.decodeCounters.seconds[kind, default: 0] += d.seconds[kind] ?? 0
                }
            }
            if comm.rank == 0 && !(chunks.isEmpty && decoding.isEmpty) {
                let total = model.kvPool?.pageCount ?? 0
                var bytes: [String: Int] = [:]
                if sharesCounters {
                    for (k, kind) in CommCounters.Kind.allCases.enumerated() { bytes[kind.rawValue] = rankBytesSent.reduce(0) { $0 + $1[k] } }
                }
                // Pages as every rank reported them in this step's allgather; none once the last sequences finish
                // (reported before they go, so that /metrics is current when their responses end).
                let idle = sequences.count == finished.count
                source.stepEnded(StepReport(
                    kvPagesInUse: total > 0 && !idle ? total - min(total, freePages.min() ?? total) : 0, kvPages: total,
                    decodeOnly: chunks.isEmpty, tokens: chunks.filter { !$0.sequence.prefilling }.count + decoding.count, bytesSent: bytes,
                    expertRows: sharesCounters ? rankExpertRows : [], remoteExpertRows: rankRemoteRows.reduce(0, +)))
            }
            if comm.rank == 0 {
                for s in chunks.map(\.sequence) + decoding where !s.tokens.isEmpty {
                    source.progress(SequenceProgress(id: s.id, tokens: s.tokens, logprobs: s.logprobs, promptLogprobs: s.promptLogprobs,
                                                     finished: s.done ? s.finishReason : nil, cachedPromptTokens: s.cachedPromptTokens))
                }
                for s in finished {
                    try onResult(ClusterResult(
                        id: s.id, tokens: s.tokens, promptTokens: s.request.promptIds.count, finishReason: s.finishReason,
                        timeToFirstToken: Double(s.firstToken - s.admitted) / 1e9, latency: Double(s.finished - s.admitted) / 1e9,
                        sparseLayers: s.sparseLayers, logprobs: s.logprobs, promptLogprobs: s.promptLogprobs, prefillSteps: s.prefillSteps,
                        cachedPromptTokens: s.cachedPromptTokens))
                }
            }
            for s in finished { retire(s) }
            step += 1
            stats.steps += 1
        }
        return stats
    }

    /// The head's part of a step plan: decodes first, then prompt chunks within `maxStepTokens` (at least one
    /// token, so that prompts always move), each at most `prefillChunk`: first those of sequences part-way through
    /// their prompts, in admission order, then requests admitted now (while the batch has room under `maxBatch`
    /// and their KV pages are free). With a `stepBudget` that knows the costs, while sequences decode the chunks
    /// also fit the seconds it allows; the first chunk gets at least one token even when none fits. A step in which
    /// the budget wants its decodes measured alone (`StepBudget.wantsDecodeSample`) runs no prompt chunk.
    func schedule(_ plan: inout Moe_Control_StepPlan, batch: [SequenceState], pending: inout [ClusterRequest], step: Int, nextSlot: inout Int) {
        let decodes = batch.filter { !$0.prefilling }.count
        var budget = max(maxStepTokens - decodes, 1)
        if stepBudget?.probing(decoding: decodes) == true { budget = min(budget, StepBudget.probeTokens) }
        if stepBudget?.wantsDecodeSample(decoding: decodes) == true { budget = 0 }
        let most = model.prefillChunk ?? Int.max
        let allowance = stepBudget?.allowance(decoding: decodes, fullBatch: maxBatch == Int.max ? nil : maxBatch)
        var chosen: [StepBudget.Chunk] = []
        /// Of the `wanted` tokens of a chunk after `context` cached ones, those that fit this step's time (0: none).
        func fitting(_ wanted: Int, context: Int) -> Int {
            guard let allowance, let stepBudget else { return wanted }
            let timed = stepBudget.largestChunk(after: chosen, context: context, most: wanted, allowance: allowance)
            return chosen.isEmpty ? max(timed, 1) : timed
        }
        func chunk(_ slot: Int, tokens n: Int, wanted: Int, context: Int) {
            var c = Moe_Control_PrefillChunk()
            c.sequence = Int32(slot)
            c.count = Int32(n)
            plan.prefill.append(c)
            chosen.append(.init(count: n, context: context))
            // A chunk cut short by the time budget ends the step's prompt work.
            budget = n < wanted ? 0 : budget - n
        }
        for s in batch where s.prefilling && budget > 0 {
            let wanted = min(s.request.promptIds.count - s.prefilled, budget, most)
            let n = fitting(wanted, context: s.prefilled)
            if n == 0 { break }
            chunk(s.slot, tokens: n, wanted: wanted, context: s.prefilled)
        }
        var running = batch.count
        while budget > 0, let next = pending.first, next.arrivalStep <= step, running < maxBatch {
            // What admission will find cached (an earlier admission of this step may take some of it back, and
            // then the chunk ends short of the prompt, which a later step finishes).
            let cached = cachesPrefix(next.request) ? model.kvPool!.cachedPrefix(next.request.promptIds, limit: next.request.promptIds.count - 1) : 0
            let wanted = min(next.request.promptIds.count - cached, budget, most)
            let n = fitting(wanted, context: cached)
            guard n > 0, let owner = placeCache(next.request, slot: nextSlot) else { break }
            running += 1
            pending.removeFirst()
            var admission = Moe_Control_Admission()
            admission.sequence = Int32(nextSlot)
            admission.owner = Int32(owner)
            admission.request = Self.message(next)
            plan.admit.append(admission)
            chunk(nextSlot, tokens: n, wanted: wanted, context: cached)
            nextSlot += 1
        }
    }

    /// `auto` mode, on the head: the mode the step-time model predicts faster for a step of `decoding`, each token
    /// routed as its last one was (shared in the step-end allgather); `coherent` while there is no forecast.
    func chooseMode(_ decoding: [SequenceState]) -> DispatchMode {
        let spec = model.spec
        guard let stepModel, !decoding.isEmpty, decoding.allSatisfy({ s in
            s.lastRouting.count == spec.layers && (0..<spec.layers).allSatisfy { !spec.moeLayers[$0] || s.lastRouting[$0].count == spec.topK }
        }) else { return .coherent }
        let routing = decoding.map(\.lastRouting), homes = decoding.map(\.home), contexts = decoding.map { $0.cache?.length ?? 0 }
        let ep2 = stepModel.step(.ep2, routing: routing, homes: homes, contexts: contexts, replicating: true)
        let coherent = stepModel.step(.coherent, routing: routing, homes: homes, contexts: contexts)
        return ep2.seconds < coherent.seconds ? .ep2 : .coherent
    }

    /// One forward pass over `tokens` as one sequence owned by rank 0 (every rank takes part); on rank 0 the
    /// logits `[tokens, vocab]` of every position, elsewhere an empty array.
    public func forward(tokens: [Int]) throws -> [Float] {
        try passAlone(tokens, id: "forward", logits: .all)
    }

    /// One prefill pass over `tokens` as a sequence of its own in slot 0, owned by rank 0, outside any run: nothing
    /// of it stays (its cache and what the step-end allgather would have carried are dropped).
    func passAlone(_ tokens: [Int], id: String, logits rows: MoEDecoder.LogitRows) throws -> [Float] {
        try admit(slot: 0, id: id, request: GenerationRequest(promptIds: tokens, maxNewTokens: 1), owner: 0)
        defer { sequences[0] = nil }
        let logits = try prefill([PrefillChunk(sequences[0]!, count: tokens.count)], logits: rows)
        tokenOut = ByteWriter()
        kvOut = ByteWriter()
        tokenCount = 0
        routingThisStep = [:]
        return logits
    }

    /// Tokens of the pass `warmUp` runs: a full step's worth (`maxStepTokens`), within the model's length and the
    /// KV pool (which every rank holds at the same size, so every rank finds the same count).
    public var warmUpTokens: Int {
        var n = min(maxStepTokens, model.maxModelLen - 1)
        while n > 1, Engine.poolProblem(prompt: n, maxNewTokens: 1, pool: model.kvPool) != nil { n /= 2 }
        return max(n, 1)
    }

    /// One prefill of `count` tokens (every rank takes part), before a server takes requests: it pages the weights
    /// in and grows the scratch buffers a full step needs, which the first requests paid for before (on `medium`,
    /// the first burst of eight 128-token prompts took 1.78 s against 1.42 s for the next). Its expert rows and
    /// bytes are left out of the counters the head reports (`sharesCounters`).
    public func warmUp(tokens count: Int) throws {
        guard count > 0 else { return }
        let vocab = model.spec.vocabSize
        _ = try passAlone((0..<count).map { $0 % vocab }, id: "warm-up", logits: .lastOfEachSegment)
        markCountersReported()
    }

    /// Indices of `requests` in the order the head admits them (and numbers their slots): by arrival step, then
    /// as given.
    public static func admissionOrder(_ requests: [ClusterRequest]) -> [Int] {
        requests.indices.sorted { (requests[$0].arrivalStep, $0) < (requests[$1].arrivalStep, $1) }
    }

    static func message(_ r: ClusterRequest) -> Moe_Control_Request {
        var m = Moe_Control_Request()
        m.id = r.id
        m.promptIds = r.request.promptIds.map { Int32($0) }
        m.maxNewTokens = Int32(r.request.maxNewTokens)
        m.stopIds = r.request.stopIds.sorted().map { Int32($0) }
        m.arrivalStep = Int64(r.arrivalStep)
        m.sampling.temperature = r.request.sampling.temperature
        m.sampling.topP = r.request.sampling.topP
        m.sampling.topK = Int32(r.request.sampling.topK)
        m.sampling.seed = r.request.sampling.seed
        m.sampling.presencePenalty = r.request.sampling.presencePenalty
        m.sampling.frequencyPenalty = r.request.sampling.frequencyPenalty
        m.sampling.repetitionPenalty = r.request.sampling.repetitionPenalty
        m.sampling.minTokens = Int32(r.request.sampling.minTokens)
        if let n = r.request.logprobs { m.logprobs = Int32(n) }
        if let n = r.request.promptLogprobs { m.promptLogprobs = Int32(n) }
        return m
    }

    static func request(_ m: Moe_Control_Request) -> GenerationRequest {
        GenerationRequest(
            promptIds: m.promptIds.map { Int($0) }, maxNewTokens: Int(m.maxNewTokens),
            sampling: SamplingParameters(temperature: m.sampling.temperature, topP: m.sampling.topP,
                                         topK: Int(m.sampling.topK), seed: m.sampling.seed,
                                         presencePenalty: m.sampling.presencePenalty, frequencyPenalty: m.sampling.frequencyPenalty,
                                         repetitionPenalty: m.sampling.repetitionPenalty == 0 ? 1 : m.sampling.repetitionPenalty,
                                         minTokens: Int(m.sampling.minTokens)),
            stopIds: Set(m.stopIds.map { Int($0) }),
            logprobs: m.hasLogprobs ? Int(m.logprobs) : nil, promptLogprobs: m.hasPromptLogprobs ? Int(m.promptLogprobs) : nil)
    }
}

/// Every rank's status before any data moves: all go on, or all stop with the first failure's message.
public enum Agreement {
    /// Gathers each rank's status; throws `ClusterError.agreement` on every rank if any rank failed.
    public static func agree(_ comm: Communicator, error: String?, expertBytes: Int, kvPages: Int = 0) throws -> [Moe_Control_RankStatus] {
        var status = Moe_Control_RankStatus()
        status.rank = Int32(comm.rank)
        status.ok = error == nil
        status.error = error ?? ""
        status.expertBytes = Int64(expertBytes)
        status.kvPages = Int64(kvPages)
        let all = try comm.allgatherv(try status.serializedBytes() as [UInt8]).map { try Moe_Control_RankStatus(serializedBytes: $0) }
        if let failed = all.first(where: { !$0.ok }) {
            let others = all.filter { !$0.ok }.count - 1
            throw ClusterError.agreement(rank: Int(failed.rank), message: failed.error, otherFailures: others)
        }
        return all
    }
}

/// Why a cluster run stopped.
public enum ClusterError: Error, CustomStringConvertible {
    case agreement(rank: Int, message: String, otherFailures: Int)
    /// The head refused the run before its first step.
    case refused(String)

    public var description: String {
        switch self {
        case .agreement(let rank, let message, let others):
            return "rank \(rank): \(message)" + (others > 0 ? " (and \(others) more rank\(others == 1 ? "" : "s") failed)" : "")
        case .refused(let message):
            return message
        }
    }
}
