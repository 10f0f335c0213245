import Foundation

/// A `tokenizer.json` pattern: a literal string or a regular expression (matched over Unicode scalars).
enum TextPattern: @unchecked Sendable {  // Regex is immutable once built; it is only read after loading.
    case literal(String)
    case regex(Regex<AnyRegexOutput>, source: String)

    init(_ json: JSONObject) throws {
        if let s = json.value["String"]?.string {
            self = .literal(s)
        } else if let r = json.value["Regex"]?.string {
            do {
                self = .regex(try Regex(r).matchingSemantics(.unicodeScalar), source: r)
            } catch {
                throw TokenizerError.malformed(path: json.path, field: json.field("Regex"), reason: "is not a regular expression this reader accepts: \(error)")
            }
        } else {
            throw TokenizerError.malformed(path: json.path, field: json.context, reason: "must hold 'String' or 'Regex'")
        }
    }

    /// The ranges of every non-empty, non-overlapping match, left to right (scalar-aligned indices of `text`).
    func matches(in text: String) -> [Range<String.Index>] {
        switch self {
        case .literal(let s):
            let needle = Array(s.unicodeScalars)
            guard !needle.isEmpty else { return [] }
            let scalars = text.unicodeScalars
            var found: [Range<String.Index>] = []
            var i = scalars.startIndex
            while i < scalars.endIndex {
                var j = i, k = 0
                while k < needle.count, j < scalars.endIndex, scalars[j] == needle[k] { j = scalars.index(after: j); k += 1 }
                if k == needle.count { found.append(i..<j); i = j } else { i = scalars.index(after: i) }
            }
            return found
        case .regex(let r, _):
            return text.matches(of: r).compactMap { m in
                m.range.isEmpty ? nil : m.range
            }
        }
    }
}

/// `tokenizer.json`'s `normalizer`: rewrites a stretch of text before it is split into words.
indirect enum Normalizer: Sendable {
    case sequence([Normalizer])
    case prepend(String)
    case replace(TextPattern, with: String)
    case nfc, nfd, nfkc, nfkd
    case lowercase
    case strip(left: Bool, right: Bool)

    init(_ json: JSONObject) throws {
        let kind = try json.string("type")
        switch kind {
        case "Sequence":
            self = .sequence(try json.array("normalizers").enumerated().map {
                try Normalizer(JSONObject($0.element, path: json.path, context: json.field("normalizers[\($0.offset)]")))
            })
        case "Prepend": self = .prepend(try json.string("prepend"))
        case "Replace": self = .replace(try TextPattern(json.object("pattern")), with: try json.string("content"))
        case "NFC": self = .nfc
        case "NFD": self = .nfd
        case "NFKC": self = .nfkc
        case "NFKD": self = .nfkd
        case "Lowercase": self = .lowercase
        case "Strip": self = .strip(left: try json.bool("strip_left", default: true), right: try json.bool("strip_right", default: true))
        default: throw TokenizerError.unsupported(component: "normalizer", kind: kind)
        }
    }

    func apply(_ text: String) -> String {
        switch self {
        case .sequence(let steps): return steps.reduce(text) { $1.apply($0) }
        case .prepend(let p): return text.isEmpty ? text : p + text
        case .replace(let pattern, let content): return replacing(pattern, in: text, with: content)
        case .nfc: return text.precomposedStringWithCanonicalMapping
        case .nfd: return text.decomposedStringWithCanonicalMapping
        case .nfkc: return text.precomposedStringWithCompatibilityMapping
        case .nfkd: return text.decomposedStringWithCompatibilityMapping
        case .lowercase: return text.lowercased()
        case .strip(let left, let right):
            var scalars = Substring(text).unicodeScalars[...]
            if left { while let f = scalars.first, f.properties.isWhitespace { scalars = scalars.dropFirst() } }
            if right { while let l = scalars.last, l.properties.isWhitespace { scalars = scalars.dropLast() } }
            return String(String.UnicodeScalarView(scalars))
        }
    }
}

/// `text` with every match of `pattern` replaced by `content`.
func replacing(_ pattern: TextPattern, in text: String, with content: String) -> String {
    let scalars = text.unicodeScalars
    var out = String.UnicodeScalarView()
    var last = scalars.startIndex
    for r in pattern.matches(in: text) {
        out.append(contentsOf: scalars[last..<r.lowerBound])
        out.append(contentsOf: content.unicodeScalars)
        last = r.upperBound
    }
    out.append(contentsOf: scalars[last...])
    return String(out)
}
