import Foundation
@testable import Models
import Testing

/// `logprobs`, `top_logprobs` and `echo` against a 2-rank server: every log-probability it answers is a
/// log-softmax of the logits `moe forward` writes for the same tokens (computed here in Double), streaming or not,
/// for prompts owned by either rank.
@Suite(.serialized) struct ServeLogprobsTests {
    typealias S = ServeTests

    /// `[position][vocab]`: log-softmax of `moe forward`'s logits over `ids` (one process).
    static func reference(_ ids: [Int]) throws -> [[Double]] {
        let out = TemporaryPath(".safetensors")
        let r = try MoEBinary.run(["forward", "--model", fixture("tiny-mixtral"), "--input-ids", ids.map(String.init).joined(separator: ","),
                                   "--output", out.path])
        guard r.status == 0 else { throw S.TestFailure("moe forward: \(r.stderr)") }
        let logits = try SafeTensorsFile(path: out.path).floats("logits")
        let vocab = logits.count / ids.count
        return (0..<ids.count).map { p in
            let row = logits[(p * vocab)..<((p + 1) * vocab)].map(Double.init)
            let m = row.max()!
            let z = m + log(row.reduce(0) { $0 + exp($1 - m) })
            return row.map { $0 - z }
        }
    }

    /// The greedy tokens `moe generate` makes after `ids`.
    static func greedy(_ ids: [Int], tokens: Int) throws -> [Int] {
        let r = try MoEBinary.run(["generate", "--model", fixture("tiny-mixtral"), "--prompt-ids", ids.map(String.init).joined(separator: ","),
                                   "--max-new-tokens", "\(tokens)", "--temperature", "0", "--json"])
        return try #require((try JSONSerialization.jsonObject(with: Data(r.lastLine.utf8)) as? [String: Any])?["tokens"] as? [Int])
    }

    static let tolerance = 3e-4  // the cluster's logits are within 1e-4 of one process's (ClusterTests)

    /// The values of a completions `top_logprobs` entry, as the reference ranks them: its most likely logprob is
    /// the position's best, and each printable one-byte token's value is that token's.
    static func checkTop(_ top: [String: Double], _ ref: [Double], alternatives n: Int, chosen: Int, _ context: String) {
        #expect(top.count <= n + 1 && top.count >= 1, "\(context): \(top.count) entries")
        #expect(abs(top.values.max()! - (n > 0 ? ref.max()! : ref[chosen])) < tolerance, "\(context)")
        for (text, value) in top {
            guard text.unicodeScalars.count == 1, let b = text.unicodeScalars.first?.value, (33...126).contains(b) else { continue }
            #expect(abs(value - ref[Int(b)]) < tolerance, "\(context): '\(text)'")
        }
    }

    @Test func completionsLogprobsAndEchoAreALogSoftmaxOfForwardLogits() throws {
        let server = try S.Server(["--dispatch", "coherent"], ranks: 2)
        let prompts = ["Hello there", "To be, or not"].map { Array($0.utf8).map(Int.init) }
        let made = try prompts.map { try Self.greedy($0, tokens: 6) }
        // Two prompts: one request owned by each rank, so that log-probabilities cross in the step-end allgather.
        let body = #"{"prompt": \#(prompts), "max_tokens": 6, "temperature": 0, "logprobs": 3, "echo": true, "ignore_eos": true}"#
        let r = try S.curl(server.url + "/v1/completions", body: body)
        #expect(r.status == 200, "\(r.body)")
        let choices = try #require(r.json["choices"] as? [[String: Any]])
        #expect(choices.count == 2)
        var nonStreamed: [[Double]] = []
        for (k, c) in choices.enumerated() {
            let ids = prompts[k] + made[k]
            let ref = try Self.reference(ids)
            let lp = try #require(c["logprobs"] as? [String: Any])
            let tokens = try #require(lp["tokens"] as? [String])
            let values = try #require(lp["token_logprobs"] as? [Any])
            let tops = try #require(lp["top_logprobs"] as? [Any])
            let offsets = try #require(lp["text_offset"] as? [Int])
            #expect(tokens.count == ids.count && values.count == ids.count && tops.count == ids.count && offsets.count == ids.count)
            #expect(values.first is NSNull && tops.first is NSNull)  // the first prompt token has no context
            #expect(tokens.prefix(prompts[k].count).joined() == String(decoding: prompts[k].map(UInt8.init), as: UTF8.self))
            #expect((c["text"] as? String)?.hasPrefix(String(decoding: prompts[k].map(UInt8.init), as: UTF8.self)) == true)
            for i in 1..<ids.count {
                let v = try #require(values[i] as? Double)
                #expect(abs(v - ref[i - 1][ids[i]]) < Self.tolerance, "choice \(k) position \(i): \(v) vs \(ref[i - 1][ids[i]])")
                Self.checkTop(try #require(tops[i] as? [String: Double]), ref[i - 1], alternatives: 3, chosen: ids[i], "choice \(k) position \(i)")
            }
            // text_offset: each token's text starts where the texts before it end.
            for i in 1..<ids.count { #expect(offsets[i] == offsets[i - 1] + tokens[i - 1].unicodeScalars.count) }
            nonStreamed.append(values.dropFirst().compactMap { $0 as? Double })
        }
        let usage = try #require(r.json["usage"] as? [String: Int])
        #expect(usage["completion_tokens"] == 12)

        // Streaming: the same log-probabilities, chunk by chunk; the echoed prompt comes first.
        let stream = try S.curl(server.url + "/v1/completions", body: #"{"prompt": \#(prompts[0]), "max_tokens": 6, "temperature": 0, "logprobs": 3, "echo": true, "ignore_eos": true, "stream": true}"#)
        var streamed: [Any] = [], offsets: [Int] = []
        for e in stream.body.components(separatedBy: "\n\n") where e.hasPrefix("data: {") {
            let o = try #require(try JSONSerialization.jsonObject(with: Data(e.dropFirst(6).utf8)) as? [String: Any])
            for c in o["choices"] as? [[String: Any]] ?? [] {
                guard let lp = c["logprobs"] as? [String: Any] else { continue }
                streamed += lp["token_logprobs"] as? [Any] ?? []
                offsets += lp["text_offset"] as? [Int] ?? []
            }
        }
        #expect(streamed.count == prompts[0].count + 6)
        #expect(streamed.dropFirst().compactMap { $0 as? Double } == nonStreamed[0])
        #expect(offsets == ((choices[0]["logprobs"] as? [String: Any])?["text_offset"] as? [Int]))
        #expect(S.streamed(stream.body, chat: false).text == choices[0]["text"] as? String)

        // max_tokens 0 with echo: the prompt scored alone (lm-evaluation-harness's loglikelihood requests).
        let scored = try S.curl(server.url + "/v1/completions", body: #"{"prompt": "Hello there", "max_tokens": 0, "logprobs": 1, "echo": true}"#)
        #expect(scored.status == 200, "\(scored.body)")
        let only = try #require((scored.json["choices"] as? [[String: Any]])?.first)
        #expect(only["text"] as? String == "Hello there")
        let onlyValues = try #require((only["logprobs"] as? [String: Any])?["token_logprobs"] as? [Any])
        #expect(onlyValues.dropFirst().compactMap { $0 as? Double } == Array(nonStreamed[0].prefix(prompts[0].count - 1)))
        #expect((scored.json["usage"] as? [String: Int])?["completion_tokens"] == 0)

        // Without echo: the generated tokens' alone, and the text without the prompt.
        let plain = try S.curl(server.url + "/v1/completions", body: #"{"prompt": "Hello there", "max_tokens": 6, "temperature": 0, "logprobs": 0, "ignore_eos": true}"#)
        let p = try #require((plain.json["choices"] as? [[String: Any]])?.first)
        let pl = try #require(p["logprobs"] as? [String: Any])
        #expect((pl["token_logprobs"] as? [Double]) == Array(nonStreamed[0].suffix(6)))
        #expect((pl["top_logprobs"] as? [[String: Double]])?.allSatisfy { $0.count == 1 } == true)  // logprobs 0: the chosen token's
        #expect((pl["text_offset"] as? [Int])?.first == 0)
        #expect((p["text"] as? String)?.hasPrefix("Hello") == false)
    }

    @Test func chatLogprobsAndTheirAlternatives() throws {
        let server = try S.Server()
        let messages = #"[{"role": "user", "content": "Hi"}]"#
        let ids = Array("<user>Hi<assistant>".utf8).map(Int.init)
        let made = try Self.greedy(ids, tokens: 5)
        let ref = try Self.reference(ids + made)
        for stream in [false, true] {
            let r = try S.curl(server.url + "/v1/chat/completions",
                               body: #"{"messages": \#(messages), "max_tokens": 5, "temperature": 0, "logprobs": true, "top_logprobs": 2, "stream": \#(stream)}"#)
            #expect(r.status == 200, "\(r.body)")
            var content: [[String: Any]] = []
            if stream {
                for e in r.body.components(separatedBy: "\n\n") where e.hasPrefix("data: {") {
                    let o = try #require(try JSONSerialization.jsonObject(with: Data(e.dropFirst(6).utf8)) as? [String: Any])
                    for c in o["choices"] as? [[String: Any]] ?? [] { content += (c["logprobs"] as? [String: Any])?["content"] as? [[String: Any]] ?? [] }
                }
            } else {
                let c = try #require((r.json["choices"] as? [[String: Any]])?.first)
                content = try #require((c["logprobs"] as? [String: Any])?["content"] as? [[String: Any]])
            }
            #expect(content.count == made.count, "stream \(stream)")
            for (j, entry) in content.enumerated() {
                let row = ref[ids.count - 1 + j]
                let value = try #require(entry["logprob"] as? Double)
                #expect(abs(value - row[made[j]]) < Self.tolerance, "stream \(stream) token \(j)")
                let text = try #require(entry["token"] as? String)
                #expect(entry["bytes"] as? [Int] == Array(text.utf8).map(Int.init))
                let top = try #require(entry["top_logprobs"] as? [[String: Any]])
                let best = row.sorted(by: >).prefix(2)
                #expect(zip(top.compactMap { $0["logprob"] as? Double }, best).allSatisfy { abs($0 - $1) < Self.tolerance } && top.count == 2,
                        "stream \(stream) token \(j): \(top) vs \(best)")
            }
        }
        // Without logprobs: null, as before.
        let none = try S.curl(server.url + "/v1/chat/completions", body: #"{"messages": \#(messages), "max_tokens": 2}"#)
        #expect((none.json["choices"] as? [[String: Any]])?.first?["logprobs"] is NSNull)
    }

    @Test func badLogprobsRequestsGet400() throws {
        let server = try S.Server()
        let cases: [(String, String, String)] = [
            ("/v1/completions", #"{"prompt": "x", "logprobs": 21}"#, "'logprobs' must be in 0...20, got 21"),
            ("/v1/completions", #"{"prompt": "x", "logprobs": -1}"#, "'logprobs' must be in 0...20, got -1"),
            ("/v1/completions", #"{"prompt": "x", "logprobs": true}"#, "'logprobs' must be an integer"),
            ("/v1/completions", #"{"prompt": "x", "echo": "yes"}"#, "'echo' must be true or false"),
            ("/v1/completions", #"{"prompt": "x", "max_tokens": 0}"#, "'max_tokens' must be at least 1 (0 only with 'echo'), got 0"),
            ("/v1/completions", #"{"prompt": "x", "max_tokens": -1, "echo": true}"#, "'max_tokens' must be at least 0, got -1"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#, "'top_logprobs' needs 'logprobs': true"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 30}"#, "'top_logprobs' must be in 0...20, got 30"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "logprobs": 2}"#, "'logprobs' must be true or false"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "echo": true}"#, "unsupported parameter: echo"),
        ]
        for (path, body, message) in cases {
            let r = try S.curl(server.url + path, body: body)
            #expect(r.status == 400, "\(body): \(r.status) \(r.body)")
            #expect(r.errorMessage.contains(message), "\(body): \(r.body)")
        }
    }
}
