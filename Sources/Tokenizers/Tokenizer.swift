import Foundation
import OrderedCollections

/// A token that `tokenizer.json` lists under `added_tokens`: matched in the raw text before normalization.
public struct AddedToken: Sendable, Equatable {
    public let id: Int
    public let content: String
    /// Skipped by `decode(skipSpecialTokens: true)`.
    public let special: Bool
    let leftStrip: Bool, rightStrip: Bool, singleWord: Bool
}

/// A Hugging Face tokenizer read from `tokenizer.json` (and `tokenizer_config.json` when present): BPE models
/// with their normalizer, pre-tokenizer, post-processor and decoder, as the `tokenizers` library runs them.
public struct Tokenizer: Sendable {
    let model: BPE
    let normalizer: Normalizer?
    let preTokenizer: PreTokenizer?
    let postProcessor: PostProcessor?
    let decoder: TokenDecoder?
    /// Added tokens, longest first (the order matching tries them in).
    let added: [AddedToken]
    let addedById: [Int: AddedToken]
    /// The tokenizer's settings from `tokenizer_config.json` (chat template, BOS / EOS); empty without that file.
    public let config: TokenizerConfig

    /// Reads `directory/tokenizer.json` and, when present, `directory/tokenizer_config.json`.
    public init(directory: String) throws {
        let path = (directory as NSString).appendingPathComponent("tokenizer.json")
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TokenizerError.unreadable(path: path, reason: FileManager.default.fileExists(atPath: directory)
                ? "no such file (a Hugging Face tokenizer folder has tokenizer.json)" : "no such folder")
        }
        let configPath = (directory as NSString).appendingPathComponent("tokenizer_config.json")
        let config = FileManager.default.fileExists(atPath: configPath)
            ? try TokenizerConfig(path: configPath) : TokenizerConfig()
        try self.init(json: data, path: path, config: config)
    }

    /// Reads a `tokenizer.json` held in memory; `path` names it in error messages.
    public init(json data: Data, path: String, config: TokenizerConfig = TokenizerConfig()) throws {
        let file: TokenizerFile
        do { file = try JSONDecoder().decode(TokenizerFile.self, from: data) } catch let error as DecodingError {
            throw TokenizerError.unreadable(path: path, reason: error.readable)
        } catch {
            throw TokenizerError.unreadable(path: path, reason: "not JSON (\(error.localizedDescription))")
        }
        let root = try JSONObject(.object(OrderedDictionary(uniqueKeysWithValues: file.rest.map { ($0.key, $0.value) })), path: path, context: "")
        model = try BPE(root.object("model"), vocab: file.model.vocab, merges: file.model.merges)
        normalizer = root.has("normalizer") ? try Normalizer(root.object("normalizer")) : nil
        preTokenizer = root.has("pre_tokenizer") ? try PreTokenizer(root.object("pre_tokenizer")) : nil
        postProcessor = root.has("post_processor") ? try PostProcessor(root.object("post_processor"), vocabulary: model.vocabulary) : nil
        decoder = root.has("decoder") ? try TokenDecoder(root.object("decoder")) : nil
        var added: [AddedToken] = []
        for (i, entry) in (root.has("added_tokens") ? try root.array("added_tokens") : []).enumerated() {
            let t = try JSONObject(entry, path: path, context: "added_tokens[\(i)]")
            let content = try t.string("content")
            guard !content.isEmpty else {
                throw TokenizerError.malformed(path: path, field: t.field("content"), reason: "must not be empty")
            }
            added.append(AddedToken(id: try t.int("id"), content: content, special: try t.bool("special", default: false),
                                    leftStrip: try t.bool("lstrip", default: false), rightStrip: try t.bool("rstrip", default: false),
                                    singleWord: try t.bool("single_word", default: false)))
        }
        self.added = added.sorted { $0.content.unicodeScalars.count > $1.content.unicodeScalars.count }
        addedById = Dictionary(added.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        self.config = config
    }

    /// One more than the largest id the vocabulary or an added token uses.
    public var vocabularySize: Int { max(model.tokens.count, (addedById.keys.max() ?? -1) + 1) }

    /// The id of a token string (vocabulary or added token).
    public func id(of token: String) -> Int? {
        if let a = added.first(where: { $0.content == token }) { return a.id }
        return model.vocabulary[token]
    }

    /// The string of token `id`, or `nil` outside the vocabulary.
    public func token(_ id: Int) -> String? {
        if let a = addedById[id] { return a.content }
        return id >= 0 && id < model.tokens.count ? model.tokens[id] : nil
    }

    /// Whether `id` is an added token marked special.
    public func isSpecial(_ id: Int) -> Bool { addedById[id]?.special ?? false }

    /// The ids of `text`; `addSpecialTokens` applies the post-processor (BOS for Mixtral, nothing for Qwen2).
    public func encode(_ text: String, addSpecialTokens: Bool = true) throws(EncodeError) -> [Int] {
        var ids: [Int] = []
        for segment in splitOnAddedTokens(text) {
            switch segment {
            case .added(let token): ids.append(token.id)
            case .text(let stretch, let atStart):
                let normalized = normalizer?.apply(stretch) ?? stretch
                let words = preTokenizer?.apply([Piece(text: normalized, atStart: atStart)]) ?? [Piece(text: normalized, atStart: atStart)]
                for word in words where !word.text.isEmpty { try model.encode(word.text, into: &ids) }
            }
        }
        if addSpecialTokens, let post = postProcessor { ids = post.apply(ids) }
        return ids
    }

    /// The token strings of `ids` (`convert_ids_to_tokens`); an id outside the vocabulary is an error.
    public func tokens(_ ids: [Int]) throws(TokenizerError) -> [String] {
        try ids.map { id throws(TokenizerError) in
            guard let t = token(id) else { throw TokenizerError.unknownId(id, vocabularySize: vocabularySize) }
            return t
        }
    }

    /// The text of `ids`, through the decoder; special tokens left out when `skipSpecialTokens`.
    public func decode(_ ids: some Sequence<Int>, skipSpecialTokens: Bool = true) throws(TokenizerError) -> String {
        var strings: [String] = []
        for id in ids {
            if skipSpecialTokens, isSpecial(id) { continue }
            guard let t = token(id) else { throw TokenizerError.unknownId(id, vocabularySize: vocabularySize) }
            strings.append(t)
        }
        guard let decoder else { return strings.joined(separator: " ") }
        return decoder.apply(strings).joined()
    }

    enum Segment { case added(AddedToken), text(String, atStart: Bool) }

    /// `text` cut at added tokens, leftmost match first and the longest at one position.
    func splitOnAddedTokens(_ text: String) -> [Segment] {
        guard !added.isEmpty else { return [.text(text, atStart: true)] }
        let scalars = Array(text.unicodeScalars)
        var segments: [Segment] = []
        var stretchStart = 0
        var i = 0
        func emitText(_ from: Int, _ to: Int) {
            guard from < to else { return }
            var v = String.UnicodeScalarView(); v.append(contentsOf: scalars[from..<to])
            segments.append(.text(String(v), atStart: from == 0))
        }
        while i < scalars.count {
            var hit: (AddedToken, Int)? = nil
            for token in added {
                let needle = token.content.unicodeScalars
                guard needle.first == scalars[i], i + needle.count <= scalars.count else { continue }
                var j = i, matched = true
                for s in needle { if scalars[j] != s { matched = false; break }; j += 1 }
                guard matched else { continue }
                if token.singleWord {
                    let before = i > 0 ? scalars[i - 1] : nil, after = j < scalars.count ? scalars[j] : nil
                    if let b = before, Self.isWordScalar(b) { continue }
                    if let a = after, Self.isWordScalar(a) { continue }
                }
                hit = (token, j)
                break
            }
            guard let (token, end) = hit else { i += 1; continue }
            var start = i, stop = end
            if token.leftStrip { while start > stretchStart, scalars[start - 1].properties.isWhitespace { start -= 1 } }
            if token.rightStrip { while stop < scalars.count, scalars[stop].properties.isWhitespace { stop += 1 } }
            emitText(stretchStart, start)
            segments.append(.added(token))
            stretchStart = stop
            i = stop
        }
        emitText(stretchStart, scalars.count)
        return segments
    }

    static func isWordScalar(_ s: Unicode.Scalar) -> Bool {
        s.properties.isAlphabetic || s.properties.numericType != nil || s == "_"
    }
}

/// `tokenizer.json`'s `post_processor`, for single sequences: the special tokens put around the ids.
indirect enum PostProcessor: Sendable {
    case template(before: [Int], after: [Int])
    case byteLevel
    case sequence([PostProcessor])

    init(_ json: JSONObject, vocabulary: [String: Int]) throws {
        let kind = try json.string("type")
        switch kind {
        case "TemplateProcessing":
            let specials = json.has("special_tokens") ? try json.object("special_tokens") : nil
            var before: [Int] = [], after: [Int] = [], seenSequence = false
            for (i, item) in try json.array("single").enumerated() {
                let entry = try JSONObject(item, path: json.path, context: json.field("single[\(i)]"))
                if entry.has("Sequence") { seenSequence = true; continue }
                let name = try entry.object("SpecialToken").string("id")
                guard let list = specials?.value[name]?.object?["ids"]?.array?.compactMap(\.int) else {
                    throw TokenizerError.malformed(path: json.path, field: json.field("special_tokens.\(name)"), reason: "must give the ids of '\(name)'")
                }
                if seenSequence { after += list } else { before += list }
            }
            self = .template(before: before, after: after)
        case "ByteLevel": self = .byteLevel
        case "Sequence":
            self = .sequence(try json.array("processors").enumerated().map {
                try PostProcessor(JSONObject($0.element, path: json.path, context: json.field("processors[\($0.offset)]")), vocabulary: vocabulary)
            })
        case "RobertaProcessing", "BertProcessing":
            func pair(_ key: String) throws -> Int {
                guard let p = json.value[key]?.array, p.count == 2, let id = p[1].int else {
                    throw TokenizerError.malformed(path: json.path, field: json.field(key), reason: "must be [token, id]")
                }
                return id
            }
            self = .template(before: [try pair("cls")], after: [try pair("sep")])
        default: throw TokenizerError.unsupported(component: "post_processor", kind: kind)
        }
    }

    func apply(_ ids: [Int]) -> [Int] {
        switch self {
        case .template(let before, let after): return before + ids + after
        case .byteLevel: return ids
        case .sequence(let steps): return steps.reduce(ids) { $1.apply($0) }
        }
    }
}
