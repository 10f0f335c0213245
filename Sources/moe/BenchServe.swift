import ArgumentParser
import AsyncHTTPClient
import Foundation
import Models
import Synchronization
import NIOCore
import Tokenizers

extension MoE {
    /// `moe bench serve`: a load generator for an OpenAI-compatible server, named as `vllm bench serve` names it.
    struct BenchServe: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve",
            abstract: "Load a running server with streaming completions and report throughput and latency percentiles.",
            discussion: """
            Sends --num-prompts streaming /v1/completions requests (ignore_eos, so each makes exactly its output \
            length), arriving as a Poisson process at --request-rate per second (all at once without it), at most \
            --max-concurrency in flight. Prompts are random token ids of --input-len (below the model's \
            vocab_size), or the "prompt" texts of --dataset (one JSON line each, optional "output_len"). \
            Reports request and output-token throughput and time-to-first-token, time-per-output-token and \
            inter-token-latency mean, p50, p90 and p99 (ms), as a table and a JSON line.
            """)

        @Option(help: "The server, e.g. http://127.0.0.1:8000.")
        var baseUrl: String

        @Option(help: "Requests to send.")
        var numPrompts: Int = 100

        @Option(help: "Mean arrivals per second (Poisson); default: all at once.")
        var requestRate: Double?

        @Option(help: "Requests in flight at most.")
        var maxConcurrency: Int?

        @Option(help: "Prompt tokens per random request.")
        var inputLen: Int = 128

        @Option(help: "Tokens each request generates.")
        var outputLen: Int = 64

        @Option(help: "Random tokens every random prompt starts with (the same for all, as vLLM's --random-prefix-len), before its own --input-len: what prefix caching can reuse.")
        var randomPrefixLen: Int = 0

        @Option(help: "Prompts as JSON lines {\"prompt\": TEXT, \"output_len\": N}.")
        var dataset: String?

        @Option(help: "Model name to send (default: the server's first).")
        var model: String?

        @Option(help: "API key (sent as a bearer token).")
        var apiKey: String?

        @Option(help: "Random seed for prompts and arrivals.")
        var seed: UInt64 = 0

        @Option(help: "Output: md (a table) or json (one object on the last line).")
        var format: String = "md"

        @Option(help: "Also send one request with a prompt of this many random tokens (and one output token), --long-prompt-at seconds in: the report gives its time to first token and the longest inter-token gap of the other streams while it prefilled.")
        var longPromptLen: Int?

        @Option(help: "Seconds after the start at which the long prompt is sent.")
        var longPromptAt: Double = 2

        func validate() throws {
            if numPrompts < 1 { throw ValidationError("--num-prompts must be at least 1") }
            if let r = requestRate, !(r > 0) { throw ValidationError("--request-rate must be > 0") }
            if let c = maxConcurrency, c < 1 { throw ValidationError("--max-concurrency must be at least 1") }
            if inputLen < 1 || outputLen < 1 { throw ValidationError("--input-len and --output-len must be at least 1") }
            if randomPrefixLen < 0 { throw ValidationError("--random-prefix-len must be >= 0") }
            if randomPrefixLen > 0 && dataset != nil { throw ValidationError("--random-prefix-len is for random prompts, not --dataset") }
            if !["md", "json"].contains(format) { throw ValidationError("--format must be md or json") }
            if let n = longPromptLen, n < 1 { throw ValidationError("--long-prompt-len must be at least 1") }
            if !(longPromptAt >= 0) { throw ValidationError("--long-prompt-at must be >= 0") }
            guard URL(string: baseUrl)?.host != nil else { throw ValidationError("--base-url must be a URL such as http://127.0.0.1:8000") }
        }

        /// What one request measured.
        struct Sample {
            var ok = false
            var error: String?
            var outputTokens = 0
            var timeToFirstToken = 0.0
            var latency = 0.0
            var interTokenGaps: [Double] = []
            /// Seconds from the bench's start: when the request was sent, and when each gap ended.
            var sent = 0.0
            var gapEnds: [Double] = []
        }

        func run() throws {
            let result = Mutex<Result<String, any Error>?>(nil)
            let done = DispatchSemaphore(value: 0)
            Task.detached {
                do {
                    try await self.measure()
                    result.withLock { $0 = .success("") }
                } catch {
                    result.withLock { $0 = .failure(error) }
                }
                done.signal()
            }
            done.wait()
            if case .failure(let e)? = result.withLock({ $0 }) {
                FileHandle.standardError.write(Data("moe: error: \(e)\n".utf8))
                throw ExitCode(1)
            }
        }

        func measure() async throws {
            // One connection per request in flight, the long prompt's too (the shared client's pool holds 8 per
            // host: more would wait in the client, not in the server).
            var configuration = HTTPClient.Configuration()
            configuration.connectionPool = .init(idleTimeout: .seconds(60),
                                                 concurrentHTTP1ConnectionsPerHostSoftLimit: (maxConcurrency ?? numPrompts) + 1)
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            do {
                try await measure(client)
            } catch {
                try? await client.shutdown()
                throw error
            }
            try await client.shutdown()
        }

        func measure(_ client: HTTPClient) async throws {
            let base = baseUrl.hasSuffix("/") ? String(baseUrl.dropLast()) : baseUrl
            // The model's name and vocabulary.
            let card = try await Self.json(client, base + "/v1/models", apiKey: apiKey)
            guard let first = card.object?["data"]?.array?.first?.object else { throw ValidationError("\(base)/v1/models names no model") }
            let name = model ?? first["id"]?.string ?? "default"
            let vocabulary = first["vocab_size"]?.int ?? 32_000
            var rng = SplitMix64(seed: seed)
            var prompts: [(JSONValue, Int)] = []
            if let dataset {
                guard let data = FileManager.default.contents(atPath: dataset) else { throw ValidationError("cannot read \(dataset)") }
                for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n").enumerated() {
                    guard let o = try? JSONValue.parse(Data(line.utf8)).object, let p = o["prompt"]?.string else {
                        throw ValidationError("\(dataset):\(n + 1): expected {\"prompt\": TEXT}")
                    }
                    prompts.append((.string(p), o["output_len"]?.int ?? outputLen))
                }
                guard !prompts.isEmpty else { throw ValidationError("\(dataset) has no prompts") }
                prompts = (0..<numPrompts).map { prompts[$0 % prompts.count] }
            } else {
                let low = min(100, vocabulary / 2)
                func token() -> JSONValue { .number(Double(low + Int(rng.next() % UInt64(vocabulary - low)))) }
                let prefix = (0..<randomPrefixLen).map { _ in token() }
                prompts = (0..<numPrompts).map { _ in (.array(prefix + (0..<inputLen).map { _ in token() }), outputLen) }
            }
            var arrivals: [Double] = []
            var t = 0.0
            for _ in 0..<numPrompts {
                arrivals.append(t)
                if let r = requestRate { t += -log(max(1e-12, Double(rng.next() % 1_000_000_007) / 1_000_000_007.0)) / r }
            }
            let limit = maxConcurrency ?? numPrompts
            let start = Date()
            var samples = [Sample](repeating: Sample(), count: numPrompts)
            let long: Task<Sample, Never>? = longPromptLen.map { n in
                let low = min(100, vocabulary / 2)
                let prompt = JSONValue.array((0..<n).map { _ in .number(Double(low + Int(rng.next() % UInt64(vocabulary - low)))) })
                let at = longPromptAt
                return Task {
                    try? await Task.sleep(nanoseconds: UInt64(at * 1e9))
                    return await Self.stream(client, base, name: name, prompt: prompt, tokens: 1, apiKey: apiKey, since: start)
                }
            }
            try await withThrowingTaskGroup(of: (Int, Sample).self) { group in
                var inFlight = 0
                for k in 0..<numPrompts {
                    let wait = arrivals[k] - Date().timeIntervalSince(start)
                    if wait > 0 { try await Task.sleep(nanoseconds: UInt64(wait * 1e9)) }
                    if inFlight >= limit, let (i, s) = try await group.next() { samples[i] = s; inFlight -= 1 }
                    let (prompt, length) = prompts[k]
                    group.addTask { (k, await Self.stream(client, base, name: name, prompt: prompt, tokens: length, apiKey: apiKey, since: start)) }
                    inFlight += 1
                }
                for try await (i, s) in group { samples[i] = s }
            }
            let elapsed = Date().timeIntervalSince(start)
            report(samples, elapsed: elapsed, long: await long?.value)
        }

        func report(_ samples: [Sample], elapsed: Double, long: Sample? = nil) {
            let ok = samples.filter(\.ok)
            let outputTokens = ok.reduce(0) { $0 + $1.outputTokens }
            func stats(_ values: [Double]) -> [String: Double] {
                let v = values.sorted()
                guard !v.isEmpty else { return ["mean": 0, "p50": 0, "p90": 0, "p99": 0] }
                func p(_ q: Double) -> Double { v[min(v.count - 1, Int((q * Double(v.count - 1)).rounded()))] * 1000 }
                return ["mean": v.reduce(0, +) / Double(v.count) * 1000, "p50": p(0.5), "p90": p(0.9), "p99": p(0.99)]
            }
            let ttft = stats(ok.map(\.timeToFirstToken))
            let tpot = stats(ok.filter { $0.outputTokens > 1 }.map { ($0.latency - $0.timeToFirstToken) / Double($0.outputTokens - 1) })
            let itl = stats(ok.flatMap(\.interTokenGaps))
            // The long prompt: its time to first token, and the longest gap of any other stream that overlaps its
            // prefill (from when it was sent to its first token), beside the median gap.
            var longReport: [String: Any]?
            if let long, let n = longPromptLen {
                let window = long.sent...(long.sent + (long.ok ? long.timeToFirstToken : long.latency))
                let during = ok.flatMap { s in zip(s.interTokenGaps, s.gapEnds).filter { gap, end in end >= window.lowerBound && end - gap <= window.upperBound }.map(\.0) }
                let longest = (during.max() ?? 0) * 1000
                longReport = ["prompt_tokens": n, "ok": long.ok, "error": long.error as Any? ?? NSNull(), "sent_s": long.sent,
                              "ttft_ms": long.timeToFirstToken * 1000, "max_itl_during_ms": longest,
                              "max_itl_over_p50": itl["p50"]! > 0 ? longest / itl["p50"]! : 0]
            }
            var line: [String: Any] = [
                "completed": ok.count, "failed": samples.count - ok.count, "duration_s": elapsed,
                "request_throughput": Double(ok.count) / elapsed, "output_throughput": Double(outputTokens) / elapsed,
                "total_output_tokens": outputTokens, "ttft_ms": ttft, "tpot_ms": tpot, "itl_ms": itl,
                "request_rate": requestRate.map { $0 as Any } ?? "inf", "max_concurrency": maxConcurrency.map { $0 as Any } ?? NSNull(),
                "errors": Array(Set(samples.compactMap(\.error))).sorted().prefix(5).map { $0 },
            ]
            if let longReport { line["long_prompt"] = longReport }
            if format == "json" {
                emit((try? jsonLine(line)) ?? "{}")
                return
            }
            emit("| completed | failed | duration s | req/s | output tok/s |")
            emit("|---|---|---|---|---|")
            emit(String(format: "| %d | %d | %.2f | %.2f | %.1f |", ok.count, samples.count - ok.count, elapsed,
                        Double(ok.count) / elapsed, Double(outputTokens) / elapsed))
            emit("")
            emit("| ms | mean | p50 | p90 | p99 |")
            emit("|---|---|---|---|---|")
            for (label, s) in [("time to first token", ttft), ("time per output token", tpot), ("inter-token latency", itl)] {
                emit(String(format: "| %@ | %.2f | %.2f | %.2f | %.2f |", label, s["mean"]!, s["p50"]!, s["p90"]!, s["p99"]!))
            }
            if let l = longReport {
                emit("")
                emit(String(format: "long prompt of %d tokens: time to first token %.0f ms; longest gap of another stream meanwhile %.1f ms (%.2fx the p50 gap)",
                            l["prompt_tokens"] as! Int, l["ttft_ms"] as! Double, l["max_itl_during_ms"] as! Double, l["max_itl_over_p50"] as! Double))
            }
            emit((try? jsonLine(line)) ?? "{}")
        }

        static func json(_ client: HTTPClient, _ url: String, apiKey: String?) async throws -> JSONValue {
            var request = HTTPClientRequest(url: url)
            if let apiKey { request.headers.add(name: "Authorization", value: "Bearer \(apiKey)") }
            let response = try await client.execute(request, timeout: .seconds(30))
            let body = try await response.body.collect(upTo: 1 << 20)
            guard response.status.code == 200 else { throw ValidationError("\(url): HTTP \(response.status.code): \(String(buffer: body))") }
            return try JSONValue.parse(Data(body.readableBytesView))
        }

        /// One streaming completion, timed at each chunk that carries text.
        static func stream(_ client: HTTPClient, _ base: String, name: String, prompt: JSONValue, tokens: Int, apiKey: String?,
                           since origin: Date) async -> Sample {
            var sample = Sample()
            sample.sent = Date().timeIntervalSince(origin)
            let promptJSON: String
            switch prompt {
            case .string(let s): promptJSON = OpenAIServer.jsonText([s]).dropFirst().dropLast().description
            case .array(let a): promptJSON = "[" + a.compactMap(\.int).map(String.init).joined(separator: ",") + "]"
            default: promptJSON = "\"\""
            }
            var request = HTTPClientRequest(url: base + "/v1/completions")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            // A connection per request: servers that end kept-alive connections on their own schedule (llama-server's
            // cpp-httplib) would otherwise fail requests the client sent on a connection being closed.
            request.headers.add(name: "Connection", value: "close")
            if let apiKey { request.headers.add(name: "Authorization", value: "Bearer \(apiKey)") }
            let body = #"{"model": \#(OpenAIServer.jsonText([name]).dropFirst().dropLast()), "prompt": \#(promptJSON), "max_tokens": \#(tokens), "temperature": 0, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}"#
            request.body = .bytes(ByteBuffer(string: body))
            let start = Date()
            do {
                let response = try await client.execute(request, timeout: .seconds(3600))
                guard response.status.code == 200 else {
                    let text = (try? await response.body.collect(upTo: 1 << 16)).map { String(buffer: $0) } ?? ""
                    sample.error = "HTTP \(response.status.code): \(text.prefix(200))"
                    return sample
                }
                var pending = ""
                var last: Double? = nil
                for try await buffer in response.body {
                    pending += String(buffer: buffer)
                    while let end = pending.range(of: "\n\n") {
                        let event = String(pending[..<end.lowerBound])
                        pending = String(pending[end.upperBound...])
                        guard event.hasPrefix("data: ") else { continue }
                        let payload = event.dropFirst(6)
                        if payload == "[DONE]" { sample.ok = sample.error == nil; continue }
                        guard let o = try? JSONValue.parse(Data(payload.utf8)).object else { continue }
                        if let e = o["error"]?.object?["message"]?.string { sample.error = e }
                        if let u = o["usage"]?.object?["completion_tokens"]?.int { sample.outputTokens = u }
                        if let text = o["choices"]?.array?.first?.object?["text"]?.string, !text.isEmpty {
                            let now = Date().timeIntervalSince(start)
                            if let l = last {
                                sample.interTokenGaps.append(now - l)
                                sample.gapEnds.append(sample.sent + now)
                            } else {
                                sample.timeToFirstToken = now
                            }
                            last = now
                        }
                    }
                }
                sample.latency = Date().timeIntervalSince(start)
            } catch {
                sample.error = "\(error)"
            }
            return sample
        }
    }
}
