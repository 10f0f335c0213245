import Foundation
import HeapModule
import OrderedCollections

/// A byte-pair-encoding model (`tokenizer.json`'s `model` of type `BPE`): a vocabulary and ranked merges.
struct BPE: Sendable {
    /// Token string -> id.
    let vocabulary: [String: Int]
    /// Id -> token string; ids the vocabulary does not name are `nil` (added tokens fill some of them).
    let tokens: [String?]
    /// (left id, right id) packed into one key -> (rank, merged id).
    let merges: [UInt64: (rank: Int32, id: Int32)]
    let unknown: Int?
    let fuseUnknown: Bool
    let byteFallback: Bool
    let ignoreMerges: Bool
    /// `byteToken[b]` is the id of `<0xXX>` when the vocabulary has it.
    let byteToken: [Int?]

    /// `json` holds the model's small fields; `vocab` and `merges` come typed from `TokenizerFile`.
    init(_ json: JSONObject, vocab: [String: Int]?, merges list: [TokenizerFile.Merge]?) throws {
        let kind = try json.string("type")
        guard kind == "BPE" else { throw TokenizerError.unsupported(component: "model", kind: kind) }
        guard let vocabulary = vocab else {
            throw TokenizerError.malformed(path: json.path, field: json.field("vocab"), reason: "must be an object of token -> id")
        }
        var largest = -1
        for (token, id) in vocabulary {
            guard id >= 0 else {
                throw TokenizerError.malformed(path: json.path, field: json.field("vocab.\(token)"), reason: "must be a non-negative integer id")
            }
            largest = max(largest, id)
        }
        var tokens = [String?](repeating: nil, count: largest + 1)
        for (token, id) in vocabulary { tokens[id] = token }
        self.vocabulary = vocabulary
        self.tokens = tokens

        for affix in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = try json.optionalString(affix), !s.isEmpty {
                throw TokenizerError.unsupported(component: "model.\(affix)", kind: s)
            }
        }
        if let dropout = json.value["dropout"], !dropout.isNull {
            throw TokenizerError.unsupported(component: "model.dropout", kind: "\(dropout)")
        }
        var merges: [UInt64: (rank: Int32, id: Int32)] = [:]
        guard let list else {
            throw TokenizerError.malformed(path: json.path, field: json.field("merges"), reason: "must be a list")
        }
        merges.reserveCapacity(list.count)
        for (rank, entry) in list.enumerated() {
            let pair = (entry.left, entry.right)
            guard let l = vocabulary[pair.0], let r = vocabulary[pair.1], let m = vocabulary[pair.0 + pair.1] else {
                throw TokenizerError.malformed(path: json.path, field: json.field("merges[\(rank)]"),
                                               reason: "'\(pair.0) \(pair.1)' names a token outside the vocabulary")
            }
            let key = Self.key(l, r)
            if merges[key] == nil { merges[key] = (Int32(rank), Int32(m)) }
        }
        self.merges = merges
        if let unk = try json.optionalString("unk_token") {
            guard let id = vocabulary[unk] else {
                throw TokenizerError.malformed(path: json.path, field: json.field("unk_token"), reason: "'\(unk)' is not in the vocabulary")
            }
            unknown = id
        } else {
            unknown = nil
        }
        fuseUnknown = try json.bool("fuse_unk", default: false)
        byteFallback = try json.bool("byte_fallback", default: false)
        ignoreMerges = try json.bool("ignore_merges", default: false)
        byteToken = (0..<256).map { vocabulary[String(format: "<0x%02X>", $0)] }
    }

    static func key(_ l: Int, _ r: Int) -> UInt64 { UInt64(UInt32(l)) << 32 | UInt64(UInt32(r)) }

    /// The ids of one word, appended to `out`.
    func encode(_ word: String, into out: inout [Int]) throws(EncodeError) {
        if ignoreMerges, let id = vocabulary[word] { out.append(id); return }
        // Initial symbols: one per character, else its bytes as <0xXX>, else unk.
        var ids: [Int] = []
        ids.reserveCapacity(word.unicodeScalars.count)
        var lastWasUnknown = false
        for scalar in word.unicodeScalars {
            let s = String(scalar)
            if let id = vocabulary[s] {
                ids.append(id); lastWasUnknown = false
            } else if byteFallback, s.utf8.allSatisfy({ byteToken[Int($0)] != nil }) {
                for b in s.utf8 { ids.append(byteToken[Int(b)]!) }
                lastWasUnknown = false
            } else if let unk = unknown {
                if !(fuseUnknown && lastWasUnknown) { ids.append(unk) }
                lastWasUnknown = true
            } else {
                throw EncodeError.noToken(character: s)
            }
        }
        mergeAll(&ids)
        out.append(contentsOf: ids)
    }

    private struct Candidate: Comparable {
        let rank: Int32, position: Int32, id: Int32
        static func < (a: Candidate, b: Candidate) -> Bool { (a.rank, a.position) < (b.rank, b.position) }
    }

    /// Applies merges lowest rank first (leftmost first among equal ranks) until none applies.
    private func mergeAll(_ ids: inout [Int]) {
        let n = ids.count
        guard n > 1 else { return }
        var next = Array(1...n).map(Int32.init); next[n - 1] = -1
        var previous = Array(-1..<(n - 1)).map(Int32.init)
        var alive = [Bool](repeating: true, count: n)
        var heap = Heap<Candidate>()
        for i in 0..<(n - 1) {
            if let m = merges[Self.key(ids[i], ids[i + 1])] { heap.insert(Candidate(rank: m.rank, position: Int32(i), id: m.id)) }
        }
        while let top = heap.popMin() {
            let p = Int(top.position)
            guard alive[p], next[p] >= 0 else { continue }
            let r = Int(next[p])
            guard let m = merges[Self.key(ids[p], ids[r])], m.id == top.id else { continue }
            ids[p] = Int(m.id)
            alive[r] = false
            next[p] = next[r]
            if next[r] >= 0 { previous[Int(next[r])] = Int32(p) }
            if previous[p] >= 0, let m = merges[Self.key(ids[Int(previous[p])], ids[p])] {
                heap.insert(Candidate(rank: m.rank, position: previous[p], id: m.id))
            }
            if next[p] >= 0, let m = merges[Self.key(ids[p], ids[Int(next[p])])] {
                heap.insert(Candidate(rank: m.rank, position: Int32(p), id: m.id))
            }
        }
        var kept: [Int] = []
        kept.reserveCapacity(n)
        var i = 0
        while i >= 0 { kept.append(ids[i]); i = Int(next[i]) }
        ids = kept
    }
}

/// Why a text could not be encoded.
public enum EncodeError: Error, CustomStringConvertible {
    /// A character the vocabulary cannot spell, with no byte fallback and no unknown token.
    case noToken(character: String)

    public var description: String {
        switch self {
        case .noToken(let c):
            let code = c.unicodeScalars.map { String(format: "U+%04X", $0.value) }.joined(separator: " ")
            return "the tokenizer has no token for \(code) (no byte fallback, no unknown token)"
        }
    }
}

/// `tokenizer.json` with its model's vocabulary and merges decoded as typed values (fast for 150K-entry
/// vocabularies) and every other part kept as `JSONValue`.
struct TokenizerFile: Decodable {
    struct Model: Decodable {
        let vocab: [String: Int]?
        let merges: [Merge]?
        enum CodingKeys: String, CodingKey { case type, vocab, merges }

        /// Reads the vocabulary and merges of BPE models only; other kinds are refused by name later.
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            guard (try? c.decode(String.self, forKey: .type)) == "BPE" else { vocab = nil; merges = nil; return }
            vocab = try c.decodeIfPresent([String: Int].self, forKey: .vocab)
            merges = try c.decodeIfPresent([Merge].self, forKey: .merges)
        }
    }

    /// One merge, written `"left right"` or `["left", "right"]`.
    struct Merge: Decodable {
        let left: String, right: String
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let pair = try? c.decode([String].self) {
                guard pair.count == 2 else {
                    throw DecodingError.dataCorruptedError(in: c, debugDescription: "a merge must be 'left right' or [left, right]")
                }
                (left, right) = (pair[0], pair[1])
                return
            }
            let s = try c.decode(String.self)
            let parts = s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "a merge must be 'left right', not '\(s)'")
            }
            (left, right) = (String(parts[0]), String(parts[1]))
        }
    }

    let model: Model
    /// The whole file as generic JSON, less the model's vocabulary and merges.
    let rest: [String: JSONValue]

    struct AnyKey: CodingKey {
        let stringValue: String
        init(stringValue: String) { self.stringValue = stringValue }
        var intValue: Int? { nil }
        init?(intValue: Int) { nil }
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        var rest: [String: JSONValue] = [:]
        var model: Model? = nil
        for key in c.allKeys {
            if key.stringValue == "model" {
                model = try c.decode(Model.self, forKey: key)
                // The model's small fields (type, unk_token, flags) as generic JSON.
                let fields = try c.nestedContainer(keyedBy: AnyKey.self, forKey: key)
                var small: [String: JSONValue] = [:]
                for k in fields.allKeys where k.stringValue != "vocab" && k.stringValue != "merges" {
                    small[k.stringValue] = try fields.decode(JSONValue.self, forKey: k)
                }
                rest["model"] = .object(OrderedDictionary(uniqueKeysWithValues: small.map { ($0.key, $0.value) }))
            } else {
                rest[key.stringValue] = try c.decode(JSONValue.self, forKey: key)
            }
        }
        guard let model else {
            throw DecodingError.keyNotFound(AnyKey(stringValue: "model"), .init(codingPath: [], debugDescription: "no 'model'"))
        }
        self.model = model
        self.rest = rest
    }
}
