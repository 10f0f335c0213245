/// GPT-2's reversible map from bytes to printable characters (`bytes_to_unicode`): printable Latin-1 bytes stand
/// for themselves, the other 68 bytes are shifted to U+0100 onwards in byte order.
enum ByteLevel {
    /// `characterOfByte[b]` is the character byte `b` is written as in a byte-level vocabulary.
    static let characterOfByte: [Unicode.Scalar] = {
        var printable = Set<UInt8>()
        for b in UInt8(ascii: "!")...UInt8(ascii: "~") { printable.insert(b) }
        for b in UInt8(0xA1)...UInt8(0xAC) { printable.insert(b) }
        for b in UInt8(0xAE)...UInt8(0xFF) { printable.insert(b) }
        var table = [Unicode.Scalar](repeating: "\0", count: 256)
        var shifted: UInt32 = 256
        for b in 0..<256 {
            if printable.contains(UInt8(b)) {
                table[b] = Unicode.Scalar(UInt8(b))
            } else {
                table[b] = Unicode.Scalar(shifted)!
                shifted += 1
            }
        }
        return table
    }()

    /// The inverse of `characterOfByte`.
    static let byteOfCharacter: [Unicode.Scalar: UInt8] = {
        var map: [Unicode.Scalar: UInt8] = [:]
        for (b, c) in characterOfByte.enumerated() { map[c] = UInt8(b) }
        return map
    }()

    /// The byte-level spelling of `text`'s UTF-8 bytes.
    static func encode(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for b in text.utf8 { out.append(characterOfByte[Int(b)]) }
        return String(out)
    }

    /// The bytes a byte-level string stands for; a character outside the map stands for its own UTF-8 bytes.
    static func bytes(of text: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        for s in text.unicodeScalars {
            if let b = byteOfCharacter[s] { out.append(b) } else { out.append(contentsOf: String(s).utf8) }
        }
        return out
    }
}
