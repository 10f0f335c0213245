import Foundation
import Models
import OrderedCollections
import Tokenizers

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
struct APIError: Error {
    let status: Int
    let message: String
    let type: String
    let param: String?

    static func invalid(_ message: String, param: String? = nil) -> APIError {
        APIError(status: 400, message: message, type: "invalid_request_error", param: param)
    }

    var body: [String: Any] {
        ["error": ["message": message, "type": type, "param": param as Any? ?? NSNull(), "code": status == 404 ? "model_not_found" : NSNull()]]
    }
}

/// A prompt as the completions API takes it: text, or token ids.
enum PromptInput {
    case text(String)
    case ids([Int])
}

/// The fields of a completions or chat completions body that this server runs, type-checked, with OpenAI's
/// defaults. Known fields it cannot honour are refused by name; unknown ones are ignored.
struct CompletionParameters {
    var model: String?
    var maxTokens: Int?
    var sampling = SamplingParameters()
    var stop: [String] = []
    var stopTokenIds: [Int] = []
    var ignoreEos = false
    var stream = false
    var includeUsage = false
    /// Log-probabilities with each generated token and this many alternatives (completions: `logprobs: N`;
    /// chat: `logprobs: true` with `top_logprobs: N`); nil: none.
    var logprobs: Int?
    /// Completions: the prompt comes back before the text (and with `logprobs`, its tokens' log-probabilities).
    var echo = false

    /// Fields (with the values that mean "off") that the server does not implement.
    static let unsupported: [(String, @Sendable (JSONValue) -> Bool)] = [
        ("n", { $0.int.map { $0 > 1 } ?? true }),
        ("best_of", { $0.int.map { $0 > 1 } ?? true }),
        ("logit_bias", { !($0.isNull || $0.object?.isEmpty == true) }),
        ("suffix", { !($0.isNull || $0.string == "") }),
        ("tools", { !($0.isNull || $0.array?.isEmpty == true) }),
        ("functions", { !($0.isNull || $0.array?.isEmpty == true) }),
        ("tool_choice", { !($0.isNull || $0.string == "none") }),
        ("function_call", { !($0.isNull || $0.string == "none") }),
        ("response_format", { !($0.isNull || $0.object?["type"]?.string == "text") }),
    ]

    /// Of those, the chat API's only (vLLM's chat `echo` repeats the last message; this server does not).
    static let unsupportedInChat: [(String, @Sendable (JSONValue) -> Bool)] = [
        ("echo", { $0.bool == true }),
    ]

    init(_ body: OrderedDictionary<String, JSONValue>, chat: Bool) throws(APIError) {
        let names = (Self.unsupported + (chat ? Self.unsupportedInChat : [])).filter { name, active in body[name].map(active) ?? false }.map(\.0)
        if !names.isEmpty {
            throw .invalid("unsupported parameter\(names.count > 1 ? "s" : ""): \(names.joined(separator: ", ")) (this server does not implement \(names.count > 1 ? "them" : "it"))",
                           param: names[0])
        }
        func number(_ key: String) throws(APIError) -> Double? {
            guard let v = body[key], !v.isNull else { return nil }
            guard case .number(let d) = v else { throw .invalid("'\(key)' must be a number", param: key) }
            return d
        }
        func integer(_ key: String) throws(APIError) -> Int? {
            guard let v = body[key], !v.isNull else { return nil }
            guard let n = v.int else { throw .invalid("'\(key)' must be an integer", param: key) }
            return n
        }
        func flag(_ key: String) throws(APIError) -> Bool? {
            guard let v = body[key], !v.isNull else { return nil }
            guard let b = v.bool else { throw .invalid("'\(key)' must be true or false", param: key) }
            return b
        }
        if let m = body["model"], !m.isNull {
            guard let s = m.string else { throw .invalid("'model' must be a string", param: "model") }
            model = s
        }
        if let m = try integer("max_completion_tokens") { maxTokens = m } else { maxTokens = try integer("max_tokens") }
        if !chat { echo = try flag("echo") ?? false }
        // `echo` with `max_tokens: 0` scores the prompt alone (lm-evaluation-harness's loglikelihood requests).
        if let m = maxTokens, m < (echo ? 0 : 1) {
            throw .invalid("'max_tokens' must be at least \(echo ? 0 : 1)\(echo ? "" : " (0 only with 'echo')"), got \(m)", param: "max_tokens")
        }
        func alternatives(_ key: String) throws(APIError) -> Int? {
            guard let n = try integer(key) else { return nil }
            guard (0...TokenLogprob.maxTop).contains(n) else {
                throw .invalid("'\(key)' must be in 0...\(TokenLogprob.maxTop), got \(n)", param: key)
            }
            return n
        }
        if chat {
            let top = try alternatives("top_logprobs")
            if try flag("logprobs") == true {
                logprobs = top ?? 0
            } else if let top, top > 0 {
                throw .invalid("'top_logprobs' needs 'logprobs': true", param: "top_logprobs")
            }
        } else {
            logprobs = try alternatives("logprobs")
        }
        let temperature = try number("temperature") ?? 1
        let topP = try number("top_p") ?? 1
        let topK = try integer("top_k") ?? 0
        let seed = try integer("seed") ?? 0
        guard seed >= 0 else { throw .invalid("'seed' must be >= 0", param: "seed") }
        let minTokens = try integer("min_tokens") ?? 0
        sampling = SamplingParameters(temperature: Float(temperature), topP: Float(topP), topK: topK < 0 ? 0 : topK, seed: UInt64(seed),
                                      presencePenalty: Float(try number("presence_penalty") ?? 0),
                                      frequencyPenalty: Float(try number("frequency_penalty") ?? 0),
                                      repetitionPenalty: Float(try number("repetition_penalty") ?? 1), minTokens: minTokens)
        do { try sampling.validate() } catch let e as ModelError { throw .invalid(e.description) } catch { throw .invalid("\(error)") }
        if let v = body["stop"], !v.isNull {
            if let s = v.string { stop = [s] } else if let a = v.array, a.allSatisfy({ $0.string != nil }) { stop = a.compactMap(\.string) } else {
                throw .invalid("'stop' must be a string or a list of strings", param: "stop")
            }
            stop = stop.filter { !$0.isEmpty }
        }
        if let v = body["stop_token_ids"], !v.isNull {
            guard let a = v.array, a.allSatisfy({ $0.int != nil }) else { throw .invalid("'stop_token_ids' must be a list of integers", param: "stop_token_ids") }
            stopTokenIds = a.compactMap(\.int)
        }
        ignoreEos = try flag("ignore_eos") ?? false
        stream = try flag("stream") ?? false
        if let o = body["stream_options"], !o.isNull {
            guard let options = o.object else { throw .invalid("'stream_options' must be an object", param: "stream_options") }
            if let u = options["include_usage"], !u.isNull {
                guard let b = u.bool else { throw .invalid("'stream_options.include_usage' must be true or false", param: "stream_options") }
                includeUsage = b
            }
        }
    }

    /// The prompts of a completions body: text, ids, or a list of either.
    static func prompts(_ body: OrderedDictionary<String, JSONValue>) throws(APIError) -> [PromptInput] {
        guard let v = body["prompt"], !v.isNull else { throw .invalid("'prompt' is required", param: "prompt") }
        func ids(_ a: [JSONValue]) -> [Int]? {
            let n = a.compactMap(\.int)
            return n.count == a.count ? n : nil
        }
        if let s = v.string { return [.text(s)] }
        guard let a = v.array, !a.isEmpty else { throw .invalid("'prompt' must be a string, a list of token ids, or a non-empty list of those", param: "prompt") }
        if let single = ids(a) { return [.ids(single)] }
        var out: [PromptInput] = []
        for item in a {
            if let s = item.string { out.append(.text(s)) } else if let list = item.array, let n = ids(list), !n.isEmpty { out.append(.ids(n)) } else {
                throw .invalid("'prompt' must be a string, a list of token ids, or a list of those", param: "prompt")
            }
        }
        return out
    }
}
