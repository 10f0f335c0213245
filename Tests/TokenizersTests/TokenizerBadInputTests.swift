import Foundation
import Testing
@testable import Tokenizers

/// Bad templates and tokenizer files: one clear error naming the construct or field, never a trap.
@Suite struct TokenizerBadInputTests {
    @Test(arguments: [
        ("{% include 'x.jinja' %}", "the statement '{% include %}'"),
        ("{{ x | frobnicate }}", "the filter 'frobnicate'"),
        ("{{ x is prime }}", "the test 'prime'"),
        ("{{ lipsum(3) }}", "the function 'lipsum'"),
        ("{{ 'a'.zfill(3) }}", "the method 'zfill' of a string value"),
        ("{% for x in xs recursive %}{% endfor %}", "'{% for ... recursive %}'"),
    ])
    func unsupportedConstructsAreNamed(source: String, construct: String) throws {
        let error = #expect(throws: TemplateError.self) {
            let t = try ChatTemplate(source)
            _ = try t.render(messages: [], addGenerationPrompt: false, extra: ["xs": .array([])])
        }
        guard case .unsupported(let what, let line)? = error else { Issue.record("not an unsupported-construct error: \(String(describing: error))"); return }
        #expect(what == construct)
        #expect(line == 1)
        #expect(error!.description.contains("is not supported by this Jinja subset"))
    }

    @Test(arguments: [
        ("{% if x %}never closed", "'{% if %}' is never closed with '{% endif %}'", 1),
        ("line\n{{ 1 + }}", "unexpected end of tag", 2),
        ("{{ 'open", "'{{' is never closed", 1),
        ("{% endfor %}", "'{% endfor %}' without its opening statement", 1),
        ("a\nb\n{% for x in %}{% endfor %}", "unexpected end of tag", 3),
    ])
    func syntaxErrorsNameTheLine(source: String, message: String, line: Int) {
        #expect(throws: TemplateError.syntax(message, line: line)) { try ChatTemplate(source) }
    }

    @Test func typeErrorsAreRuntimeErrorsWithTheLine() throws {
        let t = try ChatTemplate("ok\n{{ 'a' + 1 }}")
        #expect(throws: TemplateError.runtime("unsupported operand types for +: string and int", line: 2)) {
            try t.render(messages: [], addGenerationPrompt: false)
        }
    }

    @Test func unknownIdsAreRefused() throws {
        let t = try TokenizerFixtures.tokenizer("qwen2")
        #expect(throws: TokenizerError.unknownId(999_999, vocabularySize: 151_646)) { try t.decode([1, 999_999]) }
        #expect(throws: TokenizerError.unknownId(-1, vocabularySize: 151_646)) { try t.tokens([-1]) }
    }

    static let minimal = #"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}"#

    @Test func aMinimalFileWorksAndBadOnesAreNamed() throws {
        let ok = try Tokenizer(json: Data(Self.minimal.utf8), path: "t.json")
        #expect(try ok.encode("abab") == [2, 2])
        #expect(throws: EncodeError.self) { try ok.encode("abc") }  // no 'c', no byte fallback, no unk

        let bad: [(String, String)] = [
            (#"{"model": {"type": "Unigram", "vocab": []}}"#, "tokenizer model of type 'Unigram' is not supported"),
            (#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a z"]}}"#, "t.json: 'model.merges[0]' 'a z' names a token outside the vocabulary"),
            (#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "Precompiled"}}"#, "tokenizer normalizer of type 'Precompiled' is not supported"),
            (#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "("}, "behavior": "Isolated"}}"#, "t.json: 'pre_tokenizer.pattern.Regex' is not a regular expression"),
            (#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "decoder": {"type": "CTC"}}"#, "tokenizer decoder of type 'CTC' is not supported"),
            (#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [3]}}"#, "cannot read t.json: at model.merges[0]"),
            (#"{"model": {"type": "BPE"}"#, "cannot read t.json"),
            (#"{"nothing": 1}"#, "cannot read t.json: missing key 'model'"),
        ]
        for (json, message) in bad {
            let error = #expect(throws: TokenizerError.self, "\(json)") { try Tokenizer(json: Data(json.utf8), path: "t.json") }
            #expect(error.map { "\($0)".contains(message) } == true, "\(String(describing: error)) should contain \(message)")
        }
    }

    @Test func missingFoldersAndFilesAreNamed() throws {
        #expect(throws: TokenizerError.unreadable(path: "/nonexistent/tokenizer.json", reason: "no such folder")) {
            try Tokenizer(directory: "/nonexistent")
        }
    }

    @Test func jsonReaderRefusesBadDocumentsAndDeepNesting() throws {
        for bad in ["{", "[1,]", "{\"a\" 1}", "01", "\"\\x\"", "nul", "[1] 2", "\"a\u{01}\""] {
            #expect(throws: JSONParseError.self, "\(bad)") { try JSONValue.parse(Data(bad.utf8)) }
        }
        let deep = String(repeating: "[", count: 300) + String(repeating: "]", count: 300)
        #expect(throws: JSONParseError(message: "nested deeper than 256 levels", offset: 256)) { try JSONValue.parse(Data(deep.utf8)) }
        #expect(try JSONValue.parse(Data(#"{"z": 1, "a": [true, null, -2.5e1, "\ud83d\ude00\u00e9"]}"#.utf8))
            == .object(["z": .number(1), "a": .array([.bool(true), .null, .number(-25), .string("😀é")])]))
        #expect(try JSONValue.parse(Data(#"{"z": 1, "a": 2}"#.utf8)).object?.keys.elementsEqual(["z", "a"]) == true)
    }
}
