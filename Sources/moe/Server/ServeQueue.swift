import Cluster
import Foundation
import Models

/// What the step loop tells one request's HTTP handler.
enum ServeEvent: Sendable {
    /// Every token so far (the handler detokenizes what is new), with their log-probabilities when asked for
    /// and the prompt's (`echo` with `logprobs`).
    /// `cached`: prompt tokens read from cached pages (prefix caching).
    case tokens([Int], logprobs: [TokenLogprob], prompt: [TokenLogprob]?, cached: Int)
    /// Generation ended: the engine's reason (length, or a stop id).
    case finished(FinishReason)
    /// The cluster cannot run it: it can never fit the KV pool (`status` 400), or the cluster stopped (500).
    case failed(String, status: Int)
}

/// Why a request was not queued.
enum AdmissionRefusal: Error {
    /// The queue is full: answer 429 with Retry-After.
    case full
    /// The server is draining or stopping: answer 503.
    case closing
}

/// The bridge between the HTTP handlers (any thread) and the MPI step loop (rank 0's main thread): requests wait
/// here until the loop takes them between steps, and each request's events flow back through its own stream.
final class ServeQueue: RequestSource, @unchecked Sendable {  // Every field is guarded by `lock`.
    private let lock = NSCondition()
    private var arrived: [ClusterRequest] = []
    private var streams: [String: AsyncStream<ServeEvent>.Continuation] = [:]
    private var cancellations: [String] = []
    private var started: Set<String> = []
    private var closed = false
    /// Requests admitted to the queue and not yet finished, at most `capacity`.
    private(set) var inFlight = 0
    let capacity: Int
    let metrics: ServerMetrics?
    private var nextId = 0
    /// The cluster's counters at the previous step, for the increments of the next.
    private var lastBytes: [String: Int] = [:]
    private var lastRows: [[Int]] = []
    private var lastRemote = 0

    init(capacity: Int, metrics: ServerMetrics?) {
        self.capacity = capacity
        self.metrics = metrics
    }

    /// Queues `request` (its id is replaced by a unique one) and returns that id and the stream of its events.
    func submit(_ request: GenerationRequest) throws(AdmissionRefusal) -> (String, AsyncStream<ServeEvent>) {
        lock.lock(); defer { lock.unlock() }
        guard !closed else { throw .closing }
        guard inFlight < capacity else { throw .full }
        nextId += 1
        let id = "r\(nextId)"
        let (stream, continuation) = AsyncStream<ServeEvent>.makeStream()
        streams[id] = continuation
        arrived.append(ClusterRequest(id: id, request: request))
        inFlight += 1
        updateGauges()
        lock.signal()
        return (id, stream)
    }

    /// The client is gone, or it has what it wanted (a stop string): end the request without more events.
    func cancel(_ id: String) {
        lock.lock(); defer { lock.unlock() }
        guard let c = streams.removeValue(forKey: id) else { return }
        c.finish()
        inFlight -= 1
        started.remove(id)
        if let k = arrived.firstIndex(where: { $0.id == id }) { arrived.remove(at: k) } else { cancellations.append(id) }
        updateGauges()
        lock.signal()
    }

    /// Stops taking requests; the step loop ends once those in flight are done.
    func close() {
        lock.lock(); defer { lock.unlock() }
        closed = true
        lock.broadcast()
    }

    var isClosed: Bool { lock.lock(); defer { lock.unlock() }; return closed }

    /// Ends every stream still open with `message` (the cluster stopped).
    func failAll(_ message: String) {
        lock.lock(); defer { lock.unlock() }
        for (_, c) in streams { c.yield(.failed(message, status: 500)); c.finish() }
        streams.removeAll()
        arrived.removeAll()
        inFlight = 0
        closed = true
        lock.broadcast()
    }

    private func updateGauges() {
        metrics?.queue(waiting: inFlight - started.count, running: started.count)
    }

    // MARK: RequestSource (the step loop's side)

    /// After an idle cluster wakes for a request, how long the loop waits for others before its first step.
    /// Requests a client sends together reach the queue up to a few milliseconds apart; without the wait the first
    /// one's prompt runs in a pass of its own and the rest wait for it (on `medium`, 0.25 s for 128 tokens, where
    /// the eight together take 1.5 s), so each burst paid one extra pass over the weights.
    static let gatherSeconds = 0.003

    func next(wait: Bool) -> [ClusterRequest]? {
        lock.lock(); defer { lock.unlock() }
        var waited = false
        while wait, arrived.isEmpty, !closed, cancellations.isEmpty {
            lock.wait()
            waited = true
        }
        if waited, !arrived.isEmpty {
            let deadline = Date().addingTimeInterval(Self.gatherSeconds)
            while !closed, lock.wait(until: deadline) {}
        }
        if arrived.isEmpty, closed { return nil }
        defer { arrived.removeAll() }
        return arrived
    }

    func takeCancellations() -> [String] {
        lock.lock(); defer { lock.unlock() }
        defer { cancellations.removeAll() }
        return cancellations
    }

    func progress(_ p: SequenceProgress) {
        lock.lock(); defer { lock.unlock() }
        let id = p.id
        guard let c = streams[id] else { return }
        if started.insert(id).inserted { updateGauges() }
        c.yield(.tokens(p.tokens, logprobs: p.logprobs, prompt: p.promptLogprobs, cached: p.cachedPromptTokens))
        if let finished = p.finished {
            c.yield(.finished(finished))
            c.finish()
            streams[id] = nil
            started.remove(id)
            inFlight -= 1
            updateGauges()
            lock.broadcast()
        }
    }

    func stepEnded(_ report: StepReport) {
        guard let metrics else { return }
        lock.lock(); defer { lock.unlock() }
        metrics.kvPages(inUse: report.kvPagesInUse, of: report.kvPages)
        var stepBytes: [String: Int] = [:]
        for (kind, total) in report.bytesSent {
            stepBytes[kind] = total - lastBytes[kind, default: 0]
            metrics.commBytes(kind, stepBytes[kind]!)
        }
        lastBytes = report.bytesSent
        if report.decodeOnly && report.tokens > 0 {
            for (kind, n) in stepBytes { metrics.commBytesPerToken(kind, Double(n) / Double(report.tokens)) }
        }
        var stepRows = 0
        for (rank, rows) in report.expertRows.enumerated() {
            for (layer, n) in rows.enumerated() {
                let before = rank < lastRows.count ? lastRows[rank][layer] : 0
                if n > before { metrics.expertRows(layer: layer, rank: rank, n - before) }
                stepRows += n - before
            }
        }
        if !report.expertRows.isEmpty {
            metrics.crossRankRows(report.remoteExpertRows - lastRemote, of: stepRows)
        }
        lastRows = report.expertRows
        lastRemote = report.remoteExpertRows
    }

    func refuse(id: String, reason: String) {
        lock.lock(); defer { lock.unlock() }
        guard let c = streams.removeValue(forKey: id) else { return }
        c.yield(.failed(reason, status: 400))
        c.finish()
        inFlight -= 1
        updateGauges()
        lock.broadcast()
    }
}
