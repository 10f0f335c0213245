import Foundation
import Models
import Tokenizers

/// Log-probabilities in the shapes OpenAI's two APIs answer them, with each token's text as vLLM shows it: the
/// token decoded alone, special tokens included.
struct LogprobsJSON {
    let tokenizer: Tokenizer

    /// JSON has no infinities: a token the model rules out gets vLLM's floor.
    static func value(_ logprob: Float) -> Double { max(Double(logprob), -9999) }

    func text(_ id: Int) -> String { (try? tokenizer.decode([id], skipSpecialTokens: false)) ?? "" }

    /// The completions API's object for `entries` (a prompt's first token has no log-probability: null), whose
    /// text begins at character `offset` of the choice's text; `offset` moves past it.
    /// - `top_logprobs`: the `n` most likely tokens and the chosen one, by text.
    func completion(_ entries: [(token: Int, logprob: TokenLogprob?)], offset: inout Int) -> [String: Any] {
        var tokens: [String] = [], logprobs: [Any] = [], top: [Any] = [], offsets: [Int] = []
        for (token, e) in entries {
            let s = text(token)
            tokens.append(s)
            offsets.append(offset)
            offset += s.unicodeScalars.count
            guard let e else {
                logprobs.append(NSNull())
                top.append(NSNull())
                continue
            }
            logprobs.append(Self.value(e.logprob))
            var best: [String: Double] = [:]
            for a in e.top { best[text(a.token)] = best[text(a.token)] ?? Self.value(a.logprob) }
            best[s] = best[s] ?? Self.value(e.logprob)
            top.append(best)
        }
        return ["tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets]
    }

    /// The chat API's object: `content`, one entry per token with its text, log-probability, UTF-8 bytes and
    /// `top` alternatives.
    func chat(_ entries: some Collection<TokenLogprob>, top: Int) -> [String: Any] {
        func item(_ token: Int, _ logprob: Float) -> [String: Any] {
            let s = text(token)
            return ["token": s, "logprob": Self.value(logprob), "bytes": Array(s.utf8).map(Int.init)]
        }
        return ["content": entries.map { e in
            var o = item(e.token, e.logprob)
            o["top_logprobs"] = e.top.prefix(top).map { item($0.token, $0.logprob) }
            return o
        }]
    }
}
