import ArgumentParser
import Foundation
import Models
import Tokenizers

/// Finds the tokenizer of a run: `--tokenizer DIR`; else the model folder when it has `tokenizer.json`; else, for
/// the built-in presets with Mixtral's 32,000-token vocabulary, the Mixtral tokenizer shipped with `moe`
/// (`Sources/moe/Resources/mixtral-tokenizer`, Apache-2.0, see its NOTICE).
enum TokenizerLocator {
    /// The folder of the bundled Mixtral tokenizer.
    static var bundledMixtral: String? {
        Bundle.module.url(forResource: "mixtral-tokenizer", withExtension: nil)?.path
    }

    /// Where the tokenizer is, or `nil` when none is known.
    static func folder(explicit: String?, model: String?, vocabulary: Int) -> String? {
        if let explicit { return explicit }
        if let model {
            return FileManager.default.fileExists(atPath: (model as NSString).appendingPathComponent("tokenizer.json")) ? model : nil
        }
        return vocabulary == 32_000 ? bundledMixtral : nil
    }

    /// The tokenizer, checked against the model's vocabulary (an id it can emit must be one the model has).
    static func load(explicit: String?, model: String?, vocabulary: Int) throws -> Tokenizer? {
        guard let folder = folder(explicit: explicit, model: model, vocabulary: vocabulary) else { return nil }
        let tokenizer = try Tokenizer(directory: folder)
        guard tokenizer.vocabularySize <= vocabulary else {
            throw ValidationError("the tokenizer in \(folder) has \(tokenizer.vocabularySize) tokens but the model only \(vocabulary)")
        }
        return tokenizer
    }
}

extension Tokenizer {
    /// The text of generated ids, for results: special tokens left out, and ids the tokenizer does not have (a
    /// model's vocabulary is often padded past the tokenizer's) contribute nothing.
    func text(of ids: [Int]) -> String {
        (try? decode(ids.filter { token($0) != nil }, skipSpecialTokens: true)) ?? ""
    }
}
