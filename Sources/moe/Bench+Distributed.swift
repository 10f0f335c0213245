import ArgumentParser
import Cluster
import Comm
import Foundation
import Kernels
import Models
import Placement

extension MoE.Bench {
    /// Under mpirun: prefill and decode through the cluster, with what crossed ranks per generated token.
    func runDistributed() throws {
        var trace: RoutingTrace?
        var calibration: StepTimeModel.Calibration?
        let run = try DistributedRun.start(model: modelOptions, cluster: cluster) { model, _ in
            if predict, let path = cluster.calibration { calibration = try StepTimeModel.Calibration.load(path: path) }
            if let reason = Engine.lengthProblem(prompt: promptLen, maxNewTokens: genLen, limit: model.maxModelLen) {
                throw ModelError.invalidArgument(reason)
            }
            if let routing {
                let t = try RoutingTrace.load(paths: [String(routing.dropFirst("replay:".count))], layers: model.spec.layers,
                                              experts: model.spec.experts)
                try ClusterEngine.checkReplay(t, spec: model.spec, positions: promptLen + genLen)
                trace = t
            }
        }
        defer { run.finish() }
        let engine = run.engine, comm = run.comm
        engine.replay = trace
        let spec = engine.model.spec
        var rng = SplitMix64(seed: 42)
        let prompts = (0..<batch).map { _ in (0..<promptLen).map { _ in Int(rng.next() % UInt64(spec.vocabSize)) } }
        func requests(_ steps: Int) -> [ClusterRequest] {
            prompts.enumerated().map { ClusterRequest(id: "\($0)", request: GenerationRequest(promptIds: $1, maxNewTokens: steps + 1)) }
        }
        _ = try run.run(requests: requests(min(genLen, 2))) { _ in }  // warm-up: page weights in
        // The rates now, as the runs below will find the machine (under `auto` they replace the start-up ones).
        if predict { try run.useStepModel(calibration) }
        var runs: [ClusterRunStats] = []
        let rowsBefore = engine.expertRows
        for _ in 0..<repetitions { runs.append(try run.run(requests: requests(genLen)) { _ in }) }
        let stats = runs.sorted { $0.decodeSeconds < $1.decodeSeconds }[runs.count / 2]
        let prefill = runs.map { $0.prefillSeconds }.sorted()[runs.count / 2]

        // Every rank's counters and expert rows, to rank 0.
        var mine: [String: Any] = ["rows": zip(engine.expertRows, rowsBefore).map { $0 - $1 }]
        for k in CommCounters.Kind.allCases {
            mine["calls_" + k.rawValue] = stats.decodeCounters.calls[k] ?? 0
            mine["bytes_" + k.rawValue] = stats.decodeCounters.bytes[k] ?? 0
        }
        mine["communication_by_kind"] = Dictionary(uniqueKeysWithValues: stats.decodeCounters.seconds.map { ($0.key.rawValue, $0.value) })
        let all = try comm.allgatherv(Array(try JSONSerialization.data(withJSONObject: mine))).map {
            try JSONSerialization.jsonObject(with: Data($0)) as! [String: Any]
        }
        guard comm.rank == 0 else { return }
        let moeLayers = Double(spec.moeLayers.filter { $0 }.count)
        let steps = Double(max(stats.decodeSteps, 1)), tokens = Double(max(stats.decodeTokens, 1))
        var collectives: [String: Double] = [:], bytes: [String: Double] = [:]
        for kind in [CommCounters.Kind.dispatch, .combine, .pointToPoint, .allgather, .kvReplication] {
            let calls = kind == .pointToPoint ? all.reduce(0) { $0 + ($1["calls_" + kind.rawValue] as! Int) } : all[0]["calls_" + kind.rawValue] as! Int
            collectives[kind.rawValue] = Double(calls) / steps / moeLayers
            bytes[kind.rawValue] = Double(all.reduce(0) { $0 + ($1["bytes_" + kind.rawValue] as! Int) }) / tokens
        }
        let rows = all.map { $0["rows"] as! [Int] }
        var imbalance: [Double] = []
        for l in 0..<spec.layers where spec.moeLayers[l] {
            let perRank = rows.map { Double($0[l]) }
            let mean = perRank.reduce(0, +) / Double(perRank.count)
            if mean > 0 { imbalance.append(perRank.max()! / mean) }
        }
        var report: [String: Any] = [
            "model": modelOptions.label, "ranks": comm.size, "dispatch": cluster.dispatch, "batch": batch,
            "prompt_len": promptLen, "gen_len": genLen, "routing": routing ?? "model",
            "placement": cluster.placement ?? "contiguous",
            "prefill_tokens_per_s": Double(stats.prefillTokens) / prefill,
            "decode_tokens_per_s": Double(stats.decodeTokens) / stats.decodeSeconds,
            // The whole run of the median decode as a client sees it: every sequence's genLen + 1 tokens over its time.
            "output_tokens_per_s": Double(batch * (genLen + 1)) / (stats.prefillSeconds + stats.decodeSeconds),
            "collectives_per_moe_layer": collectives, "cross_rank_bytes_per_token": bytes,
            "max_mean_tokens_per_rank": imbalance.isEmpty ? 1 : imbalance.reduce(0, +) / Double(imbalance.count),
            "expert_bytes_per_rank": run.expertBytes, "mode_steps": stats.modeSteps,
            // Steps whose decodes rode in a prompt chunk's pass; their time counts to prefill, their tokens not to decode.
            "mixed_steps": stats.mixedSteps,
            "cached_prompt_tokens": stats.cachedPromptTokens,
            "kv_replication": cluster.kvReplication, "kv_wait_ms_per_step": 1e3 * stats.kvWaitSeconds / steps,
            // Inside MPI calls, each rank: moving bytes and waiting for ranks that arrive later.
            "communication_ms_per_step": all.map { 1e3 * ($0["communication_by_kind"] as! [String: Double]).values.reduce(0, +) / steps },
            "communication_ms_per_step_by_kind": all.map { ($0["communication_by_kind"] as! [String: Double]).mapValues { 1e3 * $0 / steps } },
        ]
        if predict, let predicted = stats.predictedDecodeSeconds, let c = engine.stepModel?.calibration {
            report["predicted_decode_tokens_per_s"] = Double(stats.decodeTokens) / predicted
            report["predicted_communication_ms_per_step"] = 1e3 * (stats.predictedCommunicationSeconds ?? 0) / steps
            report["calibration"] = ["latency_s": c.latency, "bandwidth_bytes_per_s": c.bandwidth, "stream_rows": c.rows,
                                     "stream_gb_per_s": c.secondsPerByte.map { 1 / $0 / 1e9 }]
        }
        if format == "json" {
            emit(try jsonLine(report))
        } else {
            emit("| ranks | dispatch | prefill tok/s | decode tok/s | all-to-alls / MoE layer | p2p msgs / MoE layer | dispatch B/token | combine B/token | p2p B/token | allgather B/token | K/V B/token | K/V wait ms/step | max/mean rows |")
            emit("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            emit(String(format: "| %d | %@ | %.0f | %.1f | %.2f | %.2f | %.0f | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f |", comm.size, cluster.dispatch,
                        report["prefill_tokens_per_s"] as! Double, report["decode_tokens_per_s"] as! Double,
                        collectives["dispatch"]! + collectives["combine"]!, collectives["point_to_point"]!,
                        bytes["dispatch"]!, bytes["combine"]!, bytes["point_to_point"]!, bytes["allgather"]!,
                        bytes["kv_replication"]!, report["kv_wait_ms_per_step"] as! Double, report["max_mean_tokens_per_rank"] as! Double))
            if let predicted = report["predicted_decode_tokens_per_s"] as? Double {
                emit(String(format: "predicted decode: %.1f tok/s (the step-time model on the measured steps' routing, rates measured after the warm-up)", predicted))
            }
        }
    }
}
