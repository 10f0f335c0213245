import Foundation
import Testing

/// `moe serve` against a real HTTP client (curl, loopback only): results equal `moe generate`'s, every error
/// case has its status, the queue answers 429 when full, SIGUSR1 drains, and a client that goes away frees its
/// sequence.
@Suite(.serialized) struct ServeTests {
    /// A running server: its process, port and output.
    final class Server {
        let process: Process
        let port: Int
        let stdout: Pipe
        let stderr: Pipe
        let tokenizer: String
        let launch: MPIRun.Launch?

        /// Starts `moe serve` (under mpirun with `ranks`) on a free port and waits until it is ready.
        /// `throughScript`: started as `MOE_DRAIN_ON_TERM=1 Scripts/mpirun.sh -np ranks moe serve ...`, as
        /// `Deploy/launch.sh` starts it.
        /// `model`: the model flags instead of tiny-mixtral with a byte tokenizer; `environment`: more variables
        /// for the ranks (with `ranks`).
        init(_ extra: [String] = [], ranks: Int? = nil, throughScript: Bool = false, model: [String]? = nil,
             environment: [String: String] = [:]) throws {
            tokenizer = try TextCommandTests.byteTokenizer()
            let config = #"{"eos_token": null, "chat_template": "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system messages') }}{% endif %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"}"#
            try config.write(toFile: tokenizer + "/tokenizer_config.json", atomically: true, encoding: .utf8)
            let args = ["serve"] + (model ?? ["--model", fixture("tiny-mixtral"), "--tokenizer", tokenizer]) + ["--port", "0", "--served-model-name", "tiny"] + extra
            let p: Process
            if throughScript {
                launch = nil
                p = Process()
                p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                let script = LaunchSiteTests.root.appendingPathComponent("Scripts/mpirun.sh").path
                p.arguments = ["python3", "-c", MPIRun.signalReset, "/bin/bash", script, "-np", "\(ranks ?? 2)", MoEBinary.url.path] + args
                p.environment = MPIRun.environment(["MOE_DRAIN_ON_TERM": "1"])
                stdout = Pipe(); stderr = Pipe()
                p.standardOutput = stdout
                p.standardError = stderr
                try p.run()
            } else if let ranks {
                let l = try MPIRun.start(["-np", "\(ranks)", MoEBinary.url.path] + args, environment: environment, defaultSignals: true)
                launch = l
                p = l.process
                stdout = l.stdout; stderr = l.stderr
            } else {
                launch = nil
                p = Process()
                p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                p.arguments = ["python3", "-c", MPIRun.signalReset, MoEBinary.url.path] + args
                p.environment = MPIRun.environment([:])
                stdout = Pipe(); stderr = Pipe()
                p.standardOutput = stdout
                p.standardError = stderr
                try p.run()
            }
            process = p
            // "moe serve: listening on http://127.0.0.1:PORT (loading)", then "moe serve: ready, ...".
            var text = ""
            let deadline = Date().addingTimeInterval(60)
            let handle = stdout.fileHandleForReading
            var found: Int? = nil
            while Date() < deadline, !text.contains("moe serve: ready") {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                text += String(decoding: chunk, as: UTF8.self)
            }
            if let r = text.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                found = Int(text[r].split(separator: ":").last!)
            }
            guard let found, text.contains("moe serve: ready") else {
                p.terminate()
                throw TestFailure("the server did not start: \(text)")
            }
            port = found
        }

        deinit {
            // SIGTERM drains (it waits for requests in flight); a server that has not ended 10 s later is killed.
            if process.isRunning { process.terminate() }
            let deadline = Date().addingTimeInterval(10)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning { killTree(process.processIdentifier) }
            process.waitUntilExit()
            try? FileManager.default.removeItem(atPath: tokenizer)
        }

        var url: String { "http://127.0.0.1:\(port)" }
    }

    struct TestFailure: Error, CustomStringConvertible { let description: String; init(_ d: String) { description = d } }

    struct Reply {
        let status: Int
        let body: String
        let headers: String
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:] }
        var errorMessage: String { ((json["error"] as? [String: Any])?["message"] as? String) ?? "" }
    }

    /// One request with curl.
    static func curl(_ url: String, body: String? = nil, headers: [String] = [], maxTime: Double = 60) throws -> Reply {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        let headerFile = FileManager.default.temporaryDirectory.appendingPathComponent("moe-h-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: headerFile) }
        var args = ["-sN", "--max-time", String(maxTime), "-D", headerFile, "-w", "\n%{http_code}", url]
        for h in headers { args += ["-H", h] }
        if let body { args += ["-H", "Content-Type: application/json", "--data-binary", body] }
        p.arguments = args
        let r = try MoEBinary.wait(p, timeout: maxTime + 10)
        var lines = r.stdout.components(separatedBy: "\n")
        let status = Int(lines.removeLast()) ?? 0
        return Reply(status: status, body: lines.joined(separator: "\n"), headers: (try? String(contentsOfFile: headerFile, encoding: .utf8)) ?? "")
    }

    /// The text `moe generate` makes for `ids` with the same settings.
    static func generated(_ ids: [Int], tokens: Int, tokenizer: String, flags: [String] = []) throws -> String {
        let r = try MoEBinary.run(["generate", "--model", fixture("tiny-mixtral"), "--tokenizer", tokenizer, "--prompt-ids",
                                   ids.map(String.init).joined(separator: ","), "--max-new-tokens", "\(tokens)", "--temperature", "0", "--json"] + flags)
        return (try JSONSerialization.jsonObject(with: Data(r.lastLine.utf8)) as? [String: Any])?["text"] as? String ?? "<\(r.stderr)>"
    }

    /// The text of an SSE stream's chunks, and whether it ended with [DONE].
    static func streamed(_ body: String, chat: Bool) -> (text: String, done: Bool, finish: String?, usage: [String: Any]?) {
        var text = "", finish: String? = nil, usage: [String: Any]? = nil
        let events = body.components(separatedBy: "\n\n").filter { $0.hasPrefix("data: ") }.map { String($0.dropFirst(6)) }
        for e in events where e != "[DONE]" {
            guard let o = try? JSONSerialization.jsonObject(with: Data(e.utf8)) as? [String: Any] else { continue }
            if let u = o["usage"] as? [String: Any] { usage = u }
            for c in o["choices"] as? [[String: Any]] ?? [] {
                text += chat ? ((c["delta"] as? [String: Any])?["content"] as? String ?? "") : (c["text"] as? String ?? "")
                if let f = c["finish_reason"] as? String { finish = f }
            }
        }
        return (text, events.last == "[DONE]", finish, usage)
    }

    @Test func completionsAndChatEqualGenerateStreamingOrNot() throws {
        let server = try Server()
        let prompt = "Hello there"
        let ids = Array(prompt.utf8).map(Int.init)
        let want = try Self.generated(ids, tokens: 12, tokenizer: server.tokenizer)

        let plain = try Self.curl(server.url + "/v1/completions", body: #"{"model": "tiny", "prompt": "Hello there", "max_tokens": 12, "temperature": 0}"#)
        #expect(plain.status == 200, "\(plain.body)")
        let choice = try #require((plain.json["choices"] as? [[String: Any]])?.first)
        #expect(choice["text"] as? String == want)
        #expect(choice["finish_reason"] as? String == "length")
        let usage = try #require(plain.json["usage"] as? [String: Int])
        #expect(usage == ["prompt_tokens": 11, "completion_tokens": 12, "total_tokens": 23])
        var prompts = 11, completions = 12  // the sums of every response's usage, for /metrics below
        func add(_ u: Any?) { let u = u as? [String: Any]; prompts += u?["prompt_tokens"] as? Int ?? 0; completions += u?["completion_tokens"] as? Int ?? 0 }

        let byIds = try Self.curl(server.url + "/v1/completions", body: #"{"prompt": \#(ids), "max_tokens": 12, "temperature": 0}"#)
        #expect((byIds.json["choices"] as? [[String: Any]])?.first?["text"] as? String == want)
        add(byIds.json["usage"])

        let stream = try Self.curl(server.url + "/v1/completions",
                                   body: #"{"prompt": "Hello there", "max_tokens": 12, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}"#)
        #expect(stream.headers.lowercased().contains("content-type: text/event-stream"))
        let s = Self.streamed(stream.body, chat: false)
        #expect(s.text == want)
        #expect(s.done)
        #expect(s.finish == "length")
        #expect(s.usage?["completion_tokens"] as? Int == 12)
        add(s.usage)

        // Chat: the template's prompt (as /tokenize renders it) generates what moe generate makes of its ids.
        let messages = #"[{"role": "user", "content": "Hi"}]"#
        let tokenized = try Self.curl(server.url + "/tokenize", body: #"{"messages": \#(messages)}"#)
        let chatIds = try #require(tokenized.json["tokens"] as? [Int])
        #expect(chatIds == Array("<user>Hi<assistant>".utf8).map(Int.init))
        let chatWant = try Self.generated(chatIds, tokens: 6, tokenizer: server.tokenizer)
        let chat = try Self.curl(server.url + "/v1/chat/completions", body: #"{"messages": \#(messages), "max_tokens": 6, "temperature": 0}"#)
        #expect(chat.status == 200, "\(chat.body)")
        let message = (chat.json["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any]
        #expect(message?["content"] as? String == chatWant)
        #expect(message?["role"] as? String == "assistant")
        add(chat.json["usage"])
        let chatStream = try Self.curl(server.url + "/v1/chat/completions",
                                       body: #"{"messages": \#(messages), "max_tokens": 6, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}"#)
        let cs = Self.streamed(chatStream.body, chat: true)
        add(cs.usage)
        #expect(cs.text == chatWant)
        #expect(cs.done)
        #expect(chatStream.body.contains(#""role":"assistant""#))

        // A stop string cuts the text and ends the request.
        if let cut = want.unicodeScalars.dropFirst(3).first, want.unicodeScalars.count > 5 {
            let stop = String(cut)
            let stopped = try Self.curl(server.url + "/v1/completions", body: #"{"prompt": "Hello there", "max_tokens": 12, "temperature": 0, "stop": [\#(Self.jsonString(stop))]}"#)
            let c = (stopped.json["choices"] as? [[String: Any]])?.first
            #expect(c?["finish_reason"] as? String == "stop")
            #expect(c?["text"] as? String == String(want[..<want.range(of: stop)!.lowerBound]))
            add(stopped.json["usage"])
        }

        // Penalties: what moe generate makes with the same ones, and not the plain text.
        let penalised = try Self.generated(ids, tokens: 12, tokenizer: server.tokenizer, flags: ["--presence-penalty", "1.5", "--repetition-penalty", "1.3"])
        let p = try Self.curl(server.url + "/v1/completions",
                              body: #"{"prompt": "Hello there", "max_tokens": 12, "temperature": 0, "presence_penalty": 1.5, "repetition_penalty": 1.3}"#)
        #expect(p.status == 200, "\(p.body)")
        #expect((p.json["choices"] as? [[String: Any]])?.first?["text"] as? String == penalised)
        #expect(penalised != want)
        add(p.json["usage"])
        // min_tokens: a stop string that the first token's text begins with does not apply before it.
        if let first = want.unicodeScalars.first {
            let body = #"{"prompt": "Hello there", "max_tokens": 12, "temperature": 0, "min_tokens": 12, "stop": [\#(Self.jsonString(String(first)))]}"#
            let held = try Self.curl(server.url + "/v1/completions", body: body)
            let c = (held.json["choices"] as? [[String: Any]])?.first
            #expect(c?["text"] as? String == want && c?["finish_reason"] as? String == "length", "\(held.body)")
            add(held.json["usage"])
        }

        // Models, health, detokenize, metrics (token counters equal the usage of every completion above).
        let models = try Self.curl(server.url + "/v1/models")
        #expect(((models.json["data"] as? [[String: Any]])?.first?["id"] as? String) == "tiny")
        #expect(try Self.curl(server.url + "/health").status == 200)
        let detok = try Self.curl(server.url + "/detokenize", body: #"{"tokens": [72, 105]}"#)
        #expect(detok.json["prompt"] as? String == "Hi")
        let metrics = try Self.curl(server.url + "/metrics").body
        for family in ["moe_prompt_tokens_total", "moe_generation_tokens_total", "moe_num_requests_running", "moe_num_requests_waiting",
                       "moe_time_to_first_token_seconds", "moe_time_per_output_token_seconds", "moe_e2e_request_latency_seconds", "moe_request_success_total",
                       "moe_http_requests_total", "moe_kv_pages_in_use", "moe_kv_cache_usage_perc", "moe_expert_rows_total"] {
            #expect(metrics.contains(family), "\(family)")
        }
        #expect(Self.metric(metrics, "moe_generation_tokens_total") == Double(completions))
        #expect(Self.metric(metrics, "moe_prompt_tokens_total") == Double(prompts))
    }

    static func jsonString(_ s: String) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: [s]), as: UTF8.self).dropFirst().dropLast().description
    }

    /// The value of an unlabelled Prometheus sample.
    static func metric(_ text: String, _ name: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last!) }
    }

    /// `--enable-prefix-caching`: a prompt sent again reads its whole pages from the pool; the text is the same,
    /// `usage.prompt_tokens_details.cached_tokens` says how many tokens were read (streamed usage too), and
    /// `/metrics` counts them as hits among the prompt tokens queried.
    @Test func aRepeatedPromptReadsItsCachedPages() throws {
        let server = try Server(["--enable-prefix-caching"])
        let ids = (0..<40).map { 3 + ($0 * 7) % 200 }
        let body = #"{"prompt": \#(ids), "max_tokens": 5, "temperature": 0}"#
        let first = try Self.curl(server.url + "/v1/completions", body: body)
        #expect(first.status == 200, "\(first.body)")
        #expect((first.json["usage"] as? [String: Any])?["prompt_tokens_details"] == nil)
        let again = try Self.curl(server.url + "/v1/completions", body: body)
        let text = { (r: Reply) in (r.json["choices"] as? [[String: Any]])?.first?["text"] as? String }
        #expect(text(again) != nil && text(again) == text(first))
        let usage = try #require(again.json["usage"] as? [String: Any])
        #expect((usage["prompt_tokens_details"] as? [String: Int])?["cached_tokens"] == 32)  // two pages of 16
        #expect(usage["prompt_tokens"] as? Int == 40)
        let stream = try Self.curl(server.url + "/v1/completions", body: #"{"prompt": \#(ids), "max_tokens": 5, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}"#)
        let streamed = Self.streamed(stream.body, chat: false)
        #expect(streamed.text == text(first))
        #expect((streamed.usage?["prompt_tokens_details"] as? [String: Int])?["cached_tokens"] == 32)
        let metrics = try Self.curl(server.url + "/metrics").body
        #expect(Self.metric(metrics, "moe_prefix_cache_queries_total") == 120)
        #expect(Self.metric(metrics, "moe_prefix_cache_hits_total") == 64)
    }

    @Test func benchServeCountsWhatTheServerMade() throws {
        let server = try Server()
        let before = Self.metric(try Self.curl(server.url + "/metrics").body, "moe_generation_tokens_total") ?? 0
        let r = try MoEBinary.run(["bench", "serve", "--base-url", server.url, "--num-prompts", "6", "--max-concurrency", "3",
                                   "--request-rate", "50", "--input-len", "8", "--output-len", "5", "--format", "json"])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.lastLine.utf8)) as? [String: Any])
        #expect(json["completed"] as? Int == 6)
        #expect(json["failed"] as? Int == 0)
        #expect(json["total_output_tokens"] as? Int == 30)  // ignore_eos: exactly the output length each
        #expect((json["output_throughput"] as? Double ?? 0) > 0)
        let ttft = try #require(json["ttft_ms"] as? [String: Double])
        #expect(ttft["p50"]! > 0 && ttft["p50"]! <= ttft["p99"]!)
        let after = Self.metric(try Self.curl(server.url + "/metrics").body, "moe_generation_tokens_total") ?? 0
        #expect(after - before == 30)
        let refused = try MoEBinary.run(["bench", "serve", "--base-url", "http://127.0.0.1:1", "--num-prompts", "1"])
        #expect(refused.status == 1)
    }

    @Test func badRequestsGetTheirStatusAndMessage() throws {
        let server = try Server(["--api-key", "sekrit", "--max-body-bytes", "4096"])
        let auth = ["Authorization: Bearer sekrit"]
        let cases: [(String, String, Int, String)] = [
            ("/v1/completions", "{", 400, "the body is not valid JSON"),
            ("/v1/completions", "[1]", 400, "the body must be a JSON object"),
            ("/v1/completions", #"{"prompt": "x", "max_tokens": "many"}"#, 400, "'max_tokens' must be an integer"),
            ("/v1/completions", #"{"prompt": "x", "temperature": -1}"#, 400, "temperature"),
            ("/v1/completions", #"{"max_tokens": 3}"#, 400, "'prompt' is required"),
            ("/v1/completions", #"{"prompt": "x", "n": 2, "best_of": 3}"#, 400, "unsupported parameters: n, best_of"),
            ("/v1/completions", #"{"prompt": "x", "presence_penalty": 2.5}"#, 400, "presence_penalty must be in [-2, 2], got 2.5"),
            ("/v1/completions", #"{"prompt": "x", "frequency_penalty": "lots"}"#, 400, "'frequency_penalty' must be a number"),
            ("/v1/completions", #"{"prompt": "x", "repetition_penalty": 0}"#, 400, "repetition_penalty must be a finite number > 0"),
            ("/v1/completions", #"{"prompt": "x", "min_tokens": 1.5}"#, 400, "'min_tokens' must be an integer"),
            ("/v1/completions", #"{"prompt": "x", "min_tokens": -1}"#, 400, "min_tokens must be >= 0"),
            ("/v1/completions", #"{"prompt": "x", "max_tokens": 4, "min_tokens": 5}"#, 400, "'min_tokens' (5) must be at most 'max_tokens' (4)"),
            ("/v1/completions", #"{"prompt": "x", "model": "gpt-9"}"#, 404, "The model `gpt-9` does not exist."),
            ("/v1/completions", #"{"prompt": [1, 2, 99999]}"#, 400, "token id 99999 is outside the vocabulary (0..<320)"),
            ("/v1/completions", #"{"prompt": "x", "max_tokens": 300}"#, 400, "maximum context length is 256 tokens. However, you requested 301 tokens"),
            ("/v1/completions", #"{"prompt": ""}"#, 400, "the prompt is empty"),
            ("/v1/chat/completions", #"{"messages": [{"role": "system", "content": "x"}]}"#, 400, "no system messages"),
            ("/v1/chat/completions", #"{"messages": "hi"}"#, 400, "'messages' must be a non-empty list"),
            ("/v1/chat/completions", #"{"messages": [{"content": "x"}]}"#, 400, "must be an object with a string 'role'"),
            ("/detokenize", #"{"tokens": ["a"]}"#, 400, "'tokens' must be a list of token ids"),
            ("/v1/completions", #"{"prompt": "\#(String(repeating: "x", count: 5000))"}"#, 413, "larger than 4096 bytes"),
        ]
        for (path, body, status, message) in cases {
            let r = try Self.curl(server.url + path, body: body, headers: auth)
            #expect(r.status == status, "\(path) \(body.prefix(60)): \(r.status) \(r.body)")
            #expect(r.errorMessage.contains(message), "\(path) \(body.prefix(60)): \(r.body)")
            #expect((r.json["error"] as? [String: Any])?["type"] is String)
        }
        let noKey = try Self.curl(server.url + "/v1/models")
        #expect(noKey.status == 401)
        #expect(noKey.errorMessage.contains("invalid or missing API key"))
        #expect(try Self.curl(server.url + "/v1/models", headers: ["Authorization: Bearer wrong"]).status == 401)
        #expect(try Self.curl(server.url + "/v1/models", headers: auth).status == 200)
        let unknownField = try Self.curl(server.url + "/v1/completions", body: #"{"prompt": "x", "max_tokens": 2, "frobnicate": 1}"#, headers: auth)
        #expect(unknownField.status == 200)
        #expect(try Self.curl(server.url + "/health").status == 200)  // not behind the key
    }

    @Test func aFullQueueAnswers429WithRetryAfter() throws {
        let server = try Server(["--max-batch", "1", "--max-queue", "1"])
        let url = server.url
        let group = DispatchGroup()
        nonisolated(unsafe) var replies: [Reply] = []
        let lock = NSLock()
        for _ in 0..<5 {
            group.enter()
            DispatchQueue.global().async {
                let r = try? Self.curl(url + "/v1/completions", body: #"{"prompt": "x", "max_tokens": 200, "temperature": 0}"#)
                lock.lock(); if let r { replies.append(r) }; lock.unlock()
                group.leave()
            }
        }
        group.wait()
        let refused = replies.filter { $0.status == 429 }
        #expect(replies.count == 5)
        #expect(!refused.isEmpty, "\(replies.map(\.status))")
        #expect(replies.filter { $0.status == 200 }.count >= 2)
        #expect(refused.allSatisfy { $0.headers.lowercased().contains("retry-after: 1") && $0.errorMessage.contains("queue is full") })
    }

    /// `/metrics` under 2 ranks: every layer's expert rows, summed over ranks, are top-k times the tokens that
    /// passed through the layers (each prompt token, and each generated token but the last); both ranks computed
    /// some; bytes crossed ranks; no KV page is held once every request has finished.
    @Test(arguments: ["ep2", "coherent"])
    func metricsCountExpertRowsAndBytesOfEveryRank(mode: String) throws {
        let server = try Server(["--dispatch", mode], ranks: 2)
        var passed = 0
        for prompt in ["Hello there", "A longer prompt, to see", "x"] {
            let r = try Self.curl(server.url + "/v1/completions", body: #"{"prompt": \#(Self.jsonString(prompt)), "max_tokens": 7, "temperature": 0, "ignore_eos": true}"#)
            #expect(r.status == 200, "\(r.body)")
            let usage = try #require(r.json["usage"] as? [String: Int])
            passed += usage["prompt_tokens"]! + usage["completion_tokens"]! - 1
        }
        let metrics = try Self.curl(server.url + "/metrics").body
        let spec = Reference.all["tiny-mixtral"]!.spec
        var byRank = [0.0, 0.0]
        for layer in 0..<spec.layers {
            let perRank = (0..<2).map { rank in
                Self.metric(metrics, #"moe_expert_rows_total{layer="\#(layer)",rank="\#(rank)"}"#)
                    ?? Self.metric(metrics, #"moe_expert_rows_total{rank="\#(rank)",layer="\#(layer)"}"#) ?? 0
            }
            #expect(perRank.reduce(0, +) == Double(spec.topK * passed), "layer \(layer): \(perRank) vs \(spec.topK) × \(passed)")
            byRank = zip(byRank, perRank).map { $0 + $1 }
        }
        #expect(byRank.allSatisfy { $0 > 0 }, "\(byRank)")
        // Rows computed on a rank where the token was not at home crossed: some, not all.
        let crossed = Self.metric(metrics, "moe_cross_rank_expert_rows_total") ?? 0
        #expect(crossed > 0 && crossed < byRank.reduce(0, +), "\(crossed) of \(byRank)")
        #expect((0...1).contains(Self.metric(metrics, "moe_cross_rank_fraction") ?? -1))
        let dispatched = metrics.split(separator: "\n").first { $0.hasPrefix("moe_comm_bytes_total") && $0.contains(#"kind="dispatch""#) }
        #expect((dispatched.flatMap { Double($0.split(separator: " ").last!) } ?? 0) > 0, "\(metrics)")
        #expect(metrics.contains("moe_comm_bytes_per_token"))
        #expect(Self.metric(metrics, "moe_kv_pages_in_use") == 0)
    }

    /// A rank killed mid-stream: mpirun ends the job with SIGTERM to the head, which sends the stream an error
    /// event and [DONE] before mpirun's SIGKILL, and the job ends non-zero within 30 s (`medium`, so that a stream
    /// of 500 tokens lasts long enough to be cut).
    @Test func aRankLostMidStreamEndsItWithAnErrorEvent() throws {
        let pids = try TemporaryDirectoryPath()
        let server = try Server(["--max-model-len", "600"], ranks: 2, model: ["--preset", "medium"], environment: ["MOE_PID_DIR": pids.path])
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        client.arguments = ["-sN", "--max-time", "90", server.url + "/v1/completions", "-H", "Content-Type: application/json", "--data-binary",
                            #"{"prompt": "Hello", "max_tokens": 500, "temperature": 0, "ignore_eos": true, "stream": true}"#]
        let out = Pipe()
        client.standardOutput = out
        try client.run()
        var body = ""
        let deadline = Date().addingTimeInterval(60)
        while body.components(separatedBy: "data: ").count < 4 && Date() < deadline {
            body += String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        }
        #expect(!body.contains("[DONE]"), "the stream ended before the kill: \(body)")
        let pid = try String(contentsOfFile: pids.path + "/rank-1.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let killedAt = Date()
        kill(pid_t(pid)!, SIGKILL)
        body += String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        client.waitUntilExit()
        #expect(body.contains("the cluster stopped: mpirun is ending the job"), "\(body.suffix(600))")
        #expect(body.hasSuffix("data: [DONE]\n\n"), "\(body.suffix(300))")
        let job = try #require(server.launch).finish(timeout: 30)
        #expect(Date().timeIntervalSince(killedAt) < 30)
        #expect(job.status != 0)
    }

    @Test func aClientThatGoesAwayFreesItsSequence() throws {
        let server = try Server(["--max-batch", "1", "--max-queue", "0", "--max-model-len", "100000"])
        // The client gives up after a second of a long stream; the server must drop its sequence...
        let gone = try Self.curl(server.url + "/v1/completions", body: #"{"prompt": "x", "max_tokens": 90000, "temperature": 0, "stream": true}"#, maxTime: 1)
        #expect(gone.status == 200)
        #expect(!gone.body.contains("[DONE]"))
        // ...so that the one batch place is free again well before those 90,000 tokens.
        var running = -1.0
        for _ in 0..<100 {
            running = Self.metric(try Self.curl(server.url + "/metrics").body, "moe_num_requests_running") ?? -1
            if running == 0 { break }
            usleep(100_000)
        }
        #expect(running == 0)
        let next = try Self.curl(server.url + "/v1/completions", body: #"{"prompt": "x", "max_tokens": 3}"#, maxTime: 20)
        #expect(next.status == 200, "\(next.body)")
    }

    @Test(arguments: [(SIGUSR1, false), (SIGTERM, true)])
    func aSignalDrainsAndExitsZero(signal: Int32, throughScript: Bool) throws {
        // SIGUSR1 to mpirun itself, or SIGTERM to the wrapper Deploy/launch.sh uses (it turns it into SIGUSR1).
        let server = try Server([], ranks: 2, throughScript: throughScript)
        let url = server.url
        let group = DispatchGroup()
        nonisolated(unsafe) var streamReply: Reply? = nil
        group.enter()
        DispatchQueue.global().async {
            streamReply = try? Self.curl(url + "/v1/completions", body: #"{"prompt": "x", "max_tokens": 200, "temperature": 0, "stream": true}"#)
            group.leave()
        }
        usleep(700_000)
        kill(server.process.processIdentifier, signal)
        usleep(300_000)
        let late = try Self.curl(server.url + "/v1/completions", body: #"{"prompt": "x", "max_tokens": 2}"#)
        #expect(late.status == 503 || late.status == 0, "\(late.status) \(late.body)")  // 0: the server already closed
        group.wait()
        let s = Self.streamed(streamReply?.body ?? "", chat: false)
        #expect(s.done)
        #expect(s.finish == "length")
        let deadline = Date().addingTimeInterval(30)
        while server.process.isRunning && Date() < deadline { usleep(50_000) }
        #expect(!server.process.isRunning)
        #expect(server.process.terminationStatus == 0)
    }
}
