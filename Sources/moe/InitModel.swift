import ArgumentParser
import Foundation
import Kernels
import Models

extension MoE {
    /// `moe init-model`: writes a synthetic preset as a Hugging Face folder.
    struct InitModel: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "init-model",
            abstract: "Write a deterministic synthetic Mixtral-shaped model as a Hugging Face folder.",
            discussion: "Presets: tiny (hidden 64, 2 layers), medium (hidden 1024, intermediate 2816, 4 layers, "
                + "16 heads, 8 KV heads, 8 experts top-2, vocab 32000, rope_theta 1e6), medium-32 (medium with 32 layers).")

        @Option(help: "Preset: \(SyntheticModel.Preset.allCases.map(\.rawValue).joined(separator: ", ")).")
        var preset: String

        @Option(help: "Stored dtype: f32, bf16 or f16.")
        var dtype: String = "f32"

        @Option(help: "Largest shard in bytes; bigger models are split with model.safetensors.index.json.")
        var shardBytes: Int = 2_000_000_000

        @Option(help: "Output folder.")
        var output: String

        func validate() throws {
            if SyntheticModel.Preset(rawValue: preset) == nil {
                throw ValidationError("unknown preset '\(preset)' (choose \(SyntheticModel.Preset.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            if ElementType.stored(dtype) == nil { throw ValidationError("--dtype must be f32, bf16 or f16, got '\(dtype)'") }
            if shardBytes < 1 { throw ValidationError("--shard-bytes must be positive") }
        }

        func run() throws {
            try reportingErrors {
                try SyntheticModel.write(SyntheticModel.Preset(rawValue: preset)!, dtype: ElementType(rawValue: dtype)!,
                                         to: output, shardBytes: shardBytes)
                emit("wrote preset \(preset) (\(dtype)) to \(output)")
            }
        }
    }
}
