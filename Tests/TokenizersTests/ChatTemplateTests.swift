import Foundation
import Testing
@testable import Tokenizers

@Suite struct ChatTemplateTests {
    @Test(arguments: TokenizerFixtures.names)
    func fixtureConversationsRenderAsTransformersDoes(name: String) throws {
        let tokenizer = try TokenizerFixtures.tokenizer(name)
        let template = try ChatTemplate(try #require(tokenizer.config.chatTemplate))
        let cases = try TokenizerFixtures.lines(name, "chat.jsonl")
        #expect(cases.count == 6)
        for c in cases {
            let label = c["name"]!.string!
            let messages = try #require(c["messages"]?.array)
            let generation = c["add_generation_prompt"]?.bool ?? false
            if let error = c["error"]?.string {
                #expect(throws: TemplateError.raised(error), "\(name) \(label)") {
                    try template.render(messages: messages, addGenerationPrompt: generation, specialTokens: tokenizer.config)
                }
                continue
            }
            let prompt = try template.render(messages: messages, addGenerationPrompt: generation, specialTokens: tokenizer.config)
            #expect(prompt == c["prompt"]!.string!, "\(name) \(label): prompt")
            let ids = try tokenizer.encode(prompt, addSpecialTokens: false)
            #expect(ids == intList(c["ids"]), "\(name) \(label): ids")
            #expect(try tokenizer.tokens(ids) == stringList(c["tokens"]), "\(name) \(label): tokens")
        }
    }
}

/// Templates of every supported construct and six chat templates in the styles real checkpoints use, rendered by
/// Python's jinja2 as transformers sets it up (`Scripts/make_template_cases.py`).
@Suite struct JinjaSubsetTests {
    static let cases: [[String: JSONValue]] = {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/templates/cases.jsonl").path
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONValue.parse(Data($0.utf8)).object.map { Dictionary(uniqueKeysWithValues: $0.map { ($0.key, $0.value) }) } }
    }()

    @Test func thereAreCases() { #expect(Self.cases.count == 50) }

    @Test(arguments: cases.map { $0["name"]!.string! })
    func rendersAsJinja2Does(name: String) throws {
        let c = try #require(Self.cases.first { $0["name"]?.string == name })
        let template = try ChatTemplate(c["template"]!.string!)
        let context = try #require(c["context"]?.object)
        var extra: [String: JSONValue] = [:]
        for (k, v) in context where k != "messages" && k != "add_generation_prompt" { extra[k] = v }
        let run = { () throws(TemplateError) -> String in
            try template.render(messages: context["messages"]?.array ?? [], addGenerationPrompt: context["add_generation_prompt"]?.bool ?? false,
                                extra: extra)
        }
        if let error = c["error"]?.string {
            #expect(throws: TemplateError.raised(error)) { try run() }
        } else {
            let out = try run()
            #expect(out == c["output"]!.string!, "\(name):\n\(out.debugDescription)\nwant\n\(c["output"]!.string!.debugDescription)")
        }
    }
}
