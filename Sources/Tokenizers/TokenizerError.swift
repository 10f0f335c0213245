import Foundation
import OrderedCollections

/// What can go wrong reading a `tokenizer.json` / `tokenizer_config.json` or encoding with them.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    /// A file is missing or unreadable.
    case unreadable(path: String, reason: String)
    /// A field is absent or has the wrong JSON type.
    case malformed(path: String, field: String, reason: String)
    /// A component (`normalizer`, `pre_tokenizer`, `model`, `decoder`, ...) of a kind this reader does not implement.
    case unsupported(component: String, kind: String)
    /// A token id outside the vocabulary.
    case unknownId(Int, vocabularySize: Int)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "cannot read \(path): \(reason)"
        case .malformed(let path, let field, let reason): return "\(path): '\(field)' \(reason)"
        case .unsupported(let component, let kind):
            return "tokenizer \(component) of type '\(kind)' is not supported (supported: see Sources/Tokenizers/README.md)"
        case .unknownId(let id, let n): return "token id \(id) is outside the vocabulary (0..<\(n))"
        }
    }
}

/// A JSON object from `JSONSerialization`, read with messages that name the file and the field.
struct JSONObject {
    let value: OrderedDictionary<String, JSONValue>
    let path: String
    let context: String

    init(_ value: JSONValue?, path: String, context: String) throws {
        guard let object = value?.object else {
            throw TokenizerError.malformed(path: path, field: context, reason: "must be a JSON object")
        }
        self.value = object
        self.path = path
        self.context = context
    }

    func field(_ key: String) -> String { context.isEmpty ? key : "\(context).\(key)" }

    func has(_ key: String) -> Bool { value[key].map { !$0.isNull } ?? false }

    func string(_ key: String) throws -> String {
        guard let s = value[key]?.string else {
            throw TokenizerError.malformed(path: path, field: field(key), reason: "must be a string")
        }
        return s
    }

    func optionalString(_ key: String) throws -> String? {
        guard let v = value[key], !v.isNull else { return nil }
        guard let s = v.string else {
            throw TokenizerError.malformed(path: path, field: field(key), reason: "must be a string or null")
        }
        return s
    }

    func bool(_ key: String, default fallback: Bool) throws -> Bool {
        guard let v = value[key], !v.isNull else { return fallback }
        guard let b = v.bool else {
            throw TokenizerError.malformed(path: path, field: field(key), reason: "must be true or false")
        }
        return b
    }

    func int(_ key: String) throws -> Int {
        guard let n = value[key]?.int else {
            throw TokenizerError.malformed(path: path, field: field(key), reason: "must be an integer")
        }
        return n
    }

    func object(_ key: String) throws -> JSONObject { try JSONObject(value[key], path: path, context: field(key)) }

    func array(_ key: String) throws -> [JSONValue] {
        guard let a = value[key]?.array else {
            throw TokenizerError.malformed(path: path, field: field(key), reason: "must be a list")
        }
        return a
    }
}
