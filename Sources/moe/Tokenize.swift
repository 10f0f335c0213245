import ArgumentParser
import Foundation
import Tokenizers

extension MoE {
    /// `moe tokenize`: text to ids and back with a Hugging Face tokenizer, no model needed.
    struct Tokenize: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Encode and decode text with a Hugging Face tokenizer.json.",
            discussion: """
            Prints one JSON line per text: {"text", "ids" (with the post-processor's special tokens, e.g. BOS), \
            "ids_no_special", "decoded" (ids decoded, special tokens skipped), "tokens" (the token strings of ids)}. \
            --file reads JSON lines, each {"text": ...} or a JSON string.
            """)

        @Option(help: "Tokenizer folder (tokenizer.json, optional tokenizer_config.json). Default: the Mixtral tokenizer moe ships.")
        var tokenizer: String?

        @Option(help: "One text to encode.")
        var text: String?

        @Option(help: "Texts to encode, one JSON line each.")
        var file: String?

        func validate() throws {
            if (text == nil) == (file == nil) { throw ValidationError("give either --text or --file") }
        }

        func run() throws {
            try reportingErrors {
                guard let folder = tokenizer ?? TokenizerLocator.bundledMixtral else {
                    throw ValidationError("give --tokenizer DIR (the bundled Mixtral tokenizer is missing)")
                }
                let t = try Tokenizers.Tokenizer(directory: folder)
                for text in try texts() {
                    let ids = try t.encode(text)
                    emit(try jsonLine([
                        "text": text, "ids": ids, "ids_no_special": try t.encode(text, addSpecialTokens: false),
                        "decoded": try t.decode(ids), "tokens": try t.tokens(ids),
                    ]))
                }
            }
        }

        func texts() throws -> [String] {
            if let text { return [text] }
            guard let file, let data = FileManager.default.contents(atPath: file) else {
                throw ValidationError("cannot read \(file ?? "")")
            }
            var out: [String] = []
            for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated()
            where !line.trimmingCharacters(in: .whitespaces).isEmpty {
                let value: JSONValue
                do { value = try JSONValue.parse(Data(line.utf8)) } catch {
                    throw ValidationError("\(file):\(n + 1): \(error)")
                }
                if let s = value.string { out.append(s) } else if let s = value.object?["text"]?.string { out.append(s) } else {
                    throw ValidationError("\(file):\(n + 1): expected {\"text\": ...} or a JSON string")
                }
            }
            return out
        }
    }

    /// `moe chat-template`: renders a conversation with a checkpoint's chat template, as the server would.
    struct ChatTemplateCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "chat-template",
            abstract: "Render a conversation with a tokenizer's chat template and print the prompt and its ids.",
            discussion: """
            --messages is a JSON list of {"role", "content"} (or a file holding one). Prints {"prompt", "ids"} \
            (ids without added special tokens: the template writes BOS itself), or the template's \
            raise_exception message with exit 1.
            """)

        @Option(help: "Tokenizer folder with tokenizer_config.json. Default: the Mixtral tokenizer moe ships.")
        var tokenizer: String?

        @Option(help: "A Jinja chat template file to use instead of the tokenizer's.")
        var chatTemplate: String?

        @Option(help: "The conversation: a JSON list of messages, or the path of a file holding one.")
        var messages: String

        @Flag(help: "Append the template's prompt for the assistant's turn.")
        var addGenerationPrompt = false

        func run() throws {
            try reportingErrors {
                guard let folder = tokenizer ?? TokenizerLocator.bundledMixtral else { throw ValidationError("give --tokenizer DIR") }
                let t = try Tokenizers.Tokenizer(directory: folder)
                let source: String
                if let chatTemplate {
                    guard let data = FileManager.default.contents(atPath: chatTemplate) else { throw ValidationError("cannot read \(chatTemplate)") }
                    source = String(decoding: data, as: UTF8.self)
                } else {
                    guard let s = t.config.chatTemplate else { throw ValidationError("\(folder) has no chat_template; give --chat-template FILE") }
                    source = s
                }
                let text = FileManager.default.contents(atPath: messages).map { String(decoding: $0, as: UTF8.self) } ?? messages
                let list: [JSONValue]
                do {
                    guard let l = try JSONValue.parse(Data(text.utf8)).array else { throw ValidationError("--messages must be a JSON list") }
                    list = l
                } catch let e as JSONParseError { throw ValidationError("--messages: \(e)") }
                let prompt = try ChatTemplate(source).render(messages: list, addGenerationPrompt: addGenerationPrompt, specialTokens: t.config)
                emit(try jsonLine(["prompt": prompt, "ids": try t.encode(prompt, addSpecialTokens: false)]))
            }
        }
    }
}
