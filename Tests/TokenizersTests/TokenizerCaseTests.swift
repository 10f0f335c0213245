import Foundation
import Testing
@testable import Tokenizers
import OrderedCollections

/// The tokenizer fixtures (copies of `../shared/fixtures/tokenizers`, computed by the Python `tokenizers` library).
enum TokenizerFixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/tokenizers")
    static let names = ["mixtral", "mixtral-metaspace", "qwen2"]

    static func path(_ name: String) -> String { root.appendingPathComponent(name).path }

    nonisolated(unsafe) static var loaded: [String: Tokenizer] = [:]
    static let lock = NSLock()

    /// Each tokenizer is read once for the whole test run.
    static func tokenizer(_ name: String) throws -> Tokenizer {
        lock.lock(); defer { lock.unlock() }
        if let t = loaded[name] { return t }
        let t = try Tokenizer(directory: path(name))
        loaded[name] = t
        return t
    }

    /// The JSON lines of `name/file`.
    /// (Through `JSONValue`: `JSONSerialization` on Linux drops a leading U+FEFF from strings.)
    static func lines(_ name: String, _ file: String) throws -> [OrderedDictionary<String, JSONValue>] {
        let text = try String(contentsOfFile: root.appendingPathComponent(name).appendingPathComponent(file).path, encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            try #require(try JSONValue.parse(Data(line.utf8)).object)
        }
    }
}

func intList(_ v: JSONValue?) -> [Int] { v?.array?.compactMap(\.int) ?? [] }
func stringList(_ v: JSONValue?) -> [String] { v?.array?.compactMap(\.string) ?? [] }

@Suite struct TokenizerCaseTests {
    @Test(arguments: TokenizerFixtures.names)
    func everyCaseEncodesAndDecodesAsTokenizersDoes(name: String) throws {
        let tokenizer = try TokenizerFixtures.tokenizer(name)
        let cases = try TokenizerFixtures.lines(name, "cases.jsonl")
        #expect(cases.count == 42)
        for c in cases {
            let label = c["name"]!.string!
            let text = c["text"]!.string!
            let ids = intList(c["ids"])
            #expect(try tokenizer.encode(text) == ids, "\(name) \(label): ids")
            #expect(try tokenizer.encode(text, addSpecialTokens: false) == intList(c["ids_no_special"]), "\(name) \(label): ids_no_special")
            #expect(try tokenizer.decode(ids) == c["decoded"]!.string!, "\(name) \(label): decoded")
            #expect(try tokenizer.tokens(ids) == stringList(c["tokens"]), "\(name) \(label): tokens")
        }
    }

    @Test(arguments: TokenizerFixtures.names)
    func streamingEmitsWhatTokenizersEmits(name: String) throws {
        let tokenizer = try TokenizerFixtures.tokenizer(name)
        for c in try TokenizerFixtures.lines(name, "streaming.jsonl") {
            var stream = StreamingDetokenizer(tokenizer: tokenizer)
            let increments = try intList(c["ids"]).map { try stream.push($0) }
            #expect(increments == stringList(c["increments"]), "\(name) \(c["name"]!)")
            #expect(try stream.finish() == c["flush"]!.string!)
        }
    }
}

/// 300 random mixed-script strings per tokenizer (`Scripts/make_tokenizer_cases.py`, computed by `tokenizers`).
@Suite struct TokenizerRandomTextTests {
    @Test(arguments: TokenizerFixtures.names)
    func randomTextsEncodeAndDecodeAsTokenizersDoes(name: String) throws {
        let tokenizer = try TokenizerFixtures.tokenizer(name)
        var failures = 0
        for c in try TokenizerFixtures.lines(name, "extra.jsonl") {
            let text = c["text"]!.string!
            let ids = intList(c["ids"])
            let ok = try tokenizer.encode(text) == ids
                && tokenizer.encode(text, addSpecialTokens: false) == intList(c["ids_no_special"])
                && tokenizer.decode(ids) == c["decoded"]!.string!
                && tokenizer.decode(ids, skipSpecialTokens: false) == c["decoded_with_special"]!.string!
            if !ok {
                failures += 1
                Issue.record("\(name) \(c["name"]!.string!): \(text.debugDescription) -> \(try tokenizer.encode(text)) want \(ids)")
            }
            if failures > 5 { break }
        }
    }

    /// The windowed streaming detokenizer emits what decoding every whole prefix would (the rule in the fixtures'
    /// README), on texts with byte-fallback and split UTF-8 characters.
    @Test(arguments: TokenizerFixtures.names)
    func streamingEqualsTheWholePrefixRule(name: String) throws {
        let tokenizer = try TokenizerFixtures.tokenizer(name)
        for c in try TokenizerFixtures.lines(name, "extra.jsonl").prefix(120) {
            let ids = intList(c["ids_no_special"])
            var stream = StreamingDetokenizer(tokenizer: tokenizer)
            var emitted = "", expected = ""
            for k in ids.indices {
                emitted += try stream.push(ids[k])
                let prefix = try tokenizer.decode(ids[0...k])
                if prefix.unicodeScalars.last != "\u{FFFD}" { expected = prefix }
                #expect(emitted.unicodeScalars.elementsEqual(expected.unicodeScalars), "\(name) \(c["name"]!.string!) after \(k + 1) ids")
            }
            emitted += try stream.finish()
            #expect(emitted.unicodeScalars.elementsEqual(try tokenizer.decode(ids).unicodeScalars))
        }
    }
}
