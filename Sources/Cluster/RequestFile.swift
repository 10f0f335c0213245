import Foundation
import Models

/// `--requests FILE.jsonl`: one JSON object per line with `id`, `prompt_ids` (or `prompt` text, given `encode`),
/// `max_new_tokens`, and optionally
/// `temperature`, `top_p`, `top_k`, `seed`, `presence_penalty`, `frequency_penalty`, `repetition_penalty`,
/// `min_tokens`, `stop_ids`, `arrival_step`. Blank lines are skipped.
public enum RequestFile {
    /// A line that cannot be a request.
    public struct LineError: Error, CustomStringConvertible {
        public let path: String
        public let line: Int
        public let reason: String
        /// `path:line: reason`, or `path: reason` for the file as a whole (line 0).
        public var description: String { line > 0 ? "\(path):\(line): \(reason)" : "\(path): \(reason)" }
    }

    /// Parses the file; `vocabulary` bounds the token ids, `maxModelLen` a request's prompt and generated tokens.
    /// The first bad line throws, naming its number.
    /// `pool`: where a request's KV pages go (one that can never fit is refused). `encode`: the tokenizer, for lines
    /// with `prompt` text.
    public static func parse(path: String, vocabulary: Int, maxModelLen: Int = .max, pool: KVPool? = nil,
                             encode: ((String) throws -> [Int])? = nil) throws -> [ClusterRequest] {
        guard let data = FileManager.default.contents(atPath: path) else { throw ModelError.missingFile(path: path) }
        var out: [ClusterRequest] = []
        var ids = Set<String>()
        for (n, raw) in String(decoding: data, as: UTF8.self).split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            func bad(_ reason: String) -> LineError { LineError(path: path, line: n + 1, reason: reason) }
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
                throw bad("not a JSON object")
            }
            let id: String
            if let s = object["id"] as? String { id = s } else if let i = object["id"] as? Int { id = String(i) } else {
                throw bad("'id' is missing or not a string")
            }
            guard ids.insert(id).inserted else { throw bad("id '\(id)' appears twice") }
            let prompt: [Int]
            if let text = object["prompt"] {
                guard object["prompt_ids"] == nil else { throw bad("give 'prompt' or 'prompt_ids', not both") }
                guard let text = text as? String, !text.isEmpty else { throw bad("'prompt' must be a non-empty string") }
                guard let encode else { throw bad("'prompt' text needs a tokenizer (--tokenizer DIR)") }
                do { prompt = try encode(text) } catch { throw bad("'prompt' cannot be encoded: \(error)") }
            } else {
                guard let ids = object["prompt_ids"] as? [Int], !ids.isEmpty else {
                    throw bad("'prompt_ids' must be a non-empty list of integers (or give 'prompt' text)")
                }
                prompt = ids
            }
            guard let maxNew = object["max_new_tokens"] as? Int, maxNew >= 1 else { throw bad("'max_new_tokens' must be an integer >= 1") }
            let stop = object["stop_ids"].map { $0 as? [Int] } ?? []
            guard let stop else { throw bad("'stop_ids' must be a list of integers") }
            for t in prompt + stop where t < 0 || t >= vocabulary {
                throw bad("token id \(t) is outside the vocabulary (0..<\(vocabulary))")
            }
            func number(_ key: String, _ fallback: Double) throws -> Double {
                guard let v = object[key] else { return fallback }
                // JSON booleans also arrive as NSNumber; their Objective-C type is "c".
                guard let n = v as? NSNumber, String(cString: n.objCType) != "c" else { throw bad("'\(key)' must be a number") }
                return n.doubleValue
            }
            func integer(_ key: String, _ fallback: Int) throws -> Int {
                let d = try number(key, Double(fallback))
                guard d == d.rounded(), abs(d) < 9e15 else { throw bad("'\(key)' must be an integer") }
                return Int(d)
            }
            let sampling = SamplingParameters(
                temperature: Float(try number("temperature", 1)), topP: Float(try number("top_p", 1)),
                topK: try integer("top_k", 0), seed: UInt64(max(0, try integer("seed", 0))),
                presencePenalty: Float(try number("presence_penalty", 0)), frequencyPenalty: Float(try number("frequency_penalty", 0)),
                repetitionPenalty: Float(try number("repetition_penalty", 1)), minTokens: try integer("min_tokens", 0))
            do { try sampling.validate() } catch let e as ModelError { throw bad(e.description) }
            if let reason = Engine.lengthProblem(prompt: prompt.count, maxNewTokens: maxNew, limit: maxModelLen)
                ?? Engine.poolProblem(prompt: prompt.count, maxNewTokens: maxNew, pool: pool) {
                throw bad("request '\(id)': \(reason)")
            }
            let arrival = try integer("arrival_step", 0)
            guard arrival >= 0 else { throw bad("'arrival_step' must be >= 0") }
            out.append(ClusterRequest(id: id, request: GenerationRequest(promptIds: prompt, maxNewTokens: maxNew, sampling: sampling,
                                                                         stopIds: Set(stop)), arrivalStep: arrival))
        }
        guard !out.isEmpty else { throw LineError(path: path, line: 0, reason: "no requests") }
        return out
    }
}
