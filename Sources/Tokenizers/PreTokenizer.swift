/// How a `Split` pre-tokenizer treats the pattern's matches (`tokenizers`' `SplitDelimiterBehavior`).
enum SplitBehavior: String, Sendable {
    case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext", contiguous = "Contiguous"
}

/// Where Metaspace puts its replacement character in front of a stretch.
enum PrependScheme: String, Sendable {
    case always, first, never

    /// A Metaspace component's `prepend_scheme`, or its older `add_prefix_space` (default: always).
    init(_ json: JSONObject) throws {
        if let name = try json.optionalString("prepend_scheme") {
            guard let s = PrependScheme(rawValue: name) else {
                throw TokenizerError.malformed(path: json.path, field: json.field("prepend_scheme"), reason: "'\(name)' is not always, first or never")
            }
            self = s
        } else {
            self = try json.bool("add_prefix_space", default: true) ? .always : .never
        }
    }
}

/// `tokenizer.json`'s `pre_tokenizer`: splits a normalized stretch into the words BPE encodes one by one.
indirect enum PreTokenizer: Sendable {
    case sequence([PreTokenizer])
    case split(TextPattern, SplitBehavior, invert: Bool)
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case metaspace(replacement: String, prepend: PrependScheme, split: Bool)
    case whitespace
    case whitespaceSplit
    case digits(individual: Bool)

    /// GPT-2's word pattern, used by `ByteLevel` with `use_regex`.
    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

    init(_ json: JSONObject) throws {
        let kind = try json.string("type")
        switch kind {
        case "Sequence":
            self = .sequence(try json.array("pretokenizers").enumerated().map {
                try PreTokenizer(JSONObject($0.element, path: json.path, context: json.field("pretokenizers[\($0.offset)]")))
            })
        case "Split":
            let name = try json.string("behavior")
            guard let behavior = SplitBehavior(rawValue: name) else {
                throw TokenizerError.malformed(path: json.path, field: json.field("behavior"), reason: "'\(name)' is not a split behavior")
            }
            self = .split(try TextPattern(json.object("pattern")), behavior, invert: try json.bool("invert", default: false))
        case "ByteLevel":
            self = .byteLevel(addPrefixSpace: try json.bool("add_prefix_space", default: true),
                              useRegex: try json.bool("use_regex", default: true))
        case "Metaspace":
            self = .metaspace(replacement: try json.string("replacement"), prepend: try PrependScheme(json),
                              split: try json.bool("split", default: true))
        case "Whitespace": self = .whitespace
        case "WhitespaceSplit": self = .whitespaceSplit
        case "Digits": self = .digits(individual: try json.bool("individual_digits", default: false))
        default: throw TokenizerError.unsupported(component: "pre_tokenizer", kind: kind)
        }
    }

    /// The words of `pieces`; `atStart` tells whether the first piece begins at offset 0 of the original text.
    func apply(_ pieces: [Piece]) -> [Piece] {
        switch self {
        case .sequence(let steps):
            return steps.reduce(pieces) { $1.apply($0) }
        case .split(let pattern, let behavior, let invert):
            return pieces.flatMap { p in splitText(p.text, pattern, behavior, invert: invert).map { Piece(text: $0, atStart: p.atStart) } }
        case .byteLevel(let addPrefixSpace, let useRegex):
            return pieces.flatMap { p -> [Piece] in
                var text = p.text
                if addPrefixSpace, !text.hasPrefix(" ") { text = " " + text }
                let words = useRegex ? splitText(text, Self.gpt2Regex, .isolated, invert: false) : [text]
                return words.map { Piece(text: ByteLevel.encode($0), atStart: p.atStart) }
            }
        case .metaspace(let replacement, let prepend, let doSplit):
            return pieces.flatMap { p -> [Piece] in
                var text = replacing(.literal(" "), in: p.text, with: replacement)
                let wantsPrefix = prepend == .always || (prepend == .first && p.atStart)
                if wantsPrefix, !text.isEmpty, !text.hasPrefix(replacement) { text = replacement + text }
                let words = doSplit ? splitText(text, .literal(replacement), .mergedWithNext, invert: false) : [text]
                return words.map { Piece(text: $0, atStart: p.atStart) }
            }
        case .whitespace:
            return pieces.flatMap { p in splitText(p.text, Self.wordOrPunctuation, .removed, invert: true).map { Piece(text: $0, atStart: p.atStart) } }
        case .whitespaceSplit:
            return pieces.flatMap { p in splitText(p.text, Self.whitespaceRun, .removed, invert: false).map { Piece(text: $0, atStart: p.atStart) } }
        case .digits(let individual):
            return pieces.flatMap { p in
                splitText(p.text, individual ? Self.digit : Self.digitRun, individual ? .isolated : .contiguous, invert: false).map { Piece(text: $0, atStart: p.atStart) }
            }
        }
    }

    private static let gpt2Regex = TextPattern.compiled(gpt2Pattern)
    private static let wordOrPunctuation = TextPattern.compiled(#"\w+|[^\w\s]+"#)
    private static let whitespaceRun = TextPattern.compiled(#"\s+"#)
    private static let digit = TextPattern.compiled(#"\p{N}"#)
    private static let digitRun = TextPattern.compiled(#"\p{N}+"#)
}

/// A stretch of text on its way through the pre-tokenizers.
struct Piece: Sendable {
    var text: String
    /// Whether the stretch this piece came from starts at offset 0 of the text being encoded.
    var atStart: Bool
}

extension TextPattern {
    /// A pattern known to be valid, built once.
    static func compiled(_ source: String) -> TextPattern {
        .regex(try! Regex(source).matchingSemantics(.unicodeScalar), source: source)
    }
}

/// `text` cut at `pattern`'s matches, the matches treated as `behavior` says (`tokenizers`' `split`).
func splitText(_ text: String, _ pattern: TextPattern, _ behavior: SplitBehavior, invert: Bool) -> [String] {
    guard !text.isEmpty else { return [] }
    // The whole text as alternating (range, is-match) runs.
    var runs: [(Range<String.Index>, Bool)] = []
    var last = text.startIndex
    for r in pattern.matches(in: text) {
        if last < r.lowerBound { runs.append((last..<r.lowerBound, false)) }
        runs.append((r, true))
        last = r.upperBound
    }
    if last < text.endIndex { runs.append((last..<text.endIndex, false)) }
    if invert { runs = runs.map { ($0.0, !$0.1) } }

    var kept: [Range<String.Index>] = []
    switch behavior {
    case .removed:
        kept = runs.filter { !$0.1 }.map(\.0)
    case .isolated:
        kept = runs.map(\.0)
    case .mergedWithPrevious:
        var previousMatch = false
        for (r, isMatch) in runs {
            if isMatch, !previousMatch, let end = kept.indices.last {
                kept[end] = kept[end].lowerBound..<r.upperBound
            } else {
                kept.append(r)
            }
            previousMatch = isMatch
        }
    case .mergedWithNext:
        var nextMatch = false
        for (r, isMatch) in runs.reversed() {
            if isMatch, !nextMatch, let end = kept.indices.last {
                kept[end] = r.lowerBound..<kept[end].upperBound
            } else {
                kept.append(r)
            }
            nextMatch = isMatch
        }
        kept.reverse()
    case .contiguous:
        var previousMatch: Bool? = nil
        for (r, isMatch) in runs {
            if isMatch == previousMatch, let end = kept.indices.last {
                kept[end] = kept[end].lowerBound..<r.upperBound
            } else {
                kept.append(r)
            }
            previousMatch = isMatch
        }
    }
    return kept.map { String(text[$0]) }
}
