import Cluster
import Foundation
@testable import Models
import Placement
import Testing

/// The step-time model against figures worked out by hand, and `moe predict`, `moe calibrate` and `--dispatch
/// auto` end to end.
@Suite struct StepTimeModelTests {
    /// One MoE layer, 2 experts (expert e on rank e), rows of 4 bytes (hidden 1), streaming 1 ms per byte for one
    /// token row (twice that for two: past the last measured count it grows with the rows), latency 0.5 s,
    /// 4 bytes/s.
    func model(topK: Int) throws -> StepTimeModel {
        var spec = Reference.all["tiny-mixtral"]!.spec
        spec.layers = 1
        spec.moeLayers = [true]
        var shape = StepTimeModel.Shape(spec: spec, weightBytes: 4)
        (shape.hidden, shape.experts, shape.topK) = (1, 2, topK)
        (shape.expertBytes, shape.attentionBytes, shape.denseBytes, shape.sharedBytes, shape.lmHeadBytes, shape.kvBytes) = (100, 10, 0, 0, 1000, 8)
        let c = StepTimeModel.Calibration(latency: 0.5, bandwidth: 4, rows: [1], secondsPerByte: [0.001])
        return StepTimeModel(shape: shape, calibration: c, placement: Placement(rankOf: [[0, 1]], ranks: 2))
    }

    @Test func ep2AndCoherentStepsAsWorkedOutByHand() throws {
        let m = try model(topK: 1)
        // Token A on rank 0 and token B on rank 1 both go to expert 1 (rank 1).
        let routing = [[[1]], [[1]]]
        let ep2 = m.step(.ep2, routing: routing, homes: [0, 1], contexts: [0, 0])
        // attention 0.01; dispatch A's row (4 + 8 + 8 bytes) 0.5 + 20/4; expert 1 on 2 rows 0.2; combine 4 bytes
        // 0.5 + 1; LM head one row each 1.0; allgather 20 bytes each way 0.5 + 5, plus the step plan's round 0.5.
        #expect(abs(ep2.seconds - 14.21) < 1e-9)
        #expect(ep2.rounds == 4 && ep2.bytes == ["dispatch": 20, "combine": 4, "allgather": 40] && ep2.homes == [0, 1])
        var stepEnd = m
        stepEnd.kvReplication = .stepEnd
        let coherent = stepEnd.step(.coherent, routing: routing, homes: [0, 1], contexts: [0, 0])
        // attention 0.01; dispatch A's row (4 + 16) 5.5; expert 0.2; no partials (one expert each); both end on
        // rank 1: LM head on 2 rows 2.0; allgather 32 bytes out of rank 0 (a K/V row), 56 out of rank 1 (two
        // tokens and a K/V row): 0.5 + 56/4, plus 0.5.
        #expect(abs(coherent.seconds - 22.71) < 1e-9)
        #expect(coherent.rounds == 3 && coherent.pointToPointLayers == 0 && coherent.homes == [1, 1])
        #expect(coherent.bytes == ["dispatch": 20, "allgather": 88])
    }

    @Test func kvRowsPostedPerLayerCostOnlyWhatOutlastsTheStep() throws {
        var m = try model(topK: 1)
        let routing = [[[1]], [[1]]]
        // As above, but the allgather carries 8 bytes from rank 0 and 32 from rank 1: 0.5 + 8, plus 0.5. The
        // K/V rows (24 bytes from each rank, 0.5 + 6 s) move while the 16.71 s step runs: hidden.
        let hidden = m.step(.coherent, routing: routing, homes: [0, 1], contexts: [0, 0])
        #expect(abs(hidden.seconds - 16.71) < 1e-9)
        #expect(hidden.bytes == ["dispatch": 20, "allgather": 40, "kv_replication": 48])
        // Rows of 1,016 bytes take 254 s to move beyond their latency: the step lasts that long.
        m.shape.kvBytes = 1000
        let slow = m.step(.coherent, routing: routing, homes: [0, 1], contexts: [0, 0])
        #expect(abs(slow.seconds - 254) < 1e-9)
        #expect(slow.bytes["kv_replication"] == 2032)
    }

    @Test func aTokenSplitAcrossRanksCostsAPartialRound() throws {
        let m = try model(topK: 2)
        // Experts 1 then 0: one on each rank; the first in router order (rank 1) becomes the new home, expert 0's
        // row goes there point-to-point.
        let s = m.step(.coherent, routing: [[[1, 0]]], homes: [0], contexts: [0])
        #expect(s.pointToPointLayers == 1 && s.homes == [1])
        #expect(s.bytes["point_to_point"] == 4 && s.bytes["dispatch"] == 4 + 8 + 16)
        #expect(s.rounds == 4)
    }

    @Test func calibrationStreamsInterpolateBetweenMeasuredRows() {
        let c = StepTimeModel.Calibration(latency: 0, bandwidth: 1, rows: [1, 4], secondsPerByte: [1, 4])
        #expect(c.stream(10, rows: 1) == 10 && c.stream(10, rows: 2) == 20 && c.stream(10, rows: 4) == 40)
        #expect(c.stream(10, rows: 8) == 80 && c.stream(10, rows: 0) == 0)
    }

    @Test func badCalibrationFilesAreNamed() throws {
        let f = TemporaryPath(".json")
        try #"{"latency_s": 0.001, "bandwidth_bytes_per_s": 0, "stream_rows": [1], "stream_s_per_byte": [1e-10]}"#
            .write(toFile: f.path, atomically: true, encoding: .utf8)
        #expect(throws: PlacementError.self) { try StepTimeModel.Calibration.load(path: f.path) }
        try "not json".write(toFile: f.path, atomically: true, encoding: .utf8)
        let r = try MoEBinary.run(["predict", "--calibration", f.path, "--trace", f.path, "--preset", "tiny"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("\(f.path): not a calibration file"), "\(r.stderr)")
    }
}

/// `--dispatch auto` under mpirun: the single process's tokens, and the head's choices follow the calibration.
@Suite(.serialized) struct AutoDispatchTests {
    @Test(arguments: [("tiny-mixtral", 2), ("tiny-qwen2moe", 3), ("tiny-qwen3moe", 2)])
    func autoGivesTheSingleProcessTokens(fixture name: String, ranks: Int) throws {
        let ref = Reference.all[name]!
        let calibration = TemporaryPath(".json")
        try #"{"latency_s": 5e-5, "bandwidth_bytes_per_s": 1e9, "stream_rows": [1, 8], "stream_s_per_byte": [1e-10, 2e-10]}"#
            .write(toFile: calibration.path, atomically: true, encoding: .utf8)
        let g = try MPIRun.run(ranks, ["generate", "--model", fixture(name), "--prompt-ids", ref.prompt.map(String.init).joined(separator: ","),
                                       "--max-new-tokens", "8", "--temperature", "0", "--json", "--dispatch", "auto", "--calibration", calibration.path])
        #expect(g.status == 0, "\(g.stderr)")
        #expect((try JSONSerialization.jsonObject(with: Data(g.lastLine.utf8)) as? [String: Any])?["tokens"] as? [Int] == ref.greedy)
    }

    /// Every token of both sequences routed to experts on rank 0. A costly round makes coherent (one round per
    /// layer) the choice; streaming that slows sharply past one token row makes ep2 the choice (coherent brings
    /// both tokens to rank 0, ep2 keeps one per owner).
    @Test(arguments: [(5.0, 1e-12, "coherent"), (0.0, 1e-3, "ep2")])
    func autoPicksWhatTheModelPredictsFaster(latency: Double, steep: Double, expected: String) throws {
        let trace = TemporaryPath(".jsonl"), calibration = TemporaryPath(".json")
        var lines: [String] = []
        for s in 0..<2 { for p in 0..<8 { for l in 0..<3 {
            lines.append(#"{"sequence": \#(s), "token": \#(p), "layer": \#(l), "experts": [\#((p + l) % 2 == 0 ? 1 : 2), 0], "weights": [0.6, 0.4]}"#)
        } } }
        try lines.joined(separator: "\n").write(toFile: trace.path, atomically: true, encoding: .utf8)
        try #"{"latency_s": \#(latency), "bandwidth_bytes_per_s": 1e12, "stream_rows": [1, 2], "stream_s_per_byte": [1e-12, \#(steep)]}"#
            .write(toFile: calibration.path, atomically: true, encoding: .utf8)
        let r = try MPIRun.run(2, ["bench", "--model", fixture("tiny-mixtral"), "--batch", "2", "--prompt-len", "3", "--gen-len", "4", "--repetitions", "1",
                                   "--format", "json", "--dispatch", "auto", "--calibration", calibration.path, "--routing", "replay:" + trace.path])
        #expect(r.status == 0, "\(r.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(r.lastLine.utf8)) as! [String: Any]
        #expect(report["mode_steps"] as? [String: Int] == [expected: 4], "\(report)")
    }

    /// `bench --predict` with a calibration where only rounds cost (10 ms each, free bytes and streaming): an ep2
    /// step is its rounds, 2 per MoE layer (3 layers) and the 2 control rounds: the model must predict 2 / (8 × 10 ms).
    @Test func benchPredictsItsDecodeStepsFromTheCalibration() throws {
        let calibration = TemporaryPath(".json")
        try #"{"latency_s": 0.01, "bandwidth_bytes_per_s": 1e15, "stream_rows": [1, 8], "stream_s_per_byte": [1e-18, 1e-18]}"#
            .write(toFile: calibration.path, atomically: true, encoding: .utf8)
        let r = try MPIRun.run(2, ["bench", "--model", fixture("tiny-mixtral"), "--batch", "2", "--prompt-len", "3", "--gen-len", "4",
                                   "--repetitions", "1", "--format", "json", "--dispatch", "ep2", "--predict", "--calibration", calibration.path])
        #expect(r.status == 0, "\(r.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(r.lastLine.utf8)) as! [String: Any]
        let predicted = try #require(report["predicted_decode_tokens_per_s"] as? Double, "\(report)")
        #expect(abs(predicted - 2 / 0.08) < 0.01 * 2 / 0.08, "\(report)")
        #expect(abs((report["predicted_communication_ms_per_step"] as? Double ?? 0) - 80) < 0.1, "\(report)")
        #expect((report["communication_ms_per_step"] as? [Double])?.count == 2, "\(report)")
        // Without a file the rates are measured after the warm-up, on each rank's own experts.
        let measured = try MPIRun.run(2, ["bench", "--model", fixture("tiny-mixtral"), "--batch", "2", "--prompt-len", "3", "--gen-len", "4",
                                          "--repetitions", "1", "--format", "json", "--dispatch", "coherent", "--predict"])
        #expect(measured.status == 0, "\(measured.stderr)")
        let m = try JSONSerialization.jsonObject(with: Data(measured.lastLine.utf8)) as! [String: Any]
        #expect((m["predicted_decode_tokens_per_s"] as? Double ?? 0) > 0, "\(m)")
        #expect((m["calibration"] as? [String: Any])?["stream_rows"] as? [Int] == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32], "\(m)")
    }

    @Test func badCalibrationAndPredictionFlagsAreRefused() throws {
        let wrongMode = try MoEBinary.run(["generate", "--preset", "tiny", "--prompt-ids", "1", "--dispatch", "ep2", "--calibration", "c.json"])
        #expect(wrongMode.status == 64 && wrongMode.stderr.contains("--calibration is for --dispatch auto and bench --predict"), "\(wrongMode.stderr)")
        let alone = try MoEBinary.run(["bench", "--preset", "tiny", "--predict"])
        #expect(alone.status == 64 && alone.stderr.contains("--predict is for runs under mpirun"), "\(alone.stderr)")
        for (flags, message) in [(["--kv-replication", "later"], "--kv-replication must be layer or step-end, got 'later'"),
                                 (["--wire-dtype", "fp8"], "--wire-dtype must be f32 or bf16, got 'fp8'"),
                                 (["--kv-dtype", "f16"], "--kv-dtype must be f32 or bf16, got 'f16'"),
                                 (["--combine", "sum"], "--combine must be per-expert or per-rank, got 'sum'")] {
            let r = try MoEBinary.run(["generate", "--preset", "tiny", "--prompt-ids", "1"] + flags)
            #expect(r.status == 64 && r.stderr.contains(message), "\(r.stderr)")
        }
        let missing = try MPIRun.run(2, ["generate", "--preset", "tiny", "--prompt-ids", "1", "--dispatch", "auto", "--calibration", "/nonexistent/c.json"])
        #expect(missing.status == 1 && missing.stderr.contains("/nonexistent/c.json: no such file"), "\(missing.stderr)")
        #expect(missing.stderr.components(separatedBy: "moe: error:").count == 2, "one message: \(missing.stderr)")
        for (args, message) in [(["--shape", "gpt-4"], "--shape must be mixtral-8x7b or qwen3-30b-a3b"), (["--ranks", "4", "--nodes", "3"], "--nodes must divide --ranks"),
                                (["--link-gbps", "0"], "--link-gbps must be positive")] {
            let r = try MoEBinary.run(["predict", "--calibration", "c.json", "--trace", "t.jsonl"] + args)
            #expect(r.status == 64 && r.stderr.contains(message), "\(r.stderr)")
        }
    }

    @Test func calibrateWritesAFileThatPredictReads() throws {
        let calibration = TemporaryPath(".json"), trace = TemporaryPath(".jsonl")
        let c = try MPIRun.run(2, ["calibrate", "--preset", "tiny", "--dtype", "f32", "--stream-mib", "1", "--output", calibration.path])
        #expect(c.status == 0, "\(c.stderr)")
        let file = try StepTimeModel.Calibration.load(path: calibration.path)
        #expect(file.latency > 0 && file.bandwidth > 0 && file.rows == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32])
        try randomTraceLines(layers: 2, experts: 8, tokens: 12).write(toFile: trace.path, atomically: true, encoding: .utf8)
        let p = try MoEBinary.run(["predict", "--preset", "tiny", "--calibration", calibration.path, "--trace", trace.path, "--batch", "2",
                                   "--prompt-len", "4", "--gen-len", "6", "--format", "json"])
        #expect(p.status == 0, "\(p.stderr)")
        let rows = p.stdout.split(separator: "\n").map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(rows.map { $0["dispatch"] as? String } == ["ep2", "coherent"])
        #expect(rows.allSatisfy { ($0["decode_tokens_per_s"] as? Double ?? 0) > 0 })
        // ep2: two rounds per MoE layer and the two control rounds (step plan, allgather), every step.
        #expect(rows[0]["rounds_per_step"] as? Double == 2 * 2 + 2.0)
    }

    @Test func commBenchReportsEverySize() throws {
        let r = try MPIRun.run(2, ["comm-bench", "--sizes", "0,4096", "--iterations", "5", "--rounds", "3", "--format", "json"])
        #expect(r.status == 0, "\(r.stderr)")
        let rows = r.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(rows.map { $0["bytes"] as? Int } == [0, 4096])
        let bad = try MoEBinary.run(["comm-bench", "--sizes", "x"])
        #expect(bad.status == 64 && bad.stderr.contains("--sizes takes byte counts"))
        // Outside mpirun, and on one rank, both measuring commands say why and exit 1.
        for command in [["comm-bench"], ["calibrate", "--preset", "tiny", "--output", "/tmp/unused-calibration.json"]] {
            let alone = try MoEBinary.run(command)
            #expect(alone.status == 1 && alone.stderr.contains("\(command[0]) measures between ranks"), "\(alone.stderr)")
            let one = try MPIRun.run(1, command)
            #expect(one.status == 1 && one.stderr.contains("\(command[0]) needs at least 2 ranks"), "\(one.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: "/tmp/unused-calibration.json"))
    }
}
