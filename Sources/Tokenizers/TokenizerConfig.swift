import Foundation

/// The parts of `tokenizer_config.json` serving needs: special tokens by role and the chat template.
public struct TokenizerConfig: Sendable {
    public var bosToken: String?
    public var eosToken: String?
    public var padToken: String?
    public var unkToken: String?
    /// The default chat template (Jinja source), if the checkpoint has one.
    public var chatTemplate: String?
    /// Named templates when the file holds a list of `{name, template}` (the one named `default` is `chatTemplate`).
    public var namedTemplates: [String: String] = [:]

    public init() {}

    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TokenizerError.unreadable(path: path, reason: "no such file")
        }
        let parsed: JSONValue
        do { parsed = try JSONValue.parse(data) } catch {
            throw TokenizerError.unreadable(path: path, reason: "not JSON (\(error))")
        }
        let root = try JSONObject(parsed, path: path, context: "")
        func special(_ key: String) throws -> String? {
            guard let v = root.value[key], !v.isNull else { return nil }
            if let s = v.string { return s }
            if let s = v.object?["content"]?.string { return s }
            throw TokenizerError.malformed(path: path, field: key, reason: "must be a string, {\"content\": ...} or null")
        }
        bosToken = try special("bos_token")
        eosToken = try special("eos_token")
        padToken = try special("pad_token")
        unkToken = try special("unk_token")
        if let v = root.value["chat_template"], !v.isNull {
            if let s = v.string {
                chatTemplate = s
            } else if let list = v.array?.compactMap(\.object), list.count == v.array?.count {
                for (i, entry) in list.enumerated() {
                    guard let name = entry["name"]?.string, let template = entry["template"]?.string else {
                        throw TokenizerError.malformed(path: path, field: "chat_template[\(i)]", reason: "must be {\"name\": ..., \"template\": ...}")
                    }
                    namedTemplates[name] = template
                }
                chatTemplate = namedTemplates["default"]
            } else {
                throw TokenizerError.malformed(path: path, field: "chat_template", reason: "must be a string or a list of named templates")
            }
        }
        // Newer checkpoints keep the template in its own file beside the config.
        let jinja = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("chat_template.jinja")
        if chatTemplate == nil, let data = FileManager.default.contents(atPath: jinja) {
            chatTemplate = String(decoding: data, as: UTF8.self)
        }
    }
}
