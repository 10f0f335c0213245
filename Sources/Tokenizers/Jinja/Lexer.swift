/// One piece of a template's source: literal text, an output tag `{{ ... }}` or a statement tag `{% ... %}`.
enum Chunk: Equatable {
    case text(String)
    case output(String, line: Int)
    case statement(String, line: Int)
}

/// Cuts template source into chunks, applying `-` whitespace control and, as Hugging Face renders chat templates,
/// `trim_blocks` and `lstrip_blocks`; comments are dropped and `{% raw %}` bodies become text.
func chunks(_ source: String) throws(TemplateError) -> [Chunk] {
    var src = Array(source.unicodeScalars)
    if src.last == "\n" { src.removeLast() }  // keep_trailing_newline=False
    enum Kind { case output, statement, comment }
    struct Raw { var chunk: Chunk; var stripBefore: Bool; var stripAfter: Bool; var kind: Kind?; var noLstrip: Bool }
    var raws: [Raw] = []
    var i = 0, line = 1
    var text = String.UnicodeScalarView()
    func flushText() {
        if !text.isEmpty { raws.append(Raw(chunk: .text(String(text)), stripBefore: false, stripAfter: false, kind: nil, noLstrip: false)) }
        text = String.UnicodeScalarView()
    }
    func at(_ j: Int, _ s: String) -> Bool {
        var k = j
        for c in s.unicodeScalars { guard k < src.count, src[k] == c else { return false }; k += 1 }
        return true
    }
    while i < src.count {
        guard src[i] == "{", i + 1 < src.count, src[i + 1] == "{" || src[i + 1] == "%" || src[i + 1] == "#" else {
            if src[i] == "\n" { line += 1 }
            text.append(src[i]); i += 1; continue
        }
        flushText()
        let kind: Kind = src[i + 1] == "{" ? .output : src[i + 1] == "%" ? .statement : .comment
        let startLine = line
        var j = i + 2
        var stripBefore = false, noLstrip = false
        if j < src.count, src[j] == "-" { stripBefore = true; j += 1 } else if j < src.count, src[j] == "+" { noLstrip = true; j += 1 }
        let close: Unicode.Scalar = kind == .output ? "}" : kind == .statement ? "%" : "#"
        var inner = String.UnicodeScalarView()
        var quote: Unicode.Scalar? = nil
        var closed = false, stripAfter = false
        while j < src.count {
            let c = src[j]
            if c == "\n" { line += 1 }
            if let q = quote {
                inner.append(c)
                if c == "\\", j + 1 < src.count { inner.append(src[j + 1]); j += 2; continue }
                if c == q { quote = nil }
                j += 1; continue
            }
            if kind != .comment, c == "'" || c == "\"" { quote = c; inner.append(c); j += 1; continue }
            if c == "-", at(j + 1, String(close) + "}") { stripAfter = true; j += 3; closed = true; break }
            if c == "+", at(j + 1, String(close) + "}") { j += 3; closed = true; break }
            if c == close, at(j + 1, "}") { j += 2; closed = true; break }
            inner.append(c); j += 1
        }
        guard closed else {
            throw .syntax("'\(kind == .output ? "{{" : kind == .statement ? "{%" : "{#")' is never closed", line: startLine)
        }
        i = j
        let body = String(inner).trimmingSpaces
        switch kind {
        case .output:
            raws.append(Raw(chunk: .output(body, line: startLine), stripBefore: stripBefore, stripAfter: stripAfter, kind: .output, noLstrip: noLstrip))
        case .comment:
            raws.append(Raw(chunk: .text(""), stripBefore: stripBefore, stripAfter: stripAfter, kind: .comment, noLstrip: noLstrip))
        case .statement:
            if body == "raw" {
                // Everything up to {% endraw %} is text.
                var k = i
                var found: (start: Int, end: Int, stripBefore: Bool, stripAfter: Bool)? = nil
                while k < src.count {
                    if src[k] == "{", at(k + 1, "%") {
                        var m = k + 2
                        let sb = m < src.count && src[m] == "-"
                        if sb { m += 1 }
                        while m < src.count, src[m] == " " { m += 1 }
                        if at(m, "endraw") {
                            m += 6
                            while m < src.count, src[m] == " " { m += 1 }
                            let sa = at(m, "-%}")
                            if sa || at(m, "%}") { found = (k, m + (sa ? 3 : 2), sb, sa); break }
                        }
                    }
                    k += 1
                }
                guard let f = found else { throw .syntax("'{% raw %}' without '{% endraw %}'", line: startLine) }
                raws.append(Raw(chunk: .text(""), stripBefore: stripBefore, stripAfter: stripAfter, kind: .statement, noLstrip: noLstrip))
                var rawText = String(String.UnicodeScalarView(src[i..<f.start]))
                if f.stripBefore { rawText = rawText.trimmingTrailingWhitespace }
                raws.append(Raw(chunk: .text(rawText), stripBefore: false, stripAfter: false, kind: nil, noLstrip: false))
                raws.append(Raw(chunk: .text(""), stripBefore: false, stripAfter: f.stripAfter, kind: .statement, noLstrip: false))
                for s in src[i..<f.end] where s == "\n" { line += 1 }
                i = f.end
            } else {
                raws.append(Raw(chunk: .statement(body, line: startLine), stripBefore: stripBefore, stripAfter: stripAfter, kind: .statement, noLstrip: noLstrip))
            }
        }
    }
    flushText()

    // Whitespace control on the neighbouring text.
    for k in raws.indices {
        guard let kind = raws[k].kind else { continue }
        let isBlock = kind != .output
        if k > 0, case .text(let before) = raws[k - 1].chunk, raws[k - 1].kind == nil {
            if raws[k].stripBefore {
                raws[k - 1].chunk = .text(before.trimmingTrailingWhitespace)
            } else if isBlock, !raws[k].noLstrip {
                // lstrip_blocks: spaces and tabs between the line start and the tag go.
                let scalars = Array(before.unicodeScalars)
                var m = scalars.count
                while m > 0, scalars[m - 1] == " " || scalars[m - 1] == "\t" { m -= 1 }
                if m < scalars.count, m > 0 ? scalars[m - 1] == "\n" : k - 1 == 0 {
                    raws[k - 1].chunk = .text(String(String.UnicodeScalarView(scalars[0..<m])))
                }
            }
        } else if k == 0 || raws[k - 1].kind != nil, isBlock {
            // A tag right after another tag: nothing to strip.
        }
        if k + 1 < raws.count, case .text(let after) = raws[k + 1].chunk, raws[k + 1].kind == nil {
            if raws[k].stripAfter {
                raws[k + 1].chunk = .text(after.trimmingLeadingWhitespace)
            } else if isBlock {
                // trim_blocks: the first newline after a block tag goes.
                if after.hasPrefix("\r\n") { raws[k + 1].chunk = .text(String(after.unicodeScalars.dropFirst(2))) }
                else if after.unicodeScalars.first == "\n" { raws[k + 1].chunk = .text(String(after.unicodeScalars.dropFirst())) }
            }
        }
    }
    return raws.compactMap { r in
        if case .text(let t) = r.chunk, t.isEmpty { return nil }
        return r.chunk
    }
}

extension String {
    var trimmingSpaces: String { trimmingLeadingWhitespace.trimmingTrailingWhitespace }
    var trimmingLeadingWhitespace: String {
        String(String.UnicodeScalarView(unicodeScalars.drop { $0.properties.isWhitespace }))
    }
    var trimmingTrailingWhitespace: String {
        var s = unicodeScalars[...]
        while let l = s.last, l.properties.isWhitespace { s = s.dropLast() }
        return String(String.UnicodeScalarView(s))
    }
}

/// A token of the expression language inside tags.
enum Token: Equatable {
    case name(String)
    case string(String)
    case int(Int)
    case double(Double)
    case op(String)
    case end
}

/// The tokens of one tag's inside.
func tokenize(_ source: String, line: Int) throws(TemplateError) -> [Token] {
    let s = Array(source.unicodeScalars)
    var out: [Token] = []
    var i = 0
    let twoChar: Set<String> = ["==", "!=", "<=", ">=", "//", "**"]
    while i < s.count {
        let c = s[i]
        if c.properties.isWhitespace { i += 1; continue }
        if c == "_" || c.properties.isAlphabetic {
            var j = i
            while j < s.count, s[j] == "_" || s[j].properties.isAlphabetic || ("0"..."9").contains(s[j]) { j += 1 }
            out.append(.name(String(String.UnicodeScalarView(s[i..<j])))); i = j; continue
        }
        if ("0"..."9").contains(c) {
            var j = i
            while j < s.count, ("0"..."9").contains(s[j]) || s[j] == "_" { j += 1 }
            var isDouble = false
            if j + 1 < s.count, s[j] == ".", ("0"..."9").contains(s[j + 1]) {
                isDouble = true; j += 1
                while j < s.count, ("0"..."9").contains(s[j]) { j += 1 }
            }
            if j < s.count, s[j] == "e" || s[j] == "E" {
                var k = j + 1
                if k < s.count, s[k] == "+" || s[k] == "-" { k += 1 }
                if k < s.count, ("0"..."9").contains(s[k]) {
                    isDouble = true; j = k
                    while j < s.count, ("0"..."9").contains(s[j]) { j += 1 }
                }
            }
            let text = String(String.UnicodeScalarView(s[i..<j])).replacingUnderscores
            if isDouble { out.append(.double(Double(text) ?? 0)) } else {
                guard let n = Int(text) else { throw .syntax("number \(text) is too large", line: line) }
                out.append(.int(n))
            }
            i = j; continue
        }
        if c == "'" || c == "\"" {
            var j = i + 1
            var value = String.UnicodeScalarView()
            var closed = false
            while j < s.count {
                if s[j] == c { closed = true; j += 1; break }
                if s[j] == "\\", j + 1 < s.count {
                    let e = s[j + 1]
                    switch e {
                    case "n": value.append("\n")
                    case "t": value.append("\t")
                    case "r": value.append("\r")
                    case "\\", "'", "\"": value.append(e)
                    default: value.append("\\"); value.append(e)
                    }
                    j += 2; continue
                }
                value.append(s[j]); j += 1
            }
            guard closed else { throw .syntax("a string is never closed", line: line) }
            out.append(.string(String(value))); i = j; continue
        }
        if i + 1 < s.count {
            let pair = String(String.UnicodeScalarView([c, s[i + 1]]))
            if twoChar.contains(pair) { out.append(.op(pair)); i += 2; continue }
        }
        if "+-*/%~<>=()[]{},.:|".unicodeScalars.contains(c) { out.append(.op(String(c))); i += 1; continue }
        throw .syntax("unexpected character '\(c)'", line: line)
    }
    out.append(.end)
    return out
}

private extension String {
    var replacingUnderscores: String { String(unicodeScalars.filter { $0 != "_" }.map(Character.init)) }
}
