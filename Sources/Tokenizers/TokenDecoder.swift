/// `tokenizer.json`'s `decoder`: turns token strings back into text. Each step maps the list of token strings to a
/// new list (`tokenizers`' `decode_chain`); the result is their concatenation.
indirect enum TokenDecoder: Sendable {
    case sequence([TokenDecoder])
    case replace(TextPattern, with: String)
    case byteFallback
    case fuse
    case strip(String, start: Int, stop: Int)
    case byteLevel
    case metaspace(replacement: String, prepend: PrependScheme)

    init(_ json: JSONObject) throws {
        let kind = try json.string("type")
        switch kind {
        case "Sequence":
            self = .sequence(try json.array("decoders").enumerated().map {
                try TokenDecoder(JSONObject($0.element, path: json.path, context: json.field("decoders[\($0.offset)]")))
            })
        case "Replace": self = .replace(try TextPattern(json.object("pattern")), with: try json.string("content"))
        case "ByteFallback": self = .byteFallback
        case "Fuse": self = .fuse
        case "Strip": self = .strip(try json.string("content"), start: try json.int("start"), stop: try json.int("stop"))
        case "ByteLevel": self = .byteLevel
        case "Metaspace":
            self = .metaspace(replacement: try json.string("replacement"), prepend: try PrependScheme(json))
        default: throw TokenizerError.unsupported(component: "decoder", kind: kind)
        }
    }

    func apply(_ tokens: [String]) -> [String] {
        switch self {
        case .sequence(let steps):
            return steps.reduce(tokens) { $1.apply($0) }
        case .replace(let pattern, let content):
            return tokens.map { replacing(pattern, in: $0, with: content) }
        case .byteFallback:
            // Runs of <0xXX> tokens become the text of their bytes, or one U+FFFD per byte when not valid UTF-8.
            var out: [String] = []
            var bytes: [UInt8] = []
            func flush() {
                guard !bytes.isEmpty else { return }
                if let s = String(validating: bytes, as: UTF8.self) {
                    out.append(s)
                } else {
                    out.append(contentsOf: repeatElement("\u{FFFD}", count: bytes.count))
                }
                bytes.removeAll()
            }
            for t in tokens {
                if let b = Self.fallbackByte(t) { bytes.append(b) } else { flush(); out.append(t) }
            }
            flush()
            return out
        case .fuse:
            return [tokens.joined()]
        case .strip(let content, let start, let stop):
            let c = content.unicodeScalars.first
            return tokens.map { t in
                var scalars = Array(t.unicodeScalars)
                var head = 0
                while head < start, head < scalars.count, scalars[head] == c { head += 1 }
                var tail = 0
                while tail < stop, tail < scalars.count - head, scalars[scalars.count - 1 - tail] == c { tail += 1 }
                scalars = Array(scalars[head..<(scalars.count - tail)])
                var v = String.UnicodeScalarView(); v.append(contentsOf: scalars)
                return String(v)
            }
        case .byteLevel:
            return [String(decoding: ByteLevel.bytes(of: tokens.joined()), as: UTF8.self)]
        case .metaspace(let replacement, let prepend):
            return tokens.enumerated().map { i, t in
                var s = replacing(.literal(replacement), in: t, with: " ")
                if i == 0, prepend != .never, s.hasPrefix(" ") { s.unicodeScalars.removeFirst() }
                return s
            }
        }
    }

    /// The byte of a `<0xXX>` token.
    static func fallbackByte(_ token: String) -> UInt8? {
        let u = token.utf8
        guard u.count == 6, token.hasPrefix("<0x"), token.hasSuffix(">") else { return nil }
        let hex = token.dropFirst(3).dropLast()
        return UInt8(hex, radix: 16)
    }
}
