import Foundation
import Testing

/// Text in and out on the command line: `moe tokenize`, `moe chat-template`, `moe generate --prompt` and request
/// lines with `prompt` text, in one process and under mpirun.
@Suite(.serialized) struct TextCommandTests {
    static let tokenizers = MoEBinary.fixtures.appendingPathComponent("tokenizers")

    /// A byte-level tokenizer whose 256 ids are the UTF-8 bytes (GPT-2's byte characters, no merges): it fits the
    /// fixtures' small vocabularies, and a text's ids are its bytes.
    static func byteTokenizer() throws -> String {
        var printable = Set(33...126).union(161...172).union(174...255)
        var next = 256
        var vocab: [String: Int] = [:]
        for b in 0..<256 {
            let scalar: Unicode.Scalar
            if printable.contains(b) { scalar = Unicode.Scalar(UInt8(b)) } else { scalar = Unicode.Scalar(UInt32(next))!; next += 1 }
            vocab[String(scalar)] = b
        }
        printable.removeAll()
        let json: [String: Any] = [
            "model": ["type": "BPE", "vocab": vocab, "merges": [String]()],
            "pre_tokenizer": ["type": "ByteLevel", "add_prefix_space": false, "use_regex": false],
            "decoder": ["type": "ByteLevel"],
        ]
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("moe-bytetok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: json).write(to: dir.appendingPathComponent("tokenizer.json"))
        return dir.path
    }

    func object(_ line: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    @Test func tokenizeFileReproducesTheFixtureCases() throws {
        let folder = Self.tokenizers.appendingPathComponent("qwen2")
        let r = try MoEBinary.run(["tokenize", "--tokenizer", folder.path, "--file", folder.appendingPathComponent("cases.jsonl").path])
        #expect(r.status == 0, "\(r.stderr)")
        let got = r.stdout.split(separator: "\n")
        let want = try String(contentsOf: folder.appendingPathComponent("cases.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(got.count == want.count)
        for (g, w) in zip(got, want) {
            let (a, b) = (try object(String(g)), try object(String(w)))
            #expect(a["ids"] as? [Int] == b["ids"] as? [Int], "\(b["name"]!)")
            #expect(a["ids_no_special"] as? [Int] == b["ids_no_special"] as? [Int])
            #expect(a["tokens"] as? [String] == b["tokens"] as? [String])
        }
    }

    @Test func tokenizeDefaultsToTheShippedMixtralTokenizer() throws {
        let r = try MoEBinary.run(["tokenize", "--text", "The quick brown fox jumps over the lazy dog."])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try object(r.lastLine)
        #expect(json["ids"] as? [Int] == [1, 415, 2936, 9060, 285, 1142, 461, 10575, 754, 272, 17898, 3914, 28723])
        #expect(json["decoded"] as? String == "The quick brown fox jumps over the lazy dog.")
    }

    @Test func chatTemplateRendersOrRefuses() throws {
        let folder = Self.tokenizers.appendingPathComponent("mixtral").path
        let ok = try MoEBinary.run(["chat-template", "--tokenizer", folder, "--messages", #"[{"role":"user","content":"Hi"}]"#])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(try object(ok.lastLine)["prompt"] as? String == "<s>[INST] Hi [/INST]")
        let refused = try MoEBinary.run(["chat-template", "--tokenizer", folder, "--messages", #"[{"role":"system","content":"x"}]"#])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("Conversation roles must alternate user/assistant/user/assistant/..."))
        let bad = try MoEBinary.run(["chat-template", "--tokenizer", folder, "--messages", "[{"])
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("--messages: invalid JSON at byte"))
    }

    @Test func generatePromptTextEqualsItsBytesAsIds() throws {
        let tokenizer = try Self.byteTokenizer()
        defer { try? FileManager.default.removeItem(atPath: tokenizer) }
        let model = MoEBinary.fixtures.appendingPathComponent("tiny-mixtral").path
        let text = "Hé 🙂"
        let ids = Array(text.utf8).map { String($0) }.joined(separator: ",")
        let common = ["--model", model, "--max-new-tokens", "10", "--temperature", "0", "--json"]
        let byText = try MoEBinary.run(["generate", "--tokenizer", tokenizer, "--prompt", text] + common)
        let byIds = try MoEBinary.run(["generate", "--tokenizer", tokenizer, "--prompt-ids", ids] + common)
        #expect(byText.status == 0, "\(byText.stderr)")
        let (a, b) = (try object(byText.lastLine), try object(byIds.lastLine))
        let tokens = try #require(a["tokens"] as? [Int])
        #expect(tokens == b["tokens"] as? [Int])
        #expect(a["prompt_tokens"] as? Int == text.utf8.count)
        // The model's ids above 255 (its vocabulary is 300) have no byte and add no text.
        #expect(a["text"] as? String == String(decoding: tokens.filter { $0 < 256 }.map(UInt8.init), as: UTF8.self))

        // Under mpirun (coherent), and as request lines with prompt text.
        let cluster = try MPIRun.run(2, ["generate", "--tokenizer", tokenizer, "--prompt", text, "--dispatch", "coherent"] + common)
        #expect(cluster.status == 0, "\(cluster.stderr)")
        #expect(try object(cluster.lastLine)["tokens"] as? [Int] == tokens)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("moe-prompt-\(UUID().uuidString).jsonl")
        try #"{"id": "a", "prompt": "Hé 🙂", "max_new_tokens": 10, "temperature": 0}"#.write(to: dir, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: dir) }
        for run in [try MoEBinary.run(["generate", "--model", model, "--tokenizer", tokenizer, "--requests", dir.path]),
                    try MPIRun.run(2, ["generate", "--model", model, "--tokenizer", tokenizer, "--requests", dir.path])] {
            #expect(run.status == 0, "\(run.stderr)")
            #expect(try object(run.lastLine)["tokens"] as? [Int] == tokens)
        }
    }

    @Test func promptTextWithoutATokenizerIsAClearError() throws {
        let model = MoEBinary.fixtures.appendingPathComponent("tiny-mixtral").path
        let r = try MoEBinary.run(["generate", "--model", model, "--prompt", "hello"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("--prompt needs a tokenizer"))
        let both = try MoEBinary.run(["generate", "--model", model, "--prompt", "hello", "--prompt-ids", "1,2"])
        #expect(both.status == 64)
        #expect(both.stderr.contains("give one of --prompt-ids, --prompt or --requests"))
        let tooBig = try MoEBinary.run(["generate", "--model", model, "--tokenizer", Self.tokenizers.appendingPathComponent("qwen2").path, "--prompt", "hi"])
        #expect(tooBig.status == 1)
        #expect(tooBig.stderr.contains("has 151646 tokens but the model only 320"))
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("moe-prompt-\(UUID().uuidString).jsonl")
        try #"{"id": "a", "prompt": "hi", "max_new_tokens": 2}"#.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let noTok = try MoEBinary.run(["generate", "--model", model, "--requests", file.path])
        #expect(noTok.status == 1)
        #expect(noTok.stderr.contains(":1: 'prompt' text needs a tokenizer (--tokenizer DIR)"))
    }
}
