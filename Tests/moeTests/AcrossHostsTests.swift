import Foundation
@testable import Models
import Testing

/// The cluster across two network-namespace hosts (`Deploy/netns-cluster.sh`): one rank per host over TCP.
/// Needs root (CI runs as root); elsewhere the suite is skipped, saying why.
@Suite(.serialized, .enabled(if: MPIRun.canMakeHosts, "needs root with ip and unshare to make namespace hosts"))
struct AcrossHostsTests {
    /// Every mode, contiguous and shuffled placements: the single process's greedy tokens, and forward logits
    /// within 1e-4 with identical experts.
    @Test(arguments: [("ep2", false), ("coherent", false), ("coherent", true), ("auto", true)])
    func twoHostsGiveTheSingleProcessResult(mode: String, shuffled: Bool) throws {
        let ref = Reference.all["tiny-mixtral"]!
        let plan = shuffled ? try shuffledPlan(layers: ref.spec.layers, experts: ref.spec.experts, ranks: 2, topK: ref.spec.topK) : nil
        let calibration = TemporaryPath(".json")
        try #"{"latency_s": 3e-5, "bandwidth_bytes_per_s": 8e8, "stream_rows": [1, 8], "stream_s_per_byte": [1e-10, 2e-10]}"#
            .write(toFile: calibration.path, atomically: true, encoding: .utf8)
        let placement = (plan.map { ["--placement", $0.path] } ?? []) + (mode == "auto" ? ["--calibration", calibration.path] : [])
        let prompt = ref.prompt.map(String.init).joined(separator: ",")
        let g = try MPIRun.startAcrossHosts(2, ["-np", "2", MoEBinary.url.path, "generate", "--model", fixture("tiny-mixtral"), "--prompt-ids", prompt,
                                                "--max-new-tokens", "8", "--temperature", "0", "--json", "--dispatch", mode] + placement)
            .finish(timeout: 120)
        #expect(g.status == 0, "\(g.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(g.lastLine.utf8)) as? [String: Any]
        #expect(json?["tokens"] as? [Int] == ref.greedy)

        let out = TemporaryPath(".safetensors")
        let f = try MPIRun.startAcrossHosts(2, ["-np", "2", MoEBinary.url.path, "forward", "--model", fixture("tiny-mixtral"), "--input-ids", prompt,
                                                "--output", out.path, "--dispatch", mode] + placement).finish(timeout: 120)
        #expect(f.status == 0, "\(f.stderr)")
        let file = try SafeTensorsFile(path: out.path)
        #expect(zip(file.floats("logits"), ref.logits).map { abs($0 - $1) }.max()! < 1e-4)
        #expect(file.ints("topk_ids") == ref.ids)
    }

    /// A shaped link (tbf) changes the speed, not the tokens.
    @Test func aShapedLinkGivesTheSameTokens() throws {
        let ref = Reference.all["tiny-olmoe"]!
        let g = try MPIRun.startAcrossHosts(2, options: ["--rate", "100mbit"],
                                            ["-np", "2", MoEBinary.url.path, "generate", "--model", fixture("tiny-olmoe"), "--prompt-ids",
                                             ref.prompt.map(String.init).joined(separator: ","), "--max-new-tokens", "8", "--temperature", "0", "--json"])
            .finish(timeout: 120)
        #expect(g.status == 0, "\(g.stderr)")
        #expect((try JSONSerialization.jsonObject(with: Data(g.lastLine.utf8)) as? [String: Any])?["tokens"] as? [Int] == ref.greedy)
    }

    /// Rank 1 (on the second host) killed mid-run: the job ends within 30 s naming it, the finished result stays
    /// written, and the script leaves no namespace or /etc/hosts line behind.
    @Test func aKilledRankOnTheOtherHostEndsTheJob() throws {
        let k = try killRankOneMidRun { requests, pids in
            try MPIRun.startAcrossHosts(2, ["-np", "2", MoEBinary.url.path, "generate", "--preset", "tiny", "--requests", requests, "--max-model-len", "200000"],
                                        environment: ["MOE_PID_DIR": pids])
        }
        #expect(k.ended && k.seconds < 30)
        #expect(k.result.status != 0)
        #expect(k.result.stderr.contains("rank 1"), "\(k.result.stderr)")
        #expect(k.stdout.contains(#""id":"quick""#))
        let hosts = try String(contentsOfFile: "/etc/hosts", encoding: .utf8)
        #expect(!hosts.contains("moe netns-cluster"), "\(hosts)")
    }

    /// Ctrl-C (SIGINT) or SIGTERM to the script mid-run: it ends within 10 s and leaves no namespace, no
    /// `/etc/hosts` line and no folder of its own (nor mpirun's session folder, which lives inside it).
    @Test(arguments: [SIGINT, SIGTERM])
    func aSignalMidRunLeavesNothingBehind(signal: Int32) throws {
        func namespaces() -> Set<String> {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["ip", "netns", "list"]
            let r = (try? MoEBinary.wait(p, timeout: 10))?.stdout ?? ""
            return Set(r.split(separator: "\n").map { String($0.split(separator: " ").first ?? "") }.filter { $0.hasPrefix("moe") })
        }
        func folders() -> Set<String> {
            Set(((try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? []).filter { $0.hasPrefix("moe-netns-") })
        }
        let before = namespaces(), foldersBefore = folders()
        let launch = try MPIRun.startAcrossHosts(2, ["-np", "2", "sleep", "60"])
        let deadline = Date().addingTimeInterval(20)
        while namespaces().subtracting(before).count < 3 && Date() < deadline { usleep(100_000) }
        #expect(namespaces().subtracting(before).count == 3, "2 hosts and the switch should exist while it runs")
        kill(launch.process.processIdentifier, signal)
        let sent = Date()
        let r = launch.finish(timeout: 15)
        #expect(Date().timeIntervalSince(sent) < 10)
        #expect(r.status != 0)
        #expect(namespaces().subtracting(before).isEmpty)
        #expect(folders().subtracting(foldersBefore).isEmpty)
        #expect(!((try? String(contentsOfFile: "/etc/hosts", encoding: .utf8)) ?? "").contains("moe netns-cluster"))
    }

    /// Bad arguments to the script: a message and exit 2, nothing made.
    @Test(arguments: [(["--hosts", "0", "--", "true"], "--hosts must be 1-99"), (["--rate", "fast", "--", "true"], "--rate takes a tc rate"),
                      (["--hosts", "2"], "nothing to run"), (["--cores", "0", "--", "true"], "--cores has 1 lists for 2 hosts")])
    func badArgumentsAreRefused(args: [String], message: String) throws {
        let p = Process()
        p.executableURL = LaunchSiteTests.root.appendingPathComponent("Deploy/netns-cluster.sh")
        p.arguments = args
        let r = try MoEBinary.wait(p, timeout: 30)
        #expect(r.status == 2)
        #expect(r.stderr.contains(message), "\(r.stderr)")
    }
}
