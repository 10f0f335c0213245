import Foundation
import OrderedCollections

/// A value inside a template, with Python's semantics where Jinja borrows them (truthiness, `str()`, equality).
public indirect enum JinjaValue: Sendable {
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([JinjaValue])
    case dict(OrderedDictionary<String, JinjaValue>)
    case namespace(Namespace)
    case function(JinjaFunction)

    /// A JSON value as a template sees it: integral numbers become ints, objects keep their key order.
    public init(_ json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .number(let d): self = d.rounded() == d && abs(d) < 9.0e15 ? .int(Int(d)) : .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .list(a.map(JinjaValue.init))
        case .object(let o): self = .dict(OrderedDictionary(uniqueKeysWithValues: o.map { ($0.key, JinjaValue($0.value)) }))
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true }; return false }

    /// Python truthiness.
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let n): return n != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .list(let l): return !l.isEmpty
        case .dict(let d): return !d.isEmpty
        case .namespace, .function: return true
        }
    }

    /// The name of the value's type, for messages.
    var typeName: String {
        switch self {
        case .undefined: return "undefined"
        case .none: return "none"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "string"
        case .list: return "list"
        case .dict: return "dict"
        case .namespace: return "namespace"
        case .function: return "function"
        }
    }

    /// What `{{ value }}` prints: Python's `str()`, and nothing for an undefined value.
    var rendered: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr
        }
    }

    /// Python's `repr()` (strings quoted), used inside printed lists and dicts.
    var repr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let n): return String(n)
        case .double(let d): return pythonFloat(d)
        case .string(let s):
            let quote = s.contains("'") && !s.contains("\"") ? "\"" : "'"
            var out = quote
            for c in s.unicodeScalars {
                switch c {
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default: out += String(quote == "'" && c == "'" ? "\\'" : String(c))
                }
            }
            return out + quote
        case .list(let l): return "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case .dict(let d): return "{" + d.map { "'\($0.key)': \($0.value.repr)" }.joined(separator: ", ") + "}"
        case .namespace(let n): return "<Namespace \(n.values.keys.joined(separator: ", "))>"
        case .function(let f): return "<function \(f.name)>"
        }
    }
}

/// Python's `repr` of a float: shortest round-trip digits, always with a fraction or exponent.
func pythonFloat(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d > 0 ? "inf" : "-inf" }
    if d.rounded() == d, abs(d) < 1e16 { return String(format: "%.1f", d) }
    return "\(d)"
}

/// `namespace(...)`: the one mutable object a template can assign attributes of across loop scopes.
public final class Namespace: @unchecked Sendable {  // Only the single renderer that made it touches it.
    var values: OrderedDictionary<String, JinjaValue>
    init(_ values: OrderedDictionary<String, JinjaValue>) { self.values = values }
}

/// A callable: a global such as `range`, or a macro the template defined.
public struct JinjaFunction: Sendable {
    let name: String
    let call: @Sendable ([JinjaValue], [(String, JinjaValue)]) throws -> JinjaValue
}

extension JinjaValue: Equatable {
    /// Python equality: ints and floats compare by value; different kinds are unequal.
    public static func == (a: JinjaValue, b: JinjaValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.int(let x), .double(let y)), (.double(let y), .int(let x)): return Double(x) == y
        case (.double(let x), .double(let y)): return x == y
        case (.bool(let x), .int(let y)), (.int(let y), .bool(let x)): return (x ? 1 : 0) == y
        case (.string(let x), .string(let y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case (.list(let x), .list(let y)): return x == y
        case (.dict(let x), .dict(let y)): return x.count == y.count && x.allSatisfy { y[$0.key] == $0.value }
        case (.namespace(let x), .namespace(let y)): return x === y
        default: return false
        }
    }
}

/// JSON text of a value as Hugging Face's `tojson` filter writes it (`json.dumps` with `ensure_ascii=False`, keys
/// in their order, `(', ', ': ')` separators, or newlines and `indent` spaces).
func jsonText(_ v: JinjaValue, indent: Int?, level: Int = 0) throws(TemplateError) -> String {
    func quoted(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if c.value < 0x20 { out += String(format: "\\u%04x", c.value) } else { out.unicodeScalars.append(c) }
            }
        }
        return out + "\""
    }
    let pad = indent.map { "\n" + String(repeating: " ", count: $0 * (level + 1)) }
    let closePad = indent.map { "\n" + String(repeating: " ", count: $0 * level) } ?? ""
    let itemSeparator = indent == nil ? ", " : ","
    switch v {
    case .none: return "null"
    case .bool(let b): return b ? "true" : "false"
    case .int(let n): return String(n)
    case .double(let d): return d.isFinite ? pythonFloat(d) : (d.isNaN ? "NaN" : d > 0 ? "Infinity" : "-Infinity")
    case .string(let s): return quoted(s)
    case .list(let l):
        if l.isEmpty { return "[]" }
        var parts: [String] = []
        for x in l { parts.append((pad ?? "") + (try jsonText(x, indent: indent, level: level + 1))) }
        return "[" + parts.joined(separator: itemSeparator) + closePad + "]"
    case .dict(let d):
        if d.isEmpty { return "{}" }
        var parts: [String] = []
        for (k, x) in d { parts.append((pad ?? "") + quoted(k) + ": " + (try jsonText(x, indent: indent, level: level + 1))) }
        return "{" + parts.joined(separator: itemSeparator) + closePad + "}"
    case .namespace(let n):
        return try jsonText(.dict(n.values), indent: indent, level: level)
    case .undefined, .function:
        throw .runtime("tojson: a \(v.typeName) value is not JSON serializable", line: 0)
    }
}
