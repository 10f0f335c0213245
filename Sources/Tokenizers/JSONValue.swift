import Foundation
import OrderedCollections

/// Any JSON value. Objects keep their keys in document order when read with `parse` (chat templates print them,
/// as Python does, in that order); through `Decodable` the order is not known and keys come sorted.
/// (`JSONSerialization` is not used: on Linux it drops a leading U+FEFF from strings, and vocabularies hold that
/// character as a token; `JSONDecoder` does not tell key order.)
public enum JSONValue: Sendable, Equatable, Decodable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object(OrderedDictionary<String, JSONValue>)

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else {
            let d = try c.decode([String: JSONValue].self)
            self = .object(OrderedDictionary(uniqueKeysWithValues: d.sorted { $0.key < $1.key }))
        }
    }

    /// Parses a whole document (RFC 8259), keeping key order; nesting deeper than `maxDepth` is an error.
    public static func parse(_ data: Data, maxDepth: Int = 256) throws(JSONParseError) -> JSONValue {
        var reader = JSONReader(bytes: [UInt8](data), maxDepth: maxDepth)
        return try reader.document()
    }

    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var array: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var object: OrderedDictionary<String, JSONValue>? { if case .object(let o) = self { return o }; return nil }
    public var isNull: Bool { self == .null }
    /// The value as an integer, when it is a number without a fraction that fits.
    public var int: Int? {
        guard case .number(let d) = self, d.rounded() == d, abs(d) < 9.0e15 else { return nil }
        return Int(d)
    }
}

extension DecodingError {
    /// One line naming where in the document decoding failed and why.
    public var readable: String {
        let (context, what): (DecodingError.Context, String)
        switch self {
        case .typeMismatch(let t, let c): (context, what) = (c, "expected \(t)")
        case .valueNotFound(let t, let c): (context, what) = (c, "missing \(t)")
        case .keyNotFound(let k, let c): (context, what) = (c, "missing key '\(k.stringValue)'")
        case .dataCorrupted(let c): (context, what) = (c, c.debugDescription)
        @unknown default: return "\(self)"
        }
        let at = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
        return at.isEmpty ? what : "at \(at.hasPrefix(".") ? String(at.dropFirst()) : at): \(what)"
    }
}
