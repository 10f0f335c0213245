import Foundation
import Hummingbird
import Models
import OrderedCollections
import Synchronization
import Tokenizers

/// The OpenAI-compatible HTTP API of rank 0 (`moe serve`): completions and chat completions (with server-sent
/// events when streaming), tokenize / detokenize, models, health and Prometheus metrics. Handlers run on
/// Hummingbird's threads and hand generation to the step loop through `ServeQueue`.
final class OpenAIServer: Sendable {
    struct Model: Sendable {
        let name: String
        let maxModelLen: Int
        let vocabulary: Int
        let tokenizer: Tokenizer
        let template: ChatTemplate?
        /// The ids that end generation unless `ignore_eos`: the tokenizer's EOS.
        let eos: Set<Int>
    }

    let queue: ServeQueue
    let metrics: ServerMetrics
    let apiKey: String?
    let maxBodyBytes: Int
    /// Set once the model is loaded and the cluster agreed; until then every route but /health answers 503.
    let model = Mutex<Model?>(nil)
    let created = Int(Date().timeIntervalSince1970)

    init(queue: ServeQueue, metrics: ServerMetrics, apiKey: String?, maxBodyBytes: Int) {
        self.queue = queue
        self.metrics = metrics
        self.apiKey = apiKey
        self.maxBodyBytes = maxBodyBytes
    }

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/health") { _, _ -> Response in
            let up = self.model.withLock { $0 != nil } && !self.queue.isClosed
            return Response(status: up ? .ok : .serviceUnavailable)
        }
        router.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: self.metrics.text())))
        }
        router.get("/v1/models") { request, _ -> Response in
            await self.answer("models", request) { model in
                Self.json(200, ["object": "list", "data": [[
                    "id": model.name, "object": "model", "created": self.created, "owned_by": "moe", "root": model.name,
                    "max_model_len": model.maxModelLen, "vocab_size": model.vocabulary,
                ]]])
            }
        }
        router.post("/v1/completions") { request, _ -> Response in
            await self.answer("completions", request) { model in try await self.completions(request, model, chat: false) }
        }
        router.post("/v1/chat/completions") { request, _ -> Response in
            await self.answer("chat_completions", request) { model in try await self.completions(request, model, chat: true) }
        }
        router.post("/tokenize") { request, _ -> Response in
            await self.answer("tokenize", request) { model in try await self.tokenize(request, model) }
        }
        router.post("/detokenize") { request, _ -> Response in
            await self.answer("detokenize", request) { model in try await self.detokenize(request, model) }
        }
        return router
    }

    /// Runs a handler with the checks every API route shares (loaded, API key), turning `APIError` into its
    /// response and counting the status.
    private func answer(_ endpoint: String, _ request: Request, _ body: (Model) async throws -> Response) async -> Response {
        let response: Response
        do {
            guard let model = model.withLock({ $0 }) else {
                throw APIError(status: 503, message: "the model is still loading", type: "service_unavailable", param: nil)
            }
            if let apiKey, request.uri.path.hasPrefix("/v1/") {
                guard request.headers[.authorization] == "Bearer \(apiKey)" else {
                    throw APIError(status: 401, message: "invalid or missing API key (send 'Authorization: Bearer KEY')", type: "authentication_error", param: nil)
                }
            }
            response = try await body(model)
        } catch let e as APIError {
            var r = Self.json(e.status, e.body)
            if e.status == 429 { r.headers[.retryAfter] = "1" }
            response = r
        } catch {
            response = Self.json(500, APIError(status: 500, message: "\(error)", type: "internal_error", param: nil).body)
        }
        metrics.request(status: Int(response.status.code), endpoint: endpoint)
        return response
    }

    static func json(_ status: Int, _ object: Any) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return Response(status: HTTPResponse.Status(code: status), headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func jsonText(_ object: Any) -> String {
        String(decoding: (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data(), as: UTF8.self)
    }

    /// The request body as a JSON object.
    private func body(_ request: Request) async throws -> OrderedDictionary<String, JSONValue> {
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: maxBodyBytes) } catch {
            throw APIError(status: 413, message: "the request body is larger than \(maxBodyBytes) bytes", type: "invalid_request_error", param: nil)
        }
        let value: JSONValue
        do { value = try JSONValue.parse(Data(buffer.readableBytesView)) } catch {
            throw APIError.invalid("the body is not valid JSON: \(error)")
        }
        guard let object = value.object else { throw APIError.invalid("the body must be a JSON object") }
        return object
    }

    private func checkModelName(_ name: String?, _ model: Model) throws {
        if let name, name != model.name {
            throw APIError(status: 404, message: "The model `\(name)` does not exist.", type: "NotFoundError", param: "model")
        }
    }

    /// The prompt ids of a chat body, rendered with the chat template (which writes BOS itself).
    private func chatPrompt(_ body: OrderedDictionary<String, JSONValue>, _ model: Model) throws -> [Int] {
        guard let template = model.template else { throw APIError.invalid("this model has no chat template; start the server with --chat-template FILE") }
        guard let messages = body["messages"]?.array, !messages.isEmpty else {
            throw APIError.invalid("'messages' must be a non-empty list", param: "messages")
        }
        for (i, m) in messages.enumerated() {
            guard let o = m.object, o["role"]?.string != nil else {
                throw APIError.invalid("'messages[\(i)]' must be an object with a string 'role'", param: "messages")
            }
            if let c = o["content"], !(c.isNull || c.string != nil || c.array != nil) {
                throw APIError.invalid("'messages[\(i)].content' must be a string, a list of parts or null", param: "messages")
            }
        }
        var extra: [String: JSONValue] = [:]
        if let k = body["chat_template_kwargs"]?.object { for (key, v) in k { extra[key] = v } }
        let generation = body["add_generation_prompt"]?.bool ?? true
        let prompt: String
        do {
            prompt = try template.render(messages: messages, addGenerationPrompt: generation, specialTokens: model.tokenizer.config, extra: extra)
        } catch {
            throw APIError.invalid(error.description, param: "messages")
        }
        return try model.tokenizer.encode(prompt, addSpecialTokens: false)
    }

    private func promptIds(_ input: PromptInput, _ model: Model) throws -> [Int] {
        switch input {
        case .text(let s): return try model.tokenizer.encode(s)
        case .ids(let ids):
            if let bad = ids.first(where: { $0 < 0 || $0 >= model.vocabulary }) {
                throw APIError.invalid("token id \(bad) is outside the vocabulary (0..<\(model.vocabulary))", param: "prompt")
            }
            return ids
        }
    }

    /// The outcome of one generated choice.
    struct Outcome {
        var text = ""
        var completionTokens = 0
        var finishReason = "length"
        /// When asked for, the log-probabilities of the tokens made and of the prompt's.
        var logprobs: [TokenLogprob] = []
        var promptLogprobs: [TokenLogprob]?
        /// Prompt tokens read from cached pages (prefix caching).
        var cachedTokens = 0
    }

    /// The `usage` object: with prefix caching's hits, `prompt_tokens_details.cached_tokens` as OpenAI reports it.
    static func usage(prompt: Int, completion: Int, cached: Int) -> [String: Any] {
        var usage: [String: Any] = ["prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion]
        if cached > 0 { usage["prompt_tokens_details"] = ["cached_tokens": cached] }
        return usage
    }

    private func completions(_ request: Request, _ model: Model, chat: Bool) async throws -> Response {
        let body = try await self.body(request)
        let parameters = try CompletionParameters(body, chat: chat)
        try checkModelName(parameters.model, model)
        let inputs = chat ? [] : try CompletionParameters.prompts(body)
        let prompts: [[Int]] = chat ? [try chatPrompt(body, model)] : try inputs.map { try promptIds($0, model) }
        // `echo`: each prompt's text before its completion (a text prompt as given, ids decoded).
        let echoed: [String] = !parameters.echo ? [] : try zip(inputs, prompts).map { input, ids in
            if case .text(let s) = input { return s }
            do { return try model.tokenizer.decode(ids) } catch { throw APIError.invalid("\(error)", param: "prompt") }
        }
        // `max_tokens: 0` with `echo`: one token runs (the engine always makes one) and is left out.
        let promptOnly = parameters.echo && parameters.maxTokens == 0
        for p in prompts where p.isEmpty { throw APIError.invalid("the prompt is empty", param: "prompt") }
        var requests: [GenerationRequest] = []
        for p in prompts {
            let room = model.maxModelLen - p.count
            let maxTokens = promptOnly ? 1 : parameters.maxTokens ?? (chat ? room : 16)
            if p.count + maxTokens > model.maxModelLen || room < 1 {
                throw APIError.invalid("This model's maximum context length is \(model.maxModelLen) tokens. However, you requested \(p.count + maxTokens) tokens (\(p.count) in the prompt, \(maxTokens) for the completion). Please reduce the prompt or max_tokens.",
                                       param: chat ? "messages" : "prompt")
            }
            if parameters.sampling.minTokens > maxTokens {
                throw APIError.invalid("'min_tokens' (\(parameters.sampling.minTokens)) must be at most 'max_tokens' (\(maxTokens))", param: "min_tokens")
            }
            let stops = Set(parameters.stopTokenIds).union(parameters.ignoreEos ? [] : model.eos)
            requests.append(GenerationRequest(promptIds: p, maxNewTokens: maxTokens, sampling: parameters.sampling, stopIds: stops,
                                              logprobs: parameters.logprobs, promptLogprobs: parameters.echo ? parameters.logprobs : nil))
        }
        var submitted: [(String, AsyncStream<ServeEvent>)] = []
        do {
            for r in requests { submitted.append(try queue.submit(r)) }
        } catch {
            for (id, _) in submitted { queue.cancel(id) }
            switch error {
            case .full: throw APIError(status: 429, message: "the server's queue is full (\(queue.capacity) requests); retry later", type: "rate_limit_error", param: nil)
            case .closing: throw APIError(status: 503, message: "the server is shutting down", type: "service_unavailable", param: nil)
            }
        }
        let id = (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        let promptTokens = prompts.reduce(0) { $0 + $1.count }
        let object = chat ? "chat.completion" : "text_completion"
        let format = LogprobsJSON(tokenizer: model.tokenizer)
        /// A completions choice's log-probabilities: the prompt's first (with `echo`), then those of `generated`.
        func completionLogprobs(_ k: Int, prompt: [TokenLogprob]?, generated: some Collection<TokenLogprob>, offset: inout Int) -> Any {
            guard parameters.logprobs != nil else { return NSNull() }
            var entries: [(token: Int, logprob: TokenLogprob?)] = []
            if let prompt, let first = prompts[k].first { entries = [(first, nil)] + prompt.map { ($0.token, $0) } }
            entries += generated.map { ($0.token, $0) }
            return format.completion(entries, offset: &offset)
        }
        func chatLogprobs(_ generated: some Collection<TokenLogprob>) -> Any {
            guard let top = parameters.logprobs else { return NSNull() }
            return format.chat(generated, top: top)
        }
        if !parameters.stream {
            var choices: [[String: Any]] = []
            var completionTokens = 0, cachedTokens = 0
            for (k, (rid, stream)) in submitted.enumerated() {
                var outcome = try await run(rid, stream, requests[k], parameters, model) { _, _ in }
                cachedTokens += outcome.cachedTokens
                if promptOnly { outcome = Outcome(finishReason: "length", promptLogprobs: outcome.promptLogprobs) }
                completionTokens += outcome.completionTokens
                let finish: Any = outcome.finishReason
                if chat {
                    choices.append(["index": k, "message": ["role": "assistant", "content": outcome.text], "finish_reason": finish,
                                    "logprobs": chatLogprobs(outcome.logprobs)])
                } else {
                    var offset = 0
                    let logprobs = completionLogprobs(k, prompt: outcome.promptLogprobs, generated: outcome.logprobs, offset: &offset)
                    choices.append(["index": k, "text": (parameters.echo ? echoed[k] : "") + outcome.text, "finish_reason": finish, "logprobs": logprobs])
                }
            }
            return Self.json(200, ["id": id, "object": object, "created": Int(Date().timeIntervalSince1970), "model": model.name,
                                   "choices": choices, "usage": Self.usage(prompt: promptTokens, completion: completionTokens, cached: cachedTokens)])
        }
        let chunkObject = chat ? "chat.completion.chunk" : "text_completion"
        let (jobs, generation) = (submitted, requests)
        let created = Int(Date().timeIntervalSince1970)
        let name = model.name
        @Sendable func chunk(_ index: Int, text: String?, finish: String?, logprobs: Any = NSNull()) -> ByteBuffer {
            let f: Any = finish ?? NSNull()
            let choice: [String: Any] = chat
                ? ["index": index, "delta": text.map { ["content": $0] } ?? [:], "finish_reason": f, "logprobs": logprobs]
                : ["index": index, "text": text ?? "", "finish_reason": f, "logprobs": logprobs]
            return Self.event(["id": id, "object": chunkObject, "created": created, "model": name, "choices": [choice]])
        }
        // Events go out through a stream that the response body drains; if the client goes away, a write fails,
        // the producer is cancelled, and it cancels what the request still holds in the cluster.
        let (events, out) = AsyncStream<ByteBuffer>.makeStream()
        let producer = Task {
            var completionTokens = 0, cachedTokens = 0
            var gone = false
            func send(_ b: ByteBuffer) { if case .terminated = out.yield(b) { gone = true } }
            for (k, (rid, stream)) in jobs.enumerated() {
                if gone { queue.cancel(rid); continue }
                if chat {
                    send(Self.event(["id": id, "object": chunkObject, "created": created, "model": name,
                                     "choices": [["index": k, "delta": ["role": "assistant", "content": ""], "finish_reason": NSNull(), "logprobs": NSNull()]]]))
                }
                do {
                    var offset = 0  // completions: characters of the choice's text so far (`text_offset`)
                    var echoing = parameters.echo
                    let outcome = try await self.run(rid, stream, generation[k], parameters, model) { piece, fresh in
                        if echoing {  // the prompt (and its log-probabilities) before the first piece of the completion
                            echoing = false
                            let logprobs = completionLogprobs(k, prompt: fresh.prompt, generated: [], offset: &offset)
                            send(chunk(k, text: echoed[k], finish: nil, logprobs: logprobs))
                        }
                        guard !promptOnly, !piece.isEmpty || !fresh.generated.isEmpty else { return }
                        let logprobs = chat ? chatLogprobs(fresh.generated) : completionLogprobs(k, prompt: nil, generated: fresh.generated, offset: &offset)
                        send(chunk(k, text: piece, finish: nil, logprobs: logprobs))
                        if gone { throw CancellationError() }
                    }
                    completionTokens += promptOnly ? 0 : outcome.completionTokens
                    cachedTokens += outcome.cachedTokens
                    send(chunk(k, text: chat ? nil : "", finish: promptOnly ? "length" : outcome.finishReason))
                } catch let e as APIError {
                    send(Self.event(e.body))
                    for (other, _) in jobs[k...] { self.queue.cancel(other) }
                    break
                } catch {
                    self.queue.cancel(rid)
                    gone = true
                }
            }
            if parameters.includeUsage {
                send(Self.event(["id": id, "object": chunkObject, "created": created, "model": name, "choices": [[String: Any]](),
                                 "usage": Self.usage(prompt: promptTokens, completion: completionTokens, cached: cachedTokens)]))
            }
            send(ByteBuffer(string: "data: [DONE]\n\n"))
            out.finish()
        }
        out.onTermination = { reason in
            if case .cancelled = reason { producer.cancel() }
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                        body: ResponseBody { (writer: inout any ResponseBodyWriter) in
            do {
                for await buffer in events { try await writer.write(buffer) }
                try await writer.finish(nil)
            } catch {
                producer.cancel()
                throw error
            }
        })
    }

    /// One server-sent event carrying `payload` as JSON.
    static func event(_ payload: Any) -> ByteBuffer { ByteBuffer(string: "data: \(jsonText(payload))\n\n") }

    /// What arrived with a piece of text: the log-probabilities of the tokens since the last piece, and (with the
    /// first) the prompt's.
    struct Fresh {
        var generated: ArraySlice<TokenLogprob>
        var prompt: [TokenLogprob]?
    }

    /// Follows one request's events to the end, passing each new piece of text to `emit` (and the first tokens
    /// always, and any with log-probabilities, even when their text is held back); a stop string ends it early
    /// (the request is cancelled in the cluster).
    private func run(_ id: String, _ stream: AsyncStream<ServeEvent>, _ request: GenerationRequest, _ parameters: CompletionParameters,
                     _ model: Model, emit: (String, Fresh) async throws -> Void) async throws -> Outcome {
        var assembler = TextAssembler(tokenizer: model.tokenizer, stops: parameters.stop, stopIds: request.stopIds,
                                      minTokens: request.sampling.minTokens)
        var outcome = Outcome()
        let start = Date()
        var firstToken: Double?
        var tokens: [Int] = []
        for await event in stream {
            if Task.isCancelled { break }
            switch event {
            case .tokens(let t, let logprobs, let prompt, let cached):
                let first = firstToken == nil
                outcome.cachedTokens = cached
                if first { firstToken = Date().timeIntervalSince(start) }
                tokens = t
                let piece = assembler.feed(t)
                outcome.text += piece
                let fresh = logprobs[outcome.logprobs.count...]
                outcome.logprobs = logprobs
                outcome.promptLogprobs = prompt
                if !piece.isEmpty || !fresh.isEmpty || first { try await emit(piece, Fresh(generated: fresh, prompt: prompt)) }
                if assembler.stopped {
                    queue.cancel(id)
                    outcome.finishReason = "stop"
                    outcome.completionTokens = tokens.count
                    metrics.finished(promptTokens: request.promptIds.count, cachedTokens: outcome.cachedTokens, generated: tokens.count, reason: "stop",
                                     timeToFirstToken: firstToken, latency: Date().timeIntervalSince(start))
                    return outcome
                }
            case .finished(let reason):
                let tail = assembler.finish()
                outcome.text += tail
                if !tail.isEmpty { try await emit(tail, Fresh(generated: [], prompt: nil)) }
                outcome.finishReason = reason == .stop || assembler.stopped ? "stop" : "length"
                outcome.completionTokens = tokens.count
                metrics.finished(promptTokens: request.promptIds.count, cachedTokens: outcome.cachedTokens, generated: tokens.count, reason: outcome.finishReason,
                                 timeToFirstToken: firstToken, latency: Date().timeIntervalSince(start))
                return outcome
            case .failed(let message, let status):
                throw APIError(status: status, message: message, type: status == 400 ? "invalid_request_error" : "internal_error", param: nil)
            }
        }
        throw APIError(status: 500, message: "the cluster stopped before the request finished", type: "internal_error", param: nil)
    }

    private func tokenize(_ request: Request, _ model: Model) async throws -> Response {
        let body = try await self.body(request)
        try checkModelName(body["model"]?.string, model)
        let ids: [Int]
        if body["messages"] != nil {
            ids = try chatPrompt(body, model)
        } else {
            guard let prompt = body["prompt"]?.string else { throw APIError.invalid("give 'prompt' (a string) or 'messages'", param: "prompt") }
            ids = try model.tokenizer.encode(prompt, addSpecialTokens: body["add_special_tokens"]?.bool ?? true)
        }
        var out: [String: Any] = ["count": ids.count, "max_model_len": model.maxModelLen, "tokens": ids]
        out["token_strs"] = body["return_token_strs"]?.bool == true ? (try model.tokenizer.tokens(ids)) as Any : NSNull()
        return Self.json(200, out)
    }

    private func detokenize(_ request: Request, _ model: Model) async throws -> Response {
        let body = try await self.body(request)
        try checkModelName(body["model"]?.string, model)
        guard let list = body["tokens"]?.array, list.allSatisfy({ $0.int != nil }) else {
            throw APIError.invalid("'tokens' must be a list of token ids", param: "tokens")
        }
        let text: String
        do { text = try model.tokenizer.decode(list.compactMap(\.int)) } catch { throw APIError.invalid(error.description, param: "tokens") }
        return Self.json(200, ["prompt": text])
    }
}
