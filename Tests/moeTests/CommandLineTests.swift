import Foundation
@testable import Models
import Testing

/// The built `moe` binary, run as a user would.
enum MoEBinary {
    static let url: URL = {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [bundle, bundle.deletingLastPathComponent(), bundle.deletingLastPathComponent().deletingLastPathComponent()] {
            let u = candidate.appendingPathComponent("moe")
            if FileManager.default.isExecutableFile(atPath: u.path) { return u }
        }
        return bundle.appendingPathComponent("moe")
    }()

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        var lastLine: String { stdout.split(separator: "\n").last.map(String.init) ?? "" }
    }

    /// Runs `moe args…` to completion (bounded by `timeout` seconds).
    static func run(_ args: [String], environment: [String: String] = [:], timeout: Double = 120) throws -> Result {
        let p = Process()
        p.executableURL = url
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        p.environment = env
        return try wait(p, timeout: timeout)
    }

    /// Starts `p`, collects its output, and ends it if it outlives `timeout` seconds.
    static func wait(_ p: Process, timeout: Double) throws -> Result {
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        return collect(p, stdout: out, stderr: err, timeout: timeout)
    }

    /// Collects the output of the started `p` from its pipes, and ends it if it outlives `timeout` seconds.
    static func collect(_ p: Process, stdout out: Pipe, stderr err: Pipe, timeout: Double) -> Result {
        let group = DispatchGroup()
        nonisolated(unsafe) var o = Data(), e = Data()
        group.enter(); DispatchQueue.global().async { o = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        group.enter(); DispatchQueue.global().async { e = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(10_000) }
        if p.isRunning {
            p.terminate()
            let grace = Date().addingTimeInterval(5)
            while p.isRunning && Date() < grace { usleep(10_000) }
            // An mpirun whose ranks hang (one stuck in MPI_Finalize, say) may outlive SIGTERM, and the ranks hold
            // the output pipes open: kill them and it, so that the test fails instead of waiting for ever.
            if p.isRunning { killTree(p.processIdentifier) }
        }
        p.waitUntilExit()
        group.wait()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }
}

/// SIGKILL to `pid` and every process below it (found through /proc's parent ids). The whole tree is listed
/// before anything is killed, and the parent goes first: a parent whose child died first could end on its own
/// (a shell's `wait` returns 0) and look like a launch that finished cleanly.
func killTree(_ pid: Int32) {
    var tree = [pid]
    var next = 0
    while next < tree.count {
        tree += children(of: tree[next])
        next += 1
    }
    for p in tree { kill(p, SIGKILL) }
}

/// The processes whose parent is `pid`.
func children(of pid: Int32) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { entry -> Int32? in
        guard let child = Int32(entry),
              let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after the command's closing parenthesis: state, then the parent's pid.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 && Int32(fields[1]) == pid ? child : nil
    }
}

func fixture(_ name: String) -> String { MoEBinary.fixtures.appendingPathComponent(name).path }

@Suite(.serialized) struct CommandLineTests {
    @Test func forwardWritesLogitsAndRoutingThatMatchTransformers() throws {
        let expected = try SafeTensorsFile(path: fixture("tiny-qwen2moe") + "/expected.safetensors")
        let ids = UnsafeBufferPointer(start: expected.tensors["b.input_ids"]!.data.assumingMemoryBound(to: Int64.self), count: 6)
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("moe-forward-\(UUID().uuidString).safetensors").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        let r = try MoEBinary.run(["forward", "--model", fixture("tiny-qwen2moe"), "--input-ids",
                                   ids.map(String.init).joined(separator: ","), "--output", out])
        #expect(r.status == 0, "\(r.stderr)")
        let file = try SafeTensorsFile(path: out)
        #expect(file.tensors["logits"]?.shape == [6, 288])
        #expect(file.tensors["topk_ids"]?.shape == [3, 6, 2])
        #expect(file.tensors["topk_ids"]?.dtype == .I64)
        #expect(file.tensors["topk_weights"]?.shape == [3, 6, 2])
        let got = UnsafeBufferPointer(start: file.tensors["logits"]!.data.assumingMemoryBound(to: Float.self), count: 6 * 288)
        let want = UnsafeBufferPointer(start: expected.tensors["b.logits"]!.data.assumingMemoryBound(to: Float.self), count: 6 * 288)
        #expect(zip(got, want).map { abs($0 - $1) }.max()! < 1e-4)
        let gotIds = UnsafeBufferPointer(start: file.tensors["topk_ids"]!.data.assumingMemoryBound(to: Int64.self), count: 36)
        let wantIds = UnsafeBufferPointer(start: expected.tensors["b.topk_ids"]!.data.assumingMemoryBound(to: Int64.self), count: 36)
        #expect(Array(gotIds) == Array(wantIds))
    }

    @Test func generateJSONReportsTokensAndRates() throws {
        let r = try MoEBinary.run(["generate", "--model", fixture("tiny-mixtral"), "--prompt-ids", "43,255,161,190,193,228",
                                   "--max-new-tokens", "12", "--temperature", "0", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(r.lastLine.utf8)) as! [String: Any]
        #expect(json["tokens"] as? [Int] == [276, 257, 218, 173, 234, 151, 251, 219, 62, 276, 5, 162])
        #expect(json["prompt_tokens"] as? Int == 6)
        #expect(json["finish_reason"] as? String == "length")
        #expect((json["prefill_tokens_per_second"] as? Double ?? 0) > 0)
        #expect((json["decode_tokens_per_second"] as? Double ?? 0) > 0)

        let stop = try MoEBinary.run(["generate", "--model", fixture("tiny-mixtral"), "--prompt-ids", "43,255,161,190,193,228",
                                      "--max-new-tokens", "12", "--temperature", "0", "--stop-ids", "218", "--json"])
        let stopped = try JSONSerialization.jsonObject(with: Data(stop.lastLine.utf8)) as! [String: Any]
        #expect(stopped["tokens"] as? [Int] == [276, 257, 218])
        #expect(stopped["finish_reason"] as? String == "stop")
    }

    @Test func initModelWritesAFolderThatLoads() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("moe-init-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let w = try MoEBinary.run(["init-model", "--preset", "tiny", "--dtype", "bf16", "--output", dir])
        #expect(w.status == 0, "\(w.stderr)")
        let config = try ModelConfig.load(path: dir + "/config.json")
        #expect(config.modelType == "mixtral" && config.dtype == "bfloat16")
        #expect(try SafeTensorsFile(path: dir + "/model.safetensors").tensors["lm_head.weight"]?.dtype == .BF16)
        let g = try MoEBinary.run(["generate", "--model", dir, "--prompt-ids", "1,2,3", "--max-new-tokens", "4", "--json"])
        #expect(g.status == 0, "\(g.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(g.lastLine.utf8)) as! [String: Any]
        #expect((json["tokens"] as? [Int])?.count == 4)
    }

    /// `bench --prefill-chunk` prefills in passes of that many positions, as generate does (it used to run one
    /// pass whatever the flag said).
    @Test func benchPrefillsInChunks() throws {
        let b = try MoEBinary.run(["bench", "--preset", "tiny", "--batch", "2", "--prompt-len", "8", "--gen-len", "2",
                                   "--repetitions", "1", "--prefill-chunk", "3", "--format", "json"])
        #expect(b.status == 0, "\(b.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(b.lastLine.utf8)) as? [String: Any]
        #expect(json?["prefill_passes"] as? Int == 3)
    }

    /// `--weights-dtype q8` and `fp8` on the built-in preset: bench reports the type and the weights' bytes (about
    /// 0.27x of f32: the linear layers take 34 bytes per 32 weights or 132 per 128, the embeddings stay f32), and
    /// generate runs; an FP8 checkpoint reports fp8 without the flag.
    @Test func q8WeightsReportTheirTypeAndBytes() throws {
        func bench(_ extra: [String]) throws -> [String: Any] {
            let b = try MoEBinary.run(["bench", "--preset", "tiny", "--batch", "2", "--prompt-len", "8", "--gen-len", "4",
                                       "--repetitions", "1", "--format", "json"] + extra)
            #expect(b.status == 0, "\(b.stderr)")
            return try JSONSerialization.jsonObject(with: Data(b.lastLine.utf8)) as! [String: Any]
        }
        let f32 = try bench([])
        #expect(f32["weights_dtype"] as? String == "f32")
        for dtype in ["q8", "fp8"] {
            let q = try bench(["--weights-dtype", dtype])
            #expect(q["weights_dtype"] as? String == dtype)
            let ratio = Double(q["weight_bytes"] as? Int ?? 0) / Double(f32["weight_bytes"] as? Int ?? 1)
            #expect(ratio > 0.25 && ratio < 0.5, "\(dtype): \(ratio)")
            let g = try MoEBinary.run(["generate", "--preset", "tiny", "--prompt-ids", "5,9,1", "--max-new-tokens", "3", "--weights-dtype", dtype])
            #expect(g.status == 0, "\(g.stderr)")
        }
        let checkpoint = try MoEBinary.run(["bench", "--model", fixture("tiny-qwen3moe-fp8"), "--batch", "2", "--prompt-len", "8",
                                            "--gen-len", "4", "--repetitions", "1", "--format", "json"])
        #expect(checkpoint.status == 0, "\(checkpoint.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(checkpoint.lastLine.utf8)) as? [String: Any]
        #expect(json?["weights_dtype"] as? String == "fp8")
    }

    /// A reader that closed stdout before the results come (`moe bench | head -0`): one line on stderr and exit
    /// status 1, not a trap.
    @Test func aClosedStdoutIsOneErrorLine() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        close(fds[0])  // no reader from the start
        let p = Process()
        p.executableURL = MoEBinary.url
        p.arguments = ["bench", "--preset", "tiny", "--batch", "1", "--prompt-len", "4", "--gen-len", "2", "--repetitions", "1", "--format", "json"]
        let err = Pipe()
        p.standardOutput = FileHandle(fileDescriptor: fds[1], closeOnDealloc: true)
        p.standardError = err
        try p.run()
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationReason == .exit && p.terminationStatus == 1, "\(p.terminationReason) \(p.terminationStatus) \(message)")
        #expect(message.contains("moe: cannot write to standard output"), "\(message)")
    }

    @Test func builtInPresetAndBenchJSON() throws {
        let g = try MoEBinary.run(["generate", "--preset", "tiny", "--prompt-ids", "5,9,1", "--max-new-tokens", "3"])
        #expect(g.status == 0, "\(g.stderr)")
        let b = try MoEBinary.run(["bench", "--preset", "tiny", "--batch", "2", "--prompt-len", "8", "--gen-len", "4",
                                   "--repetitions", "1", "--format", "json"])
        #expect(b.status == 0, "\(b.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(b.lastLine.utf8)) as! [String: Any]
        for key in ["prefill_tokens_per_s", "decode_tokens_per_s", "prefill_gflops", "decode_gb_per_s"] {
            #expect((json[key] as? Double ?? 0) > 0, "\(key)")
        }
        #expect(json["batch"] as? Int == 2)
        #expect(json["prefill_passes"] as? Int == 1)
        // The whole run: 2 x (4 + 1) tokens over the prefill's and the decodes' seconds, as the two rates give them.
        let seconds = 2.0 * 8 / (json["prefill_tokens_per_s"] as? Double ?? 1) + 2.0 * 4 / (json["decode_tokens_per_s"] as? Double ?? 1)
        #expect(abs((json["output_tokens_per_s"] as? Double ?? 0) * seconds / 10 - 1) < 1e-9, "\(json)")
        for key in ["prefill_attention_share", "decode_attention_share"] {
            #expect((json[key] as? Double).map { $0 > 0 && $0 < 1 } == true, "\(key)")
        }
        #expect(json["sparse_fraction_per_layer"] as? [Double] == [0, 0])
        // Decode against the DRAM read bandwidth measured at start-up, or the one given.
        #expect(json["dram_gbps_source"] as? String == "measured")
        let dram = try #require(json["dram_gbps"] as? Double)
        #expect(dram > 0.1 && dram.isFinite, "\(dram)")
        #expect(abs((json["decode_dram_fraction"] as? Double ?? 0) - (json["decode_gb_per_s"] as? Double ?? -1) / dram) < 1e-9)
        let given = try MoEBinary.run(["bench", "--preset", "tiny", "--batch", "1", "--prompt-len", "4", "--gen-len", "2",
                                       "--repetitions", "1", "--dram-gbps", "12.5", "--compare"])
        #expect(given.status == 0, "\(given.stderr)")
        #expect(given.lastLine.contains("of the given DRAM read bandwidth (12.5 GB/s)"), "\(given.stdout)")
        // Two sequences of 8 + 4 + 1 positions (the warm-up's are shorter): one page of 16 each, at the peak.
        #expect(json["kv_page_size"] as? Int == 16 && json["kv_pages_peak"] as? Int == 2, "\(json)")
        // Routed by a policy: every other layer sparse for both sequences, and min-prompt above the prompt: none.
        let routed = ["bench", "--preset", "tiny", "--batch", "2", "--prompt-len", "8", "--gen-len", "2", "--repetitions", "1",
                      "--format", "json", "--attention", "routed", "--sparse-sink", "0", "--sparse-window", "4", "--sparse-block", "1"]
        for (policy, want) in [("fraction=0.5", [0.0, 1.0]), ("fraction=0.5;min-prompt=9", [0.0, 0.0])] {
            let r = try MoEBinary.run(routed + ["--router-policy", policy])
            #expect(r.status == 0, "\(r.stderr)")
            let j = try JSONSerialization.jsonObject(with: Data(r.lastLine.utf8)) as! [String: Any]
            #expect(j["sparse_fraction_per_layer"] as? [Double] == want, "\(policy)")
        }
    }

    /// Bad input: one line on stderr naming the problem, exit 1; bad flags: exit 64.
    @Test(arguments: [
        (["forward", "--model", "/nonexistent", "--input-ids", "1", "--output", "/tmp/x.safetensors"], "/nonexistent: no such file"),
        (["forward", "--model", fixture("tiny-mixtral"), "--input-ids", "1,320", "--output", "/tmp/x.safetensors"],
         "token id 320 is outside the vocabulary (0..<320)"),
        (["generate", "--model", fixture("tiny-mixtral"), "--prompt-ids", ""], "the prompt is empty"),
        (["generate", "--model", fixture("tiny-olmoe"), "--prompt-ids", "1", "--stop-ids", "4000"], "token id 4000 is outside"),
        (["trace", "--model", fixture("tiny-olmoe"), "--prompt-ids", "1", "--output", "/nonexistent/t.jsonl"],
         "/nonexistent/t.jsonl: cannot write: No such file or directory"),
        (["trace", "--model", fixture("tiny-mixtral"), "--prompt-ids", "1,320", "--output", "/tmp/unused-trace.jsonl"],
         "token id 320 is outside the vocabulary"),
        (["generate", "--model", fixture("tiny-mixtral"), "--prompt-ids", "1,2,3", "--max-new-tokens", "10", "--max-model-len", "12"],
         "the prompt (3 tokens) and max_new_tokens (10) need 13 positions, beyond the model's 12 (--max-model-len)"),
        (["generate", "--model", fixture("tiny-olmoe"), "--prompt-ids", "1", "--max-new-tokens", "300"],
         "need 301 positions, beyond the model's 256 (--max-model-len)"),
        (["bench", "--preset", "tiny", "--prompt-len", "40000", "--gen-len", "2"], "need 40002 positions, beyond the model's 32768"),
        (["generate", "--model", fixture("tiny-mixtral"), "--prompt-ids", "1", "--attention", "routed"],
         "has no router weights (self_attn.mask_allocator.*); give --router-policy with layers= or fraction="),
        (["generate", "--model", fixture("tiny-mixtral"), "--prompt-ids", "1", "--attention", "routed", "--router-policy", "layers=1,3"],
         "--router-policy: layer 3 is past the model's 3 layers"),
        (["generate", "--model", fixture("tiny-mixtral"), "--prompt-ids", "1,2,3", "--max-new-tokens", "20", "--page-size", "4", "--kv-memory", "12K"],
         "the prompt (3 tokens) and max_new_tokens (20) need 6 KV pages of 4 tokens, beyond the pool's 4 (--kv-memory, --page-size)"),
        (["forward", "--model", fixture("tiny-mixtral"), "--input-ids", Array(1...17).map(String.init).joined(separator: ","), "--output",
          "/tmp/unused.safetensors", "--page-size", "4", "--kv-memory", "12K"],
         "the prompt (17 tokens) and max_new_tokens (0) need 5 KV pages of 4 tokens, beyond the pool's 4"),
    ] as [([String], String)])
    func badInputFailsWithOneLine(args: [String], message: String) throws {
        let r = try MoEBinary.run(args)
        #expect(r.status == 1)
        #expect(r.stderr.contains(message), "\(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1)
    }

    /// A request line's sampling fields: integers must be integers (a huge one was a trap before), penalties in range.
    @Test(arguments: [
        (#""top_k": 1.5"#, "'top_k' must be an integer"), (#""top_k": 1e300"#, "'top_k' must be an integer"),
        (#""seed": 2.5"#, "'seed' must be an integer"), (#""arrival_step": 1e19"#, "'arrival_step' must be an integer"),
        (#""presence_penalty": 9"#, "presence_penalty must be in [-2, 2], got 9.0"), (#""repetition_penalty": -1"#, "repetition_penalty must be"),
        (#""min_tokens": "3""#, "'min_tokens' must be a number"),
    ])
    func badSamplingInARequestLineNamesIt(field: String, message: String) throws {
        let requests = TemporaryPath(".jsonl")
        try #"{"id": "a", "prompt_ids": [1, 2], "max_new_tokens": 3, \#(field)}"#.write(toFile: requests.path, atomically: true, encoding: .utf8)
        let r = try MoEBinary.run(["generate", "--model", fixture("tiny-mixtral"), "--requests", requests.path])
        #expect(r.status == 1 && r.stderr.contains("\(requests.path):1: \(message)"), "\(r.stderr)")
    }

    /// The harness itself: a launch that ignores SIGTERM and leaves a child holding its output open still ends
    /// soon after its timeout (as an mpirun whose ranks hang would), so a hang fails a test instead of CI.
    @Test func aLaunchThatIgnoresSIGTERMIsKilledWithItsChildren() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = ["-c", "trap '' TERM; sleep 300 & wait"]
        let start = Date()
        let r = try MoEBinary.wait(p, timeout: 1)
        #expect(Date().timeIntervalSince(start) < 20)
        #expect(r.status != 0)
    }

    @Test func modelTooLargeForMemoryIsRefused() throws {
        let r = try MoEBinary.run(["generate", "--model", fixture("tiny-mixtral"), "--prompt-ids", "1"],
                                  environment: ["MOE_MEMORY_LIMIT": "1000"])
        #expect(r.status == 1)
        let weights = try SafeTensorsFile(path: fixture("tiny-mixtral") + "/model.safetensors").tensors.values.reduce(0) { $0 + $1.byteCount }
        #expect(r.stderr.contains("model needs \(Bytes.format(weights)) of memory but only 1.00 kB is available"), "\(r.stderr)")
    }

    @Test(arguments: [
        ["forward", "--input-ids", "1,x", "--output", "/tmp/x"],
        ["generate", "--prompt-ids", "1", "--max-new-tokens", "0"],
        ["trace", "--prompt-ids", "1", "--requests", "r.jsonl", "--output", "/tmp/x"],
        ["generate", "--prompt-ids", "1", "--temperature", "-2"],
        ["bench", "--batch", "0"],
        ["bench", "--format", "xml"],
        ["init-model", "--preset", "huge", "--output", "/tmp/x"],
        ["init-model", "--preset", "tiny", "--dtype", "int8", "--output", "/tmp/x"],
        ["generate", "--preset", "gigantic", "--prompt-ids", "1"],
        ["generate", "--prompt-ids", "1", "--weights-dtype", "f8"],
        ["bench", "--weights-dtype", "q4"],
        ["init-model", "--preset", "tiny", "--dtype", "q8", "--output", "/tmp/x"],
        ["kernel-bench", "--dtype", "q4"],
        ["generate", "--prompt-ids", "1", "--max-model-len", "0"],
        ["generate", "--prompt-ids", "1", "--prefill-chunk", "0"],
        ["generate", "--prompt-ids", "1", "--attention", "sparse", "--sparse-sink", "100"],
        ["generate", "--prompt-ids", "1", "--attention", "sparse", "--sparse-window", "0"],
        ["generate", "--prompt-ids", "1", "--attention", "sparse", "--sparse-kind", "quest"],
        ["generate", "--prompt-ids", "1", "--attention", "sparse", "--sparse-kind", "topk", "--sparse-sink", "128", "--decode-budget", "128"],
        ["generate", "--prompt-ids", "1", "--attention", "dense"],
        ["generate", "--prompt-ids", "1", "--attention", "routed", "--router-policy", "fraction=2"],
        ["generate", "--prompt-ids", "1", "--attention", "routed", "--router-policy", "every-other"],
        ["generate", "--prompt-ids", "1", "--attention", "sparse", "--router-policy", "fraction=0.5"],
        ["generate", "--prompt-ids", "1", "--attention", "routed", "--router-pool", "0"],
        ["generate", "--prompt-ids", "1", "--page-size", "0"],
        ["generate", "--prompt-ids", "1", "--attention", "sparse", "--sparse-kind", "topk", "--page-size", "0"],
        ["generate", "--prompt-ids", "1", "--kv-memory", "12Q"],
        ["generate", "--prompt-ids", "1", "--kv-memory", "-5"],
        ["generate", "--prompt-ids", "1", "--presence-penalty", "3"],
        ["generate", "--prompt-ids", "1", "--repetition-penalty", "0"],
        ["generate", "--prompt-ids", "1", "--min-tokens", "-1"],
        ["generate", "--prompt-ids", "1", "--max-step-tokens", "0"],
        ["bench", "--dram-gbps", "0"],
        ["serve", "--max-step-tokens", "0"],
        ["serve", "--step-time-target", "1x"],
        ["generate", "--prompt-ids", "1", "--step-time-target", "fast"],
        ["generate", "--prompt-ids", "1", "--step-time-target", "-5ms"],
        ["bench", "serve", "--base-url", "http://127.0.0.1:1", "--long-prompt-len", "0"],
        ["bench", "serve", "--base-url", "http://127.0.0.1:1", "--long-prompt-len", "9", "--long-prompt-at=-1"],
        ["bench", "serve", "--base-url", "http://127.0.0.1:1", "--random-prefix-len=-1"],
        ["bench", "serve", "--base-url", "http://127.0.0.1:1", "--random-prefix-len", "4", "--dataset", "d.jsonl"],
        ["no-such-command"],
    ])
    func badFlagsExitWithUsageCode(args: [String]) throws {
        let r = try MoEBinary.run(args)
        #expect(r.status == 64, "\(args): \(r.stderr)")
    }
}
