import Tokenizers

/// A request's output text as tokens arrive: streaming detokenization, `stop` strings cut from the text (held back
/// while the text ends in what may be the start of one), and the final stop id left out of the text. Before
/// `minTokens` tokens no stop string applies (as vLLM: `min_tokens` holds back every stop).
struct TextAssembler {
    private var detokenizer: StreamingDetokenizer
    let stops: [String]
    let stopIds: Set<Int>
    let minTokens: Int
    private var consumed = 0
    /// Decoded but not yet sent: it may be the beginning of a stop string.
    private var held = ""
    /// Whether a stop string ended the text.
    private(set) var stopped = false

    init(tokenizer: Tokenizer, stops: [String], stopIds: Set<Int>, minTokens: Int = 0) {
        detokenizer = StreamingDetokenizer(tokenizer: tokenizer)
        self.stops = stops
        self.stopIds = stopIds
        self.minTokens = minTokens
    }

    /// The text to send for `tokens` (all tokens so far).
    mutating func feed(_ tokens: [Int]) -> String {
        guard !stopped else { return "" }
        var fresh = ""
        while consumed < tokens.count {
            let id = tokens[consumed]
            consumed += 1
            if consumed == tokens.count, stopIds.contains(id) { break }  // the stop id itself is not text
            // An id past the tokenizer's vocabulary (models pad theirs) has no text.
            guard detokenizer.tokenizer.token(id) != nil else { continue }
            fresh += (try? detokenizer.push(id)) ?? ""
        }
        return release(held + fresh, final: false, searching: tokens.count >= minTokens)
    }

    /// The text still held at the end of generation.
    mutating func finish() -> String {
        guard !stopped else { return "" }
        let tail = (try? detokenizer.finish()) ?? ""
        return release(held + tail, final: true)
    }

    private mutating func release(_ text: String, final: Bool, searching: Bool = true) -> String {
        held = ""
        guard searching else { return text }
        if let cut = stops.compactMap({ text.range(of: $0)?.lowerBound }).min() {
            stopped = true
            return String(text[..<cut])
        }
        guard !final else { return text }
        // Hold back the longest end of the text that begins some stop string.
        var keep = 0
        for stop in stops {
            for n in stride(from: min(stop.count - 1, text.count), through: 1, by: -1) where text.hasSuffix(String(stop.prefix(n))) {
                keep = max(keep, n)
                break
            }
        }
        held = String(text.suffix(keep))
        return String(text.dropLast(keep))
    }
}
