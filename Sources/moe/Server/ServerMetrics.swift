import Foundation
import Metrics
import Prometheus

/// The server's Prometheus families (`GET /metrics`), named after vLLM's with the prefix `moe_`, through
/// swift-metrics backed by swift-prometheus.
final class ServerMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let promptTokens: Metrics.Counter
    private let prefixCacheQueries: Metrics.Counter
    private let prefixCacheHits: Metrics.Counter
    private let generationTokens: Metrics.Counter
    private let running: Metrics.Gauge
    private let waiting: Metrics.Gauge
    private let kvPagesInUse: Metrics.Gauge
    private let kvUsage: Metrics.Gauge
    private let timeToFirstToken: Metrics.Timer
    private let timePerOutputToken: Metrics.Timer
    private let latency: Metrics.Timer
    private let crossRankRowsTotal: Metrics.Counter
    private let crossRankFraction: Metrics.Gauge

    init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        let seconds: [Double] = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80]
        factory.defaultDurationHistogramBuckets = seconds.map { .nanoseconds(Int64($0 * 1e9)) }
        self.factory = factory
        promptTokens = Metrics.Counter(label: "moe_prompt_tokens_total", factory: factory)
        generationTokens = Metrics.Counter(label: "moe_generation_tokens_total", factory: factory)
        prefixCacheQueries = Metrics.Counter(label: "moe_prefix_cache_queries_total", factory: factory)
        prefixCacheHits = Metrics.Counter(label: "moe_prefix_cache_hits_total", factory: factory)
        running = Metrics.Gauge(label: "moe_num_requests_running", factory: factory)
        waiting = Metrics.Gauge(label: "moe_num_requests_waiting", factory: factory)
        kvPagesInUse = Metrics.Gauge(label: "moe_kv_pages_in_use", factory: factory)
        kvUsage = Metrics.Gauge(label: "moe_kv_cache_usage_perc", factory: factory)
        timeToFirstToken = Metrics.Timer(label: "moe_time_to_first_token_seconds", factory: factory)
        timePerOutputToken = Metrics.Timer(label: "moe_time_per_output_token_seconds", factory: factory)
        latency = Metrics.Timer(label: "moe_e2e_request_latency_seconds", factory: factory)
        crossRankRowsTotal = Metrics.Counter(label: "moe_cross_rank_expert_rows_total", factory: factory)
        crossRankFraction = Metrics.Gauge(label: "moe_cross_rank_fraction", factory: factory)
    }

    /// One answered HTTP request of an API endpoint, by status code.
    func request(status: Int, endpoint: String) {
        Metrics.Counter(label: "moe_http_requests_total", dimensions: [("endpoint", endpoint), ("status", String(status))], factory: factory).increment()
    }

    /// A request that ended generating: tokens (prompt tokens are prefix caching's queries, those read from cached
    /// pages its hits, as vLLM counts them), reason and timings.
    func finished(promptTokens prompt: Int, cachedTokens: Int, generated: Int, reason: String, timeToFirstToken ttft: Double?, latency seconds: Double) {
        promptTokens.increment(by: prompt)
        prefixCacheQueries.increment(by: prompt)
        prefixCacheHits.increment(by: cachedTokens)
        generationTokens.increment(by: generated)
        Metrics.Counter(label: "moe_request_success_total", dimensions: [("finished_reason", reason)], factory: factory).increment()
        if let ttft { timeToFirstToken.recordNanoseconds(Int64(ttft * 1e9)) }
        latency.recordNanoseconds(Int64(seconds * 1e9))
        if generated > 1, let ttft { timePerOutputToken.recordNanoseconds(Int64((seconds - ttft) / Double(generated - 1) * 1e9)) }
    }

    func queue(waiting w: Int, running r: Int) {
        waiting.record(w)
        running.record(r)
    }

    func kvPages(inUse: Int, of total: Int) {
        kvPagesInUse.record(inUse)
        kvUsage.record(total > 0 ? Double(inUse) / Double(total) : 0)
    }

    /// Bytes moved between ranks per generated token in the last decode step, by kind (summed over ranks).
    func commBytesPerToken(_ kind: String, _ value: Double) {
        Metrics.Gauge(label: "moe_comm_bytes_per_token", dimensions: [("kind", kind)], factory: factory).record(value)
    }

    /// Bytes the ranks sent to each other in a step, by kind.
    func commBytes(_ kind: String, _ n: Int) {
        guard n > 0 else { return }
        Metrics.Counter(label: "moe_comm_bytes_total", dimensions: [("kind", kind)], factory: factory).increment(by: n)
    }

    /// Token rows the experts of `layer` on `rank` computed in a step (low cardinality: layer and rank only).
    func expertRows(layer: Int, rank: Int, _ n: Int) {
        Metrics.Counter(label: "moe_expert_rows_total", dimensions: [("layer", String(layer)), ("rank", String(rank))], factory: factory)
            .increment(by: n)
    }

    /// Of a step's `rows` expert rows, those whose token was at home on another rank: a counter, and the step's
    /// fraction (steps that ran no expert leave it).
    func crossRankRows(_ remote: Int, of rows: Int) {
        if remote > 0 { crossRankRowsTotal.increment(by: remote) }
        if rows > 0 { crossRankFraction.record(Double(remote) / Double(rows)) }
    }

    /// The Prometheus text exposition.
    func text() -> String { registry.emitToString() }
}
