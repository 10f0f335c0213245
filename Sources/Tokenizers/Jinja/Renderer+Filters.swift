import Foundation
import OrderedCollections

/// The filters, tests and methods of the supported subset: those real chat templates use.
extension Renderer {
    static let filterNames = ["abs", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float",
                              "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min",
                              "rejectattr", "replace", "reverse", "round", "safe", "selectattr", "sort", "string", "sum",
                              "title", "tojson", "trim", "unique", "upper", "wordcount"]

    func applyFilter(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws(TemplateError) -> JinjaValue {
        func arg(_ k: Int, _ key: String) -> JinjaValue? {
            if k < args.count { return args[k] }
            return kwargs.first { $0.0 == key }?.1
        }
        func str(_ x: JinjaValue) -> String { x.rendered }
        switch name {
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.count)
            case .list(let l): return .int(l.count)
            case .dict(let d): return .int(d.count)
            case .undefined: return .int(0)
            default: throw .runtime("length of a \(v.typeName) value", line: currentLine)
            }
        case "upper": return .string(str(v).uppercased())
        case "lower": return .string(str(v).lowercased())
        case "capitalize": return .string(capitalized(str(v)))
        case "title": return .string(titled(str(v)))
        case "trim":
            if let chars = arg(0, "chars"), case .string(let c) = chars {
                let set = Set(c.unicodeScalars)
                return .string(stripped(str(v), left: true, right: true) { set.contains($0) })
            }
            return .string(str(v).trimmingSpaces)
        case "string": return .string(str(v))
        case "safe": return v
        case "e", "escape":
            var out = ""
            for c in str(v) {
                switch c {
                case "&": out += "&amp;"
                case "<": out += "&lt;"
                case ">": out += "&gt;"
                case "\"": out += "&#34;"
                case "'": out += "&#39;"
                default: out.append(c)
                }
            }
            return .string(out)
        case "default", "d":
            let fallback = arg(0, "default_value") ?? .string("")
            let boolean = arg(1, "boolean")?.truthy ?? false
            if v.isUndefined || (boolean && !v.truthy) { return fallback }
            return v
        case "first": return try sequence(v).first ?? .undefined("first")
        case "last": return try sequence(v).last ?? .undefined("last")
        case "list": return .list(try sequence(v))
        case "reverse":
            if case .string(let s) = v { return .string(String(s.reversed())) }
            return .list(try sequence(v).reversed())
        case "join":
            let separator = arg(0, "d").map(str) ?? ""
            var items = try sequence(v)
            if let attribute = arg(1, "attribute") { items = items.map { attributeValue($0, str(attribute)) } }
            return .string(items.map(str).joined(separator: separator))
        case "int":
            switch v {
            case .int: return v
            case .double(let d): return .int(Int(d))
            case .bool(let b): return .int(b ? 1 : 0)
            case .string(let s): return .int(Int(s.trimmingSpaces) ?? Int(Double(s.trimmingSpaces) ?? 0))
            default: return arg(0, "default") ?? .int(0)
            }
        case "float":
            switch v {
            case .int(let n): return .double(Double(n))
            case .double: return v
            case .string(let s): return .double(Double(s.trimmingSpaces) ?? 0)
            default: return arg(0, "default") ?? .double(0)
            }
        case "abs":
            if case .int(let n) = v { return .int(abs(n)) }
            if case .double(let d) = v { return .double(abs(d)) }
            throw .runtime("abs of a \(v.typeName) value", line: currentLine)
        case "round":
            let digits = arg(0, "precision").flatMap { if case .int(let n) = $0 { return n }; return nil } ?? 0
            guard let x = number(v) else { throw .runtime("round of a \(v.typeName) value", line: currentLine) }
            let scale = Foundation.pow(10.0, Double(digits))
            return .double((x * scale).rounded(.toNearestOrEven) / scale)
        case "items":
            guard case .dict(let d) = v else {
                if v.isUndefined { return .list([]) }
                throw .runtime("items of a \(v.typeName) value", line: currentLine)
            }
            return .list(d.map { .list([.string($0.key), $0.value]) })
        case "dictsort":
            guard case .dict(let d) = v else { throw .runtime("dictsort of a \(v.typeName) value", line: currentLine) }
            return .list(d.sorted { $0.key < $1.key }.map { .list([.string($0.key), $0.value]) })
        case "tojson":
            let indent = arg(0, "indent").flatMap { if case .int(let n) = $0 { return n }; return nil }
            return .string(try jsonText(v, indent: indent))
        case "replace":
            guard let old = arg(0, "old"), let new = arg(1, "new") else { throw .runtime("replace needs two arguments", line: currentLine) }
            if str(old).isEmpty { return .string(str(v)) }
            return .string(str(v).replacingOccurrences(of: str(old), with: str(new)))
        case "indent":
            let width = arg(0, "width").flatMap { if case .int(let n) = $0 { return n }; return nil } ?? 4
            let pad = arg(0, "width").flatMap { if case .string(let s) = $0 { return s }; return nil } ?? String(repeating: " ", count: width)
            let first = arg(1, "first")?.truthy ?? false
            let blank = arg(2, "blank")?.truthy ?? false
            let lines = str(v).components(separatedBy: "\n")
            return .string(lines.enumerated().map { k, l in
                (k == 0 && !first) || (l.isEmpty && !blank) ? l : pad + l
            }.joined(separator: "\n"))
        case "selectattr", "rejectattr":
            guard let attribute = arg(0, "attribute") else { throw .runtime("\(name) needs an attribute name", line: currentLine) }
            let keep = name == "selectattr"
            var kept: [JinjaValue] = []
            for item in try sequence(v) {
                let a = attributeValue(item, str(attribute))
                let passes = args.count > 1 ? try applyTest(str(args[1]), a, Array(args.dropFirst(2))) : a.truthy
                if passes == keep { kept.append(item) }
            }
            return .list(kept)
        case "map":
            let items = try sequence(v)
            if let attribute = kwargs.first(where: { $0.0 == "attribute" })?.1 {
                let fallback = kwargs.first { $0.0 == "default" }?.1
                return .list(items.map { item in
                    let a = attributeValue(item, str(attribute))
                    if a.isUndefined, let fallback { return fallback }
                    return a
                })
            }
            guard let filter = args.first else { throw .runtime("map needs a filter name or attribute=", line: currentLine) }
            return .list(try items.map { x throws(TemplateError) in try applyFilter(str(filter), x, Array(args.dropFirst()), []) })
        case "unique":
            var seen: [JinjaValue] = []
            for x in try sequence(v) where !seen.contains(x) { seen.append(x) }
            return .list(seen)
        case "sort":
            let reverse = arg(0, "reverse")?.truthy ?? false
            let attribute = arg(2, "attribute").map(str)
            var failure: TemplateError? = nil
            let sorted = try sequence(v).sorted { (x: JinjaValue, y: JinjaValue) -> Bool in
                let (a, b) = attribute.map { (attributeValue(x, $0), attributeValue(y, $0)) } ?? (x, y)
                do { return try self.binary(reverse ? ">" : "<", a, b).truthy } catch { failure = error as? TemplateError ?? .runtime("sort: \(error)", line: 0); return false }
            }
            if let failure { throw failure }
            return .list(sorted)
        case "sum":
            var total: JinjaValue = arg(1, "start") ?? .int(0)
            for x in try sequence(v) {
                let item = arg(0, "attribute").map { attributeValue(x, str($0)) } ?? x
                total = try binary("+", total, item)
            }
            return total
        case "min", "max":
            let items = try sequence(v)
            guard var best = items.first else { return .undefined(name) }
            for x in items.dropFirst() where try binary(name == "min" ? "<" : ">", x, best).truthy { best = x }
            return best
        case "wordcount":
            return .int(str(v).split { $0.isWhitespace }.count)
        default:
            throw .unsupported("the filter '\(name)'", line: currentLine)
        }
    }

    /// `item.attr` for filters that take an attribute name (dotted paths allowed).
    func attributeValue(_ item: JinjaValue, _ path: String) -> JinjaValue {
        var v = item
        for part in path.split(separator: ".") {
            switch v {
            case .dict(let d): v = d[String(part)] ?? .undefined(String(part))
            case .namespace(let ns): v = ns.values[String(part)] ?? .undefined(String(part))
            case .list(let l):
                if let k = Int(part), l.indices.contains(k) { v = l[k] } else { return .undefined(String(part)) }
            default: return .undefined(String(part))
            }
        }
        return v
    }

    func applyTest(_ name: String, _ v: JinjaValue, _ args: [JinjaValue]) throws(TemplateError) -> Bool {
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": return v == .none && !v.isUndefined
        case "string": if case .string = v { return true }; return false
        case "number": switch v { case .int, .double: return true; default: return false }
        case "integer": if case .int = v { return true }; return false
        case "float": if case .double = v { return true }; return false
        case "boolean": if case .bool = v { return true }; return false
        case "true": if case .bool(true) = v { return true }; return false
        case "false": if case .bool(false) = v { return true }; return false
        case "mapping": switch v { case .dict, .namespace: return true; default: return false }
        case "sequence", "iterable": switch v { case .list, .string, .dict: return true; default: return false }
        case "callable": if case .function = v { return true }; return false
        case "lower": if case .string(let s) = v { return s == s.lowercased() }; return false
        case "upper": if case .string(let s) = v { return s == s.uppercased() }; return false
        case "even", "odd":
            guard case .int(let n) = v else { throw .runtime("'\(name)' needs an integer", line: currentLine) }
            return (n % 2 == 0) == (name == "even")
        case "divisibleby":
            guard case .int(let n) = v, case .int(let d)? = args.first, d != 0 else { throw .runtime("'divisibleby' needs integers", line: currentLine) }
            return n % d == 0
        case "equalto", "eq", "==", "sameas":
            guard let other = args.first else { throw .runtime("'\(name)' needs a value", line: currentLine) }
            return v == other
        case "ne", "!=":
            guard let other = args.first else { throw .runtime("'\(name)' needs a value", line: currentLine) }
            return v != other
        case "lt", "gt", "le", "ge", "<", ">", "<=", ">=":
            guard let other = args.first else { throw .runtime("'\(name)' needs a value", line: currentLine) }
            let op = ["lt": "<", "gt": ">", "le": "<=", "ge": ">="][name] ?? name
            return try binary(op, v, other).truthy
        case "in":
            guard let other = args.first else { throw .runtime("'in' needs a value", line: currentLine) }
            return try binary("in", v, other).truthy
        default:
            throw .unsupported("the test '\(name)'", line: currentLine)
        }
    }

    func callMethod(_ object: JinjaValue, _ method: String, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws(TemplateError) -> JinjaValue {
        func str(_ k: Int) -> String? { k < args.count ? args[k].rendered : nil }
        switch (object, method) {
        case (.string(let s), "strip"), (.string(let s), "lstrip"), (.string(let s), "rstrip"):
            let chars = str(0).map { Set($0.unicodeScalars) }
            let inSet: (Unicode.Scalar) -> Bool = { c in chars.map { $0.contains(c) } ?? c.properties.isWhitespace }
            return .string(stripped(s, left: method != "rstrip", right: method != "lstrip", inSet))
        case (.string(let s), "upper"): return .string(s.uppercased())
        case (.string(let s), "lower"): return .string(s.lowercased())
        case (.string(let s), "title"): return .string(titled(s))
        case (.string(let s), "capitalize"): return .string(capitalized(s))
        case (.string(let s), "startswith"), (.string(let s), "endswith"):
            let candidates: [String]
            if case .list(let l)? = args.first { candidates = l.map(\.rendered) } else { candidates = [str(0) ?? ""] }
            return .bool(candidates.contains { method == "startswith" ? s.unicodeScalars.starts(with: $0.unicodeScalars)
                : s.unicodeScalars.reversed().starts(with: $0.unicodeScalars.reversed()) })
        case (.string(let s), "split"):
            let limit = args.count > 1 ? (number(args[1]).map(Int.init) ?? -1) : -1
            if let sep = str(0), !(args[0] == .none) {
                guard !sep.isEmpty else { throw .runtime("split: empty separator", line: currentLine) }
                let parts = s.components(separatedBy: sep)
                guard limit >= 0, parts.count > limit + 1 else { return .list(parts.map { .string($0) }) }
                return .list(parts[0..<limit].map { .string($0) } + [.string(parts[limit...].joined(separator: sep))])
            }
            return .list(s.split { $0.isWhitespace }.map { .string(String($0)) })
        case (.string(let s), "replace"):
            guard let old = str(0), let new = str(1) else { throw .runtime("replace needs two arguments", line: currentLine) }
            return .string(old.isEmpty ? s : s.replacingOccurrences(of: old, with: new))
        case (.string(let s), "join"):
            guard let first = args.first else { throw .runtime("join needs a list", line: currentLine) }
            return .string(try sequence(first).map(\.rendered).joined(separator: s))
        case (.string(let s), "find"):
            guard let needle = str(0) else { throw .runtime("find needs a string", line: currentLine) }
            guard let r = s.range(of: needle) else { return .int(-1) }
            return .int(s.distance(from: s.startIndex, to: r.lowerBound))
        case (.string(let s), "count"):
            guard let needle = str(0), !needle.isEmpty else { throw .runtime("count needs a string", line: currentLine) }
            return .int(s.components(separatedBy: needle).count - 1)
        case (.dict(let d), "items"): return .list(d.map { .list([.string($0.key), $0.value]) })
        case (.dict(let d), "keys"): return .list(d.keys.map { .string($0) })
        case (.dict(let d), "values"): return .list(Array(d.values))
        case (.dict(let d), "get"):
            guard let key = str(0) else { throw .runtime("get needs a key", line: currentLine) }
            return d[key] ?? (args.count > 1 ? args[1] : .none)
        case (.undefined(let n), _):
            throw .runtime("'\(n)' is undefined, so it has no method '\(method)'", line: currentLine)
        default:
            throw .unsupported("the method '\(method)' of a \(object.typeName) value", line: currentLine)
        }
    }
}

func stripped(_ s: String, left: Bool, right: Bool, _ strip: (Unicode.Scalar) -> Bool) -> String {
    var v = s.unicodeScalars[...]
    if left { while let f = v.first, strip(f) { v = v.dropFirst() } }
    if right { while let l = v.last, strip(l) { v = v.dropLast() } }
    return String(String.UnicodeScalarView(v))
}

/// Python's `str.capitalize`: first character upper case, the rest lower case.
func capitalized(_ s: String) -> String {
    guard let f = s.first else { return s }
    return f.uppercased() + s.dropFirst().lowercased()
}

/// Python's `str.title`: each run of letters starts upper case.
func titled(_ s: String) -> String {
    var out = "", previousLetter = false
    for c in s {
        out += previousLetter ? c.lowercased() : c.uppercased()
        previousLetter = c.isLetter
    }
    return out
}
