import Foundation
import OrderedCollections

/// Runs a parsed template. Scopes follow Jinja: a `for` body and a macro get their own frame, so `set` inside a loop
/// does not change the variable outside (templates use `namespace()` for that).
final class Renderer {
    private var frames: [[String: JinjaValue]]
    private var line = 0

    init(globals: [String: JinjaValue]) { frames = [globals] }

    enum Flow { case normal, breakLoop, continueLoop }

    func render(_ nodes: [Node]) throws(TemplateError) -> String {
        var out = ""
        _ = try run(nodes, into: &out)
        return out
    }

    private func lookup(_ name: String) -> JinjaValue {
        for f in frames.reversed() { if let v = f[name] { return v } }
        return .undefined(name)
    }

    private func assign(_ name: String, _ value: JinjaValue) { frames[frames.count - 1][name] = value }

    private func run(_ nodes: [Node], into out: inout String) throws(TemplateError) -> Flow {
        for node in nodes {
            switch node {
            case .text(let t): out += t
            case .output(let e, let l):
                line = l
                out += try eval(e).rendered
            case .ifBlock(let branches, let otherwise, let l):
                line = l
                var taken = false
                for (condition, body) in branches {
                    guard try eval(condition).truthy else { continue }
                    taken = true
                    let flow = try run(body, into: &out)
                    if flow != .normal { return flow }
                    break
                }
                if !taken {
                    let flow = try run(otherwise, into: &out)
                    if flow != .normal { return flow }
                }
            case .forBlock(let targets, let iterable, let condition, let body, let otherwise, let l):
                line = l
                try runFor(targets, iterable, condition, body, otherwise, into: &out)
            case .set(let target, let e, let l):
                line = l
                let value = try eval(e)
                switch target {
                case .names(let names) where names.count == 1: assign(names[0], value)
                case .names(let names):
                    let items = try sequence(value)
                    guard items.count == names.count else { throw .runtime("cannot unpack \(items.count) values into \(names.count) names", line: l) }
                    for (n, v) in zip(names, items) { assign(n, v) }
                case .attribute(let object, let attr):
                    guard case .namespace(let ns) = lookup(object) else {
                        throw .runtime("'{% set \(object).\(attr) %}' needs '\(object)' to be a namespace()", line: l)
                    }
                    ns.values[attr] = value
                }
            case .setBlock(let name, let body, let l):
                line = l
                var captured = ""
                _ = try run(body, into: &captured)
                assign(name, .string(captured))
            case .macro(let name, let parameters, let body, let l):
                line = l
                assign(name, macro(name, parameters, body))
            case .breakLoop: return .breakLoop
            case .continueLoop: return .continueLoop
            case .filterBlock(let name, let args, let kwargs, let body, let l):
                line = l
                var captured = ""
                _ = try run(body, into: &captured)
                out += try applyFilter(name, .string(captured), try args.map { a throws(TemplateError) in try eval(a) },
                                       try kwargs.map { k throws(TemplateError) in (k.0, try eval(k.1)) }).rendered
            }
        }
        return .normal
    }

    private func runFor(_ targets: [String], _ iterable: Expr, _ condition: Expr?, _ body: [Node], _ otherwise: [Node],
                        into out: inout String) throws(TemplateError) {
        let source = try eval(iterable)
        var items: [JinjaValue]
        if case .dict(let d) = source { items = d.keys.map { .string($0) } } else { items = try sequence(source) }
        frames.append([:])
        defer { frames.removeLast() }
        if let condition {
            var kept: [JinjaValue] = []
            for item in items {
                try bind(targets, item)
                if try eval(condition).truthy { kept.append(item) }
            }
            items = kept
        }
        if items.isEmpty {
            _ = try run(otherwise, into: &out)
            return
        }
        for (k, item) in items.enumerated() {
            try bind(targets, item)
            let n = items.count
            var loop: OrderedDictionary<String, JinjaValue> = [
                "index": .int(k + 1), "index0": .int(k), "revindex": .int(n - k), "revindex0": .int(n - k - 1),
                "first": .bool(k == 0), "last": .bool(k == n - 1), "length": .int(n),
            ]
            loop["previtem"] = k > 0 ? items[k - 1] : .undefined("loop.previtem")
            loop["nextitem"] = k + 1 < n ? items[k + 1] : .undefined("loop.nextitem")
            assign("loop", .dict(loop))
            let flow = try run(body, into: &out)
            if flow == .breakLoop { break }
        }
    }

    private func bind(_ targets: [String], _ item: JinjaValue) throws(TemplateError) {
        if targets.count == 1 { assign(targets[0], item); return }
        let parts = try sequence(item)
        guard parts.count == targets.count else { throw .runtime("cannot unpack \(parts.count) values into \(targets.count) loop names", line: line) }
        for (t, v) in zip(targets, parts) { assign(t, v) }
    }

    private func macro(_ name: String, _ parameters: [(String, Expr?)], _ body: [Node]) -> JinjaValue {
        // The renderer outlives every call: macros only run during this render.
        let renderer = RendererReference(value: self)
        return .function(JinjaFunction(name: name) { args, kwargs in
            let r = renderer.value
            var frame: [String: JinjaValue] = [:]
            for (k, p) in parameters.enumerated() {
                if k < args.count { frame[p.0] = args[k] }
                else if let v = kwargs.first(where: { $0.0 == p.0 }) { frame[p.0] = v.1 }
                else if let d = p.1 { frame[p.0] = try r.eval(d) }
                else { frame[p.0] = .undefined(p.0) }
            }
            r.frames.append(frame)
            defer { r.frames.removeLast() }
            var out = ""
            _ = try r.run(body, into: &out)
            return .string(out)
        })
    }

    /// The items of a list, a string's characters, a dict's keys.
    func sequence(_ v: JinjaValue) throws(TemplateError) -> [JinjaValue] {
        switch v {
        case .list(let l): return l
        case .string(let s): return s.map { .string(String($0)) }
        case .dict(let d): return d.keys.map { .string($0) }
        case .undefined: return []
        default: throw .runtime("a \(v.typeName) value is not iterable", line: line)
        }
    }

    // MARK: Expressions

    func eval(_ e: Expr) throws(TemplateError) -> JinjaValue {
        switch e {
        case .literal(let v): return v
        case .name(let n): return lookup(n)
        case .list(let items): return .list(try items.map { x throws(TemplateError) in try eval(x) })
        case .tuple(let items): return .list(try items.map { x throws(TemplateError) in try eval(x) })
        case .dict(let pairs):
            var d = OrderedDictionary<String, JinjaValue>()
            for (k, v) in pairs {
                guard case .string(let key) = try eval(k) else { throw .runtime("dict keys must be strings", line: line) }
                d[key] = try eval(v)
            }
            return .dict(d)
        case .attribute(let base, let name):
            let b = try eval(base)
            switch b {
            case .dict(let d): return d[name] ?? .undefined(name)
            case .namespace(let ns): return ns.values[name] ?? .undefined(name)
            default: return .undefined(name)
            }
        case .item(let base, let index): return try subscriptValue(try eval(base), try eval(index))
        case .slice(let base, let a, let b, let c):
            return try slice(try eval(base), try a.map { x throws(TemplateError) in try eval(x) },
                             try b.map { x throws(TemplateError) in try eval(x) }, try c.map { x throws(TemplateError) in try eval(x) })
        case .call(let callee, let argExprs, let kwExprs):
            let args = try argExprs.map { x throws(TemplateError) in try eval(x) }
            let kwargs = try kwExprs.map { k throws(TemplateError) in (k.0, try eval(k.1)) }
            if case .attribute(let objectExpr, let method) = callee {
                let object = try eval(objectExpr)
                if case .dict(let d) = object, case .function(let f)? = d[method] { return try call(f, args, kwargs) }
                return try callMethod(object, method, args, kwargs)
            }
            let f = try eval(callee)
            guard case .function(let fn) = f else {
                if case .name(let n) = callee, f.isUndefined { throw .unsupported("the function '\(n)'", line: line) }
                throw .runtime("a \(f.typeName) value is not callable", line: line)
            }
            return try call(fn, args, kwargs)
        case .filter(let base, let name, let args, let kwargs):
            return try applyFilter(name, try eval(base), try args.map { x throws(TemplateError) in try eval(x) },
                                   try kwargs.map { k throws(TemplateError) in (k.0, try eval(k.1)) })
        case .test(let base, let name, let args, let negated):
            let result = try applyTest(name, try eval(base), try args.map { x throws(TemplateError) in try eval(x) })
            return .bool(result != negated)
        case .not(let x): return .bool(!(try eval(x).truthy))
        case .negate(let x):
            switch try eval(x) {
            case .int(let n): return .int(-n)
            case .double(let d): return .double(-d)
            case let v: throw .runtime("cannot negate a \(v.typeName) value", line: line)
            }
        case .and(let a, let b):
            let x = try eval(a)
            return x.truthy ? try eval(b) : x
        case .or(let a, let b):
            let x = try eval(a)
            return x.truthy ? x : try eval(b)
        case .conditional(let value, let condition, let otherwise):
            if try eval(condition).truthy { return try eval(value) }
            return try otherwise.map { x throws(TemplateError) in try eval(x) } ?? .undefined("else")
        case .binary(let op, let a, let b):
            return try binary(op, try eval(a), try eval(b))
        }
    }

    private func call(_ f: JinjaFunction, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws(TemplateError) -> JinjaValue {
        do { return try f.call(args, kwargs) } catch let e as TemplateError {
            if case .runtime(let m, 0) = e { throw .runtime(m, line: line) }
            throw e
        } catch {
            throw .runtime("\(f.name): \(error)", line: line)
        }
    }

    private func subscriptValue(_ base: JinjaValue, _ index: JinjaValue) throws(TemplateError) -> JinjaValue {
        switch (base, index) {
        case (.dict(let d), .string(let k)): return d[k] ?? .undefined(k)
        case (.namespace(let ns), .string(let k)): return ns.values[k] ?? .undefined(k)
        case (.list(let l), .int(let n)):
            let k = n < 0 ? l.count + n : n
            return l.indices.contains(k) ? l[k] : .undefined("[\(n)]")
        case (.string(let s), .int(let n)):
            let chars = Array(s)
            let k = n < 0 ? chars.count + n : n
            return chars.indices.contains(k) ? .string(String(chars[k])) : .undefined("[\(n)]")
        case (.undefined, _): return .undefined("item")
        default: return .undefined("item")
        }
    }

    private func slice(_ base: JinjaValue, _ a: JinjaValue?, _ b: JinjaValue?, _ c: JinjaValue?) throws(TemplateError) -> JinjaValue {
        func int(_ v: JinjaValue?) throws(TemplateError) -> Int? {
            guard let v, !(v == .none) else { return nil }
            guard case .int(let n) = v else { throw .runtime("slice bounds must be integers", line: line) }
            return n
        }
        let step = try int(c) ?? 1
        guard step != 0 else { throw .runtime("slice step cannot be zero", line: line) }
        func pick<T>(_ items: [T]) throws(TemplateError) -> [T] {
            let n = items.count
            func clamp(_ x: Int?, _ fallback: Int) -> Int {
                guard var x else { return fallback }
                if x < 0 { x += n }
                return step > 0 ? min(max(x, 0), n) : min(max(x, -1), n - 1)
            }
            var out: [T] = []
            if step > 0 {
                var k = clamp(try int(a), 0); let end = clamp(try int(b), n)
                while k < end { out.append(items[k]); k += step }
            } else {
                var k = clamp(try int(a), n - 1); let end = clamp(try int(b), -1)
                while k > end { out.append(items[k]); k += step }
            }
            return out
        }
        switch base {
        case .list(let l): return .list(try pick(l))
        case .string(let s): return .string(String(try pick(Array(s))))
        default: throw .runtime("a \(base.typeName) value cannot be sliced", line: line)
        }
    }

    func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws(TemplateError) -> JinjaValue {
        switch op {
        case "==": return .bool(a == b)
        case "!=": return .bool(a != b)
        case "<", ">", "<=", ">=":
            let order: Bool
            switch (a, b) {
            case (.string(let x), .string(let y)):
                let (xs, ys) = (Array(x.unicodeScalars.map(\.value)), Array(y.unicodeScalars.map(\.value)))
                order = op == "<" ? xs.lexicographicallyPrecedes(ys) : op == ">" ? ys.lexicographicallyPrecedes(xs)
                    : op == "<=" ? !ys.lexicographicallyPrecedes(xs) : !xs.lexicographicallyPrecedes(ys)
            default:
                guard let x = number(a), let y = number(b) else { throw .runtime("cannot compare \(a.typeName) with \(b.typeName) using '\(op)'", line: line) }
                order = op == "<" ? x < y : op == ">" ? x > y : op == "<=" ? x <= y : x >= y
            }
            return .bool(order)
        case "in", "not in":
            let found: Bool
            switch b {
            case .string(let s):
                guard case .string(let needle) = a else { throw .runtime("'in <string>' needs a string on the left, not \(a.typeName)", line: line) }
                found = needle.isEmpty || s.contains(needle)
            case .list(let l): found = l.contains(a)
            case .dict(let d):
                if case .string(let k) = a { found = d[k] != nil } else { found = false }
            case .undefined: found = false
            default: throw .runtime("'in' needs a string, list or dict on the right, not \(b.typeName)", line: line)
            }
            return .bool(found == (op == "in"))
        case "~": return .string(a.rendered + b.rendered)
        case "+":
            switch (a, b) {
            case (.string(let x), .string(let y)): return .string(x + y)
            case (.list(let x), .list(let y)): return .list(x + y)
            case (.int(let x), .int(let y)): return .int(x &+ y)
            default: break
            }
        case "-":
            if case .int(let x) = a, case .int(let y) = b { return .int(x &- y) }
        case "*":
            switch (a, b) {
            case (.int(let x), .int(let y)): return .int(x &* y)
            case (.string(let s), .int(let n)), (.int(let n), .string(let s)): return .string(String(repeating: s, count: max(n, 0)))
            default: break
            }
        case "//", "%":
            if case .int(let x) = a, case .int(let y) = b {
                guard y != 0 else { throw .runtime("integer division or modulo by zero", line: line) }
                let q = Int((Double(x) / Double(y)).rounded(.down))
                return .int(op == "//" ? q : x - q * y)
            }
        case "**":
            if case .int(let x) = a, case .int(let y) = b, y >= 0, y < 64 {
                var r = 1
                for _ in 0..<y { r = r &* x }
                return .int(r)
            }
        case "/": break
        default: throw .unsupported("the operator '\(op)'", line: line)
        }
        guard let x = number(a), let y = number(b) else {
            throw .runtime("unsupported operand types for \(op): \(a.typeName) and \(b.typeName)", line: line)
        }
        switch op {
        case "+": return .double(x + y)
        case "-": return .double(x - y)
        case "*": return .double(x * y)
        case "/":
            guard y != 0 else { throw .runtime("division by zero", line: line) }
            return .double(x / y)
        case "//": return .double((x / y).rounded(.down))
        case "%": return .double(x - (x / y).rounded(.down) * y)
        default: return .double(Foundation.pow(x, y))
        }
    }

    func number(_ v: JinjaValue) -> Double? {
        switch v {
        case .int(let n): return Double(n)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    var currentLine: Int { line }
}

/// The renderer a macro closure calls back into, without keeping it alive (the closure lives in its frames).
struct RendererReference: @unchecked Sendable {  // Macros run only inside the render that defined them, on its thread.
    unowned(unsafe) let value: Renderer
}
