import ArgumentParser
import Cluster
import Foundation
import Kernels
import Models
import Placement

extension MoE {
    /// `moe predict`: the step-time model's decode figures for a model shape, routing, placement and link.
    struct Predict: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Predict decode tokens/s, rounds and bytes per token of ep2 and coherent from a calibration, without running the model.",
            discussion: """
            Routing is replayed as `bench --routing replay:` does (slot s takes the trace's sequence s mod n, \
            position p its token p; the steps of a bench run: --batch prompts of --prompt-len, then --gen-len decode \
            steps). The shape is the model's (--model or --preset) or a named one (--shape mixtral-8x7b, \
            qwen3-30b-a3b). --link-gbps and --link-latency-us override the calibration's link; --nodes spreads the \
            ranks over nodes (traffic inside a node is free, each node's crosses its link).
            """)

        @OptionGroup var modelOptions: ModelOptions

        @Option(help: "A named shape instead of the model: mixtral-8x7b or qwen3-30b-a3b (bf16 weights).")
        var shape: String?

        @Option(help: "Weight type the prediction assumes: bf16, f16 or f32.")
        var dtype: String = "bf16"

        @Option(help: "Calibration file (moe calibrate).")
        var calibration: String

        @Option(help: "Routing trace to replay (moe trace's form or the vLLM dump; lines without weights are fine).")
        var trace: String

        @Option(help: "Placement plan (default: contiguous).")
        var placement: String?

        @Option(help: "Ranks.")
        var ranks: Int = 2

        @Option(help: "Nodes the ranks are spread over (default: one rank per node).")
        var nodes: Int?

        @Option(help: "Link bandwidth in Gbit/s (default: the calibration's).")
        var linkGbps: Double?

        @Option(help: "Link latency per round in microseconds (default: the calibration's).")
        var linkLatencyUs: Double?

        @Option var batch: Int = 1
        @Option var promptLen: Int = 32
        @Option var genLen: Int = 32

        @Option(help: "Output: md (a table) or json (one object per mode).")
        var format: String = "md"

        func validate() throws {
            if let shape, Self.namedShape(shape) == nil { throw ValidationError("--shape must be mixtral-8x7b or qwen3-30b-a3b, not '\(shape)'") }
            if ranks < 1 { throw ValidationError("--ranks must be at least 1") }
            guard ElementType.stored(dtype) != nil else { throw ValidationError("--dtype must be bf16, f16 or f32") }
            if let nodes, nodes < 1 || nodes > ranks || ranks % nodes != 0 { throw ValidationError("--nodes must divide --ranks") }
            if batch < 1 || promptLen < 1 || genLen < 1 { throw ValidationError("--batch, --prompt-len and --gen-len must be at least 1") }
            if let linkGbps, !(linkGbps > 0) { throw ValidationError("--link-gbps must be positive") }
            if let linkLatencyUs, !(linkLatencyUs >= 0) { throw ValidationError("--link-latency-us must be at least 0") }
            if format != "md" && format != "json" { throw ValidationError("--format must be md or json") }
        }

        /// Mixtral-8x7B and Qwen3-30B-A3B as their config.json files give them.
        static func namedShape(_ name: String) -> DecoderSpec? {
            guard var s = try? ModelRegistry.spec(SyntheticModel.config(.medium), path: "preset") else { return nil }
            switch name {
            case "mixtral-8x7b":
                (s.hiddenSize, s.layers, s.heads, s.kvHeads, s.headDim, s.vocabSize) = (4096, 32, 32, 8, 128, 32000)
                (s.experts, s.topK, s.expertIntermediate) = (8, 2, 14336)
            case "qwen3-30b-a3b":
                (s.hiddenSize, s.layers, s.heads, s.kvHeads, s.headDim, s.vocabSize) = (2048, 48, 32, 4, 128, 151936)
                (s.experts, s.topK, s.expertIntermediate) = (128, 8, 768)
            default: return nil
            }
            s.moeLayers = Array(repeating: true, count: s.layers)
            s.slidingWindow = Array(repeating: nil, count: s.layers)
            return s
        }

        func run() throws {
            try reportingErrors {
                let spec = try shape.map { Self.namedShape($0)! } ?? modelOptions.spec()
                var c = try StepTimeModel.Calibration.load(path: calibration)
                if let linkGbps { c.bandwidth = linkGbps * 1e9 / 8 }
                if let linkLatencyUs { c.latency = linkLatencyUs * 1e-6 }
                let t = try RoutingTrace.load(paths: [trace], layers: spec.layers, experts: spec.experts)
                try ClusterEngine.checkReplay(t, spec: spec, positions: promptLen + genLen)
                let plan: Placement
                if let placement {
                    plan = try PlanFile.read(path: placement).placement
                    try plan.validate(layers: spec.layers, experts: spec.experts, ranks: ranks, capacity: spec.experts)
                } else {
                    plan = .contiguous(layers: spec.layers, experts: spec.experts, ranks: ranks)
                }
                let model = StepTimeModel(shape: .init(spec: spec, weightBytes: ElementType(rawValue: dtype)!.bytesPerWeight), calibration: c, placement: plan,
                                          ranksPerNode: ranks / (nodes ?? ranks))
                for mode in [DispatchMode.ep2, .coherent] {
                    let p = Self.decode(model, mode: mode, trace: t, spec: spec, batch: batch, promptLen: promptLen, genLen: genLen)
                    let object: [String: Any] = [
                        "dispatch": mode.rawValue, "ranks": ranks, "nodes": nodes ?? ranks, "batch": batch,
                        "decode_tokens_per_s": p.tokensPerSecond, "communication_fraction": p.communicationFraction,
                        "rounds_per_step": p.roundsPerStep, "point_to_point_layers_per_step": p.pointToPointLayers,
                        "cross_rank_bytes_per_token": p.bytesPerToken,
                    ]
                    if format == "json" {
                        emit(try jsonLine(object))
                    } else {
                        if mode == .ep2 {
                            emit("| dispatch | ranks | nodes | batch | decode tok/s | communication | rounds / step | p2p layers / step | KB / token |")
                            emit("|---|---|---|---|---|---|---|---|---|")
                        }
                        emit(String(format: "| %@ | %d | %d | %d | %.1f | %.0f%% | %.1f | %.1f | %.0f |", mode.rawValue, ranks, nodes ?? ranks, batch,
                                    p.tokensPerSecond, 100 * p.communicationFraction, p.roundsPerStep, p.pointToPointLayers,
                                    p.bytesPerToken.values.reduce(0, +) / 1e3))
                    }
                }
            }
        }

        struct Decode {
            var tokensPerSecond: Double
            var communicationFraction: Double
            var roundsPerStep: Double
            var pointToPointLayers: Double
            var bytesPerToken: [String: Double]
        }

        /// A bench run's decode steps through the model: slot s replays the trace's sequence s mod n.
        static func decode(_ model: StepTimeModel, mode: DispatchMode, trace t: RoutingTrace, spec: DecoderSpec, batch: Int, promptLen: Int,
                           genLen: Int) -> Decode {
            var homes = (0..<batch).map { $0 % model.ranks }
            var seconds = 0.0, communication = 0.0, rounds = 0, p2p = 0
            var bytes: [String: Double] = [:]
            for step in 0..<genLen {
                let position = promptLen + step
                let routing = (0..<batch).map { slot -> [[Int]] in
                    let choices = t.sequences[slot % t.sequences.count].tokens[position]
                    var perLayer = Array(repeating: [Int](), count: spec.layers)
                    for (i, l) in t.layerIds.enumerated() { perLayer[l] = choices[i].experts }
                    return perLayer
                }
                let s = model.step(mode, routing: routing, homes: homes, contexts: Array(repeating: position, count: batch))
                seconds += s.seconds
                communication += s.communicationSeconds
                rounds += s.rounds
                p2p += s.pointToPointLayers
                for (k, v) in s.bytes { bytes[k, default: 0] += v }
                if mode == .coherent { homes = s.homes }
            }
            let tokens = Double(batch * genLen)
            return Decode(tokensPerSecond: tokens / seconds, communicationFraction: communication / seconds,
                          roundsPerStep: Double(rounds) / Double(genLen), pointToPointLayers: Double(p2p) / Double(genLen),
                          bytesPerToken: bytes.mapValues { $0 / tokens })
        }
    }
}
