import Foundation
import OrderedCollections

/// A checkpoint's chat template: the subset of Jinja that real templates use, rendered as transformers'
/// `apply_chat_template` renders it (`trim_blocks`, `lstrip_blocks`, `raise_exception`, `strftime_now`).
public struct ChatTemplate: @unchecked Sendable {  // The parsed tree is immutable; each render has its own state.
    let nodes: [Node]
    public let source: String

    /// Parses `source`; a construct outside the subset is an error naming it and its line.
    public init(_ source: String) throws(TemplateError) {
        var parser = try TemplateParser(source: source)
        nodes = try parser.parse()
        self.source = source
    }

    /// The prompt text for `messages` (each `{"role", "content", ...}`), with the tokenizer's special tokens and any
    /// further variables (`tools`, `documents`, ...) from `extra`.
    public func render(messages: [JSONValue], addGenerationPrompt: Bool, specialTokens: TokenizerConfig = TokenizerConfig(),
                       extra: [String: JSONValue] = [:]) throws(TemplateError) -> String {
        var globals: [String: JinjaValue] = [
            "messages": .list(messages.map(JinjaValue.init)),
            "add_generation_prompt": .bool(addGenerationPrompt),
        ]
        for (name, token) in [("bos_token", specialTokens.bosToken), ("eos_token", specialTokens.eosToken),
                              ("pad_token", specialTokens.padToken), ("unk_token", specialTokens.unkToken)] {
            if let token { globals[name] = .string(token) }
        }
        for (k, v) in extra { globals[k] = JinjaValue(v) }
        for (k, v) in Self.functions { globals[k] = v }
        return try Renderer(globals: globals).render(nodes)
    }

    static let functions: [String: JinjaValue] = [
        "raise_exception": .function(JinjaFunction(name: "raise_exception") { args, _ in
            throw TemplateError.raised(args.first?.rendered ?? "the chat template refused the conversation")
        }),
        "range": .function(JinjaFunction(name: "range") { args, _ in
            let ints = args.compactMap { if case .int(let n) = $0 { return n }; return nil }
            guard ints.count == args.count, (1...3).contains(ints.count) else {
                throw TemplateError.runtime("range takes one to three integers", line: 0)
            }
            let (start, stop, step) = ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count == 3 ? ints[2] : 1)
            guard step != 0 else { throw TemplateError.runtime("range step cannot be zero", line: 0) }
            guard abs((stop - start) / step) <= 1_000_000 else { throw TemplateError.runtime("range too long", line: 0) }
            return .list(Swift.stride(from: start, to: stop, by: step).map { .int($0) })
        }),
        "namespace": .function(JinjaFunction(name: "namespace") { args, kwargs in
            var values = OrderedDictionary<String, JinjaValue>()
            if case .dict(let d)? = args.first { values = d }
            for (k, v) in kwargs { values[k] = v }
            return .namespace(Namespace(values))
        }),
        "strftime_now": .function(JinjaFunction(name: "strftime_now") { args, _ in
            guard case .string(let format)? = args.first else { throw TemplateError.runtime("strftime_now needs a format", line: 0) }
            var now = time(nil)
            var parts = tm()
            localtime_r(&now, &parts)
            var buffer = [CChar](repeating: 0, count: 256)
            let n = strftime(&buffer, buffer.count, format, &parts)
            return .string(String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }),
        "dict": .function(JinjaFunction(name: "dict") { _, kwargs in
            .dict(OrderedDictionary(kwargs, uniquingKeysWith: { _, b in b }))
        }),
    ]
}
