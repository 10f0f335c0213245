/// An expression of the template language.
indirect enum Expr: Sendable {
    case literal(JinjaValue)
    case name(String)
    case list([Expr])
    case tuple([Expr])
    case dict([(Expr, Expr)])
    case attribute(Expr, String)
    case item(Expr, Expr)
    case slice(Expr, Expr?, Expr?, Expr?)
    case call(Expr, [Expr], [(String, Expr)])
    case filter(Expr, String, [Expr], [(String, Expr)])
    case test(Expr, String, [Expr], negated: Bool)
    case not(Expr)
    case negate(Expr)
    case binary(String, Expr, Expr)
    case and(Expr, Expr)
    case or(Expr, Expr)
    case conditional(Expr, condition: Expr, otherwise: Expr?)
}

/// Where `{% set %}` stores its value.
enum SetTarget: Sendable {
    case names([String])
    case attribute(String, String)
}

/// A statement or piece of output of a parsed template.
indirect enum Node: Sendable {
    case text(String)
    case output(Expr, line: Int)
    case ifBlock([(Expr, [Node])], otherwise: [Node], line: Int)
    case forBlock(targets: [String], iterable: Expr, condition: Expr?, body: [Node], otherwise: [Node], line: Int)
    case set(SetTarget, Expr, line: Int)
    case setBlock(String, [Node], line: Int)
    case macro(String, parameters: [(String, Expr?)], body: [Node], line: Int)
    case breakLoop(line: Int)
    case continueLoop(line: Int)
    case filterBlock(String, [Expr], [(String, Expr)], body: [Node], line: Int)
}

/// Builds the node tree of a template from its chunks.
struct TemplateParser {
    let chunks: [Chunk]
    var position = 0

    init(source: String) throws(TemplateError) { chunks = try Tokenizers.chunks(source) }

    /// The whole template.
    mutating func parse() throws(TemplateError) -> [Node] {
        let (nodes, end) = try parseBody(until: [])
        if let (keyword, line) = end { throw .syntax("unexpected '{% \(keyword) %}'", line: line) }
        return nodes
    }

    /// Nodes up to a statement whose keyword is in `ends` (returned with its tokens' reader), or the end.
    private mutating func parseBody(until ends: Set<String>) throws(TemplateError) -> ([Node], (String, Int)?) {
        var nodes: [Node] = []
        while position < chunks.count {
            let chunk = chunks[position]
            position += 1
            switch chunk {
            case .text(let t): nodes.append(.text(t))
            case .output(let source, let line):
                var r = ExpressionReader(try tokenize(source, line: line), line: line)
                let e = try r.expression()
                try r.expectEnd()
                nodes.append(.output(e, line: line))
            case .statement(let source, let line):
                var r = ExpressionReader(try tokenize(source, line: line), line: line)
                guard case .name(let keyword) = r.peek else { throw .syntax("a statement must start with a keyword", line: line) }
                if ends.contains(keyword) {
                    position -= 1
                    return (nodes, (keyword, line))
                }
                r.advance()
                nodes.append(try statement(keyword, &r, line: line))
            }
        }
        return (nodes, nil)
    }

    /// Reads the statement chunk that ended a body again, for its tokens.
    private mutating func takeEnd(_ line: Int) throws(TemplateError) -> ExpressionReader {
        guard case .statement(let source, let l) = chunks[position] else { throw .syntax("internal: expected a statement", line: line) }
        position += 1
        var r = ExpressionReader(try tokenize(source, line: l), line: l)
        r.advance()
        return r
    }

    private mutating func statement(_ keyword: String, _ r: inout ExpressionReader, line: Int) throws(TemplateError) -> Node {
        switch keyword {
        case "if":
            var branches: [(Expr, [Node])] = []
            var condition = try r.expression()
            try r.expectEnd()
            var otherwise: [Node] = []
            while true {
                let (body, end) = try parseBody(until: ["elif", "else", "endif"])
                guard let (k, l) = end else { throw .syntax("'{% if %}' is never closed with '{% endif %}'", line: line) }
                var e = try takeEnd(l)
                branches.append((condition, body))
                if k == "elif" { condition = try e.expression(); try e.expectEnd(); continue }
                if k == "else" {
                    try e.expectEnd()
                    let (rest, end2) = try parseBody(until: ["endif"])
                    guard let (_, l2) = end2 else { throw .syntax("'{% if %}' is never closed with '{% endif %}'", line: line) }
                    var e2 = try takeEnd(l2); try e2.expectEnd()
                    otherwise = rest
                } else {
                    try e.expectEnd()
                }
                break
            }
            return .ifBlock(branches, otherwise: otherwise, line: line)
        case "for":
            var targets = [try r.name()]
            while r.take(.op(",")) { targets.append(try r.name()) }
            guard r.take(.name("in")) else { throw .syntax("expected 'in' in '{% for %}'", line: line) }
            let iterable = try r.expression(allowConditional: false)
            var condition: Expr? = nil
            if r.take(.name("if")) { condition = try r.expression(allowConditional: false) }
            if r.take(.name("recursive")) { throw .unsupported("'{% for ... recursive %}'", line: line) }
            try r.expectEnd()
            let (body, end) = try parseBody(until: ["else", "endfor"])
            guard let (k, l) = end else { throw .syntax("'{% for %}' is never closed with '{% endfor %}'", line: line) }
            var e = try takeEnd(l); try e.expectEnd()
            var otherwise: [Node] = []
            if k == "else" {
                let (rest, end2) = try parseBody(until: ["endfor"])
                guard let (_, l2) = end2 else { throw .syntax("'{% for %}' is never closed with '{% endfor %}'", line: line) }
                var e2 = try takeEnd(l2); try e2.expectEnd()
                otherwise = rest
            }
            return .forBlock(targets: targets, iterable: iterable, condition: condition, body: body, otherwise: otherwise, line: line)
        case "set":
            let first = try r.name()
            if r.take(.op(".")) {
                let attr = try r.name()
                guard r.take(.op("=")) else { throw .syntax("expected '=' in '{% set %}'", line: line) }
                let value = try r.expression()
                try r.expectEnd()
                return .set(.attribute(first, attr), value, line: line)
            }
            var names = [first]
            while r.take(.op(",")) { names.append(try r.name()) }
            if r.atEnd, names.count == 1 {
                let (body, end) = try parseBody(until: ["endset"])
                guard let (_, l) = end else { throw .syntax("'{% set \(first) %}' is never closed with '{% endset %}'", line: line) }
                var e = try takeEnd(l); try e.expectEnd()
                return .setBlock(first, body, line: line)
            }
            guard r.take(.op("=")) else { throw .syntax("expected '=' in '{% set %}'", line: line) }
            let value = try r.expression()
            try r.expectEnd()
            return .set(.names(names), value, line: line)
        case "macro":
            let name = try r.name()
            var parameters: [(String, Expr?)] = []
            guard r.take(.op("(")) else { throw .syntax("expected '(' after the macro's name", line: line) }
            while !r.take(.op(")")) {
                let p = try r.name()
                var value: Expr? = nil
                if r.take(.op("=")) { value = try r.expression() }
                parameters.append((p, value))
                if !r.take(.op(",")) { guard r.take(.op(")")) else { throw .syntax("expected ',' or ')' in the macro's parameters", line: line) }; break }
            }
            try r.expectEnd()
            let (body, end) = try parseBody(until: ["endmacro"])
            guard let (_, l) = end else { throw .syntax("'{% macro %}' is never closed with '{% endmacro %}'", line: line) }
            var e = try takeEnd(l)
            _ = e.take(.name(name))
            try e.expectEnd()
            return .macro(name, parameters: parameters, body: body, line: line)
        case "break": try r.expectEnd(); return .breakLoop(line: line)
        case "continue": try r.expectEnd(); return .continueLoop(line: line)
        case "filter":
            let name = try r.name()
            var (args, kwargs): ([Expr], [(String, Expr)]) = ([], [])
            if r.take(.op("(")) { (args, kwargs) = try r.arguments() }
            try r.expectEnd()
            let (body, end) = try parseBody(until: ["endfilter"])
            guard let (_, l) = end else { throw .syntax("'{% filter %}' is never closed with '{% endfilter %}'", line: line) }
            var e = try takeEnd(l); try e.expectEnd()
            return .filterBlock(name, args, kwargs, body: body, line: line)
        case "generation":
            // transformers' AssistantTracker marks assistant text; rendering the body is all it does for a prompt.
            try r.expectEnd()
            let (body, end) = try parseBody(until: ["endgeneration"])
            guard let (_, l) = end else { throw .syntax("'{% generation %}' is never closed with '{% endgeneration %}'", line: line) }
            var e = try takeEnd(l); try e.expectEnd()
            return .ifBlock([(.literal(.bool(true)), body)], otherwise: [], line: line)
        case "elif", "else", "endif", "endfor", "endset", "endmacro", "endfilter", "endgeneration":
            throw .syntax("'{% \(keyword) %}' without its opening statement", line: line)
        default:
            throw .unsupported("the statement '{% \(keyword) %}'", line: line)
        }
    }
}

/// Reads one tag's tokens as expressions, with Jinja's precedence.
struct ExpressionReader {
    let tokens: [Token]
    let line: Int
    var i = 0

    init(_ tokens: [Token], line: Int) { self.tokens = tokens; self.line = line }

    var peek: Token { tokens[i] }
    var atEnd: Bool { tokens[i] == .end }
    mutating func advance() { if i < tokens.count - 1 { i += 1 } }
    mutating func take(_ t: Token) -> Bool { if tokens[i] == t { advance(); return true }; return false }

    mutating func expectEnd() throws(TemplateError) {
        guard atEnd else { throw .syntax("unexpected \(describe(peek))", line: line) }
    }

    mutating func expect(_ t: Token) throws(TemplateError) {
        guard take(t) else { throw .syntax("expected \(describe(t)), found \(describe(peek))", line: line) }
    }

    mutating func name() throws(TemplateError) -> String {
        guard case .name(let n) = peek else { throw .syntax("expected a name, found \(describe(peek))", line: line) }
        advance()
        return n
    }

    func describe(_ t: Token) -> String {
        switch t {
        case .name(let n): return "'\(n)'"
        case .string(let s): return "string '\(s)'"
        case .int(let n): return "\(n)"
        case .double(let d): return "\(d)"
        case .op(let o): return "'\(o)'"
        case .end: return "end of tag"
        }
    }

    /// A full expression: `a if cond else b`, or a lower-precedence expression when conditionals are not allowed
    /// (a `for` loop's iterable, where `if` starts the loop filter).
    mutating func expression(allowConditional: Bool = true) throws(TemplateError) -> Expr {
        let value = try or()
        guard allowConditional, take(.name("if")) else { return value }
        let condition = try or()
        var otherwise: Expr? = nil
        if take(.name("else")) { otherwise = try expression() }
        return .conditional(value, condition: condition, otherwise: otherwise)
    }

    mutating func or() throws(TemplateError) -> Expr {
        var e = try and()
        while take(.name("or")) { e = .or(e, try and()) }
        return e
    }

    mutating func and() throws(TemplateError) -> Expr {
        var e = try not()
        while take(.name("and")) { e = .and(e, try not()) }
        return e
    }

    mutating func not() throws(TemplateError) -> Expr {
        if take(.name("not")) { return .not(try not()) }
        return try compare()
    }

    mutating func compare() throws(TemplateError) -> Expr {
        let first = try math1()
        var operands = [first]
        var ops: [String] = []
        while true {
            if case .op(let o) = peek, ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                advance(); ops.append(o)
            } else if take(.name("in")) {
                ops.append("in")
            } else if peek == .name("not"), tokens[i + 1] == .name("in") {
                advance(); advance(); ops.append("not in")
            } else {
                break
            }
            operands.append(try math1())
        }
        guard !ops.isEmpty else { return first }
        // a < b < c is (a < b) and (b < c).
        var e: Expr = .binary(ops[0], operands[0], operands[1])
        for k in 1..<ops.count { e = .and(e, .binary(ops[k], operands[k], operands[k + 1])) }
        return e
    }

    mutating func math1() throws(TemplateError) -> Expr {
        var e = try concat()
        while case .op(let o) = peek, o == "+" || o == "-" { advance(); e = .binary(o, e, try concat()) }
        return e
    }

    mutating func concat() throws(TemplateError) -> Expr {
        var e = try math2()
        while take(.op("~")) { e = .binary("~", e, try math2()) }
        return e
    }

    mutating func math2() throws(TemplateError) -> Expr {
        var e = try pow()
        while case .op(let o) = peek, ["*", "/", "//", "%"].contains(o) { advance(); e = .binary(o, e, try pow()) }
        return e
    }

    mutating func pow() throws(TemplateError) -> Expr {
        var e = try unary()
        while take(.op("**")) { e = .binary("**", e, try unary()) }
        return e
    }

    mutating func unary(withFilters: Bool = true) throws(TemplateError) -> Expr {
        var e: Expr
        if take(.op("-")) { e = .negate(try unary(withFilters: false)) }
        else if take(.op("+")) { e = try unary(withFilters: false) }
        else { e = try primary() }
        e = try postfix(e)
        if withFilters { e = try filters(e) }
        return e
    }

    mutating func primary() throws(TemplateError) -> Expr {
        let t = peek
        advance()
        switch t {
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .string(let s):
            var text = s
            while case .string(let more) = peek { text += more; advance() }
            return .literal(.string(text))
        case .int(let n): return .literal(.int(n))
        case .double(let d): return .literal(.double(d))
        case .op("("):
            if take(.op(")")) { return .tuple([]) }
            let first = try expression()
            if take(.op(")")) { return first }
            var items = [first]
            while take(.op(",")) {
                if peek == .op(")") { break }
                items.append(try expression())
            }
            try expect(.op(")"))
            return .tuple(items)
        case .op("["):
            var items: [Expr] = []
            while !take(.op("]")) {
                items.append(try expression())
                if !take(.op(",")) { try expect(.op("]")); break }
            }
            return .list(items)
        case .op("{"):
            var pairs: [(Expr, Expr)] = []
            while !take(.op("}")) {
                let k = try expression()
                try expect(.op(":"))
                pairs.append((k, try expression()))
                if !take(.op(",")) { try expect(.op("}")); break }
            }
            return .dict(pairs)
        default:
            throw .syntax("unexpected \(describe(t))", line: line)
        }
    }

    mutating func postfix(_ base: Expr) throws(TemplateError) -> Expr {
        var e = base
        while true {
            if take(.op(".")) {
                if case .int(let n) = peek { advance(); e = .item(e, .literal(.int(n))); continue }
                e = .attribute(e, try name())
            } else if take(.op("[")) {
                var parts: [Expr?] = [nil]
                var isSlice = false
                while !take(.op("]")) {
                    if take(.op(":")) { isSlice = true; parts.append(nil); continue }
                    parts[parts.count - 1] = try expression()
                }
                if isSlice {
                    while parts.count < 3 { parts.append(nil) }
                    e = .slice(e, parts[0], parts[1], parts[2])
                } else {
                    guard let index = parts[0] else { throw .syntax("empty subscript", line: line) }
                    e = .item(e, index)
                }
            } else if take(.op("(")) {
                let (args, kwargs) = try arguments()
                e = .call(e, args, kwargs)
            } else {
                return e
            }
        }
    }

    /// Call arguments after '(' up to and including ')'.
    mutating func arguments() throws(TemplateError) -> ([Expr], [(String, Expr)]) {
        var args: [Expr] = [], kwargs: [(String, Expr)] = []
        while !take(.op(")")) {
            if case .name(let n) = peek, tokens[i + 1] == .op("=") {
                advance(); advance()
                kwargs.append((n, try expression()))
            } else {
                guard kwargs.isEmpty else { throw .syntax("a positional argument after a keyword argument", line: line) }
                args.append(try expression())
            }
            if !take(.op(",")) { try expect(.op(")")); break }
        }
        return (args, kwargs)
    }

    mutating func filters(_ base: Expr) throws(TemplateError) -> Expr {
        var e = base
        while true {
            if take(.op("|")) {
                let n = try name()
                var (args, kwargs): ([Expr], [(String, Expr)]) = ([], [])
                if take(.op("(")) { (args, kwargs) = try arguments() }
                e = .filter(e, n, args, kwargs)
            } else if take(.name("is")) {
                let negated = take(.name("not"))
                let n = try name()
                var args: [Expr] = []
                if take(.op("(")) {
                    args = try arguments().0
                } else if startsArgument(peek) {
                    args = [try primary()]
                }
                e = .test(e, n, args, negated: negated)
            } else {
                return e
            }
        }
    }

    /// Whether a test written without parentheses takes `t` as its argument (`x is divisibleby 3`).
    func startsArgument(_ t: Token) -> Bool {
        switch t {
        case .string, .int, .double: return true
        case .name(let n): return !["and", "or", "else", "if", "in", "is", "not"].contains(n)
        default: return false
        }
    }
}
