import Foundation
import Testing
import Yams

/// What `Deploy/` ships for real clusters, read as the tools that use it would: the MPIJob manifest, the Slurm
/// script and launch wrapper (bash -n, shellcheck where installed), and the container file's build steps.
@Suite struct DeployTests {
    static let root = LaunchSiteTests.root

    static func text(_ path: String) throws -> String { try String(contentsOf: root.appendingPathComponent(path), encoding: .utf8) }

    @Test func mpiJobManifestIsAKubeflowV2MPIJob() throws {
        let doc = try #require(try Yams.load(yaml: Self.text("Deploy/mpijob.yaml")) as? [String: Any])
        #expect(doc["apiVersion"] as? String == "kubeflow.org/v2beta1")
        #expect(doc["kind"] as? String == "MPIJob")
        let spec = try #require(doc["spec"] as? [String: Any])
        let slots = try #require(spec["slotsPerWorker"] as? Int)
        let replicas = try #require(spec["mpiReplicaSpecs"] as? [String: Any])
        #expect(Set(replicas.keys) == ["Launcher", "Worker"])
        func container(_ role: String) throws -> (replicas: Int, command: [String], args: [String]) {
            let r = try #require(replicas[role] as? [String: Any])
            let c = try #require(((r["template"] as? [String: Any])?["spec"] as? [String: Any])?["containers"] as? [[String: Any]])
            return (r["replicas"] as? Int ?? -1, c.first?["command"] as? [String] ?? [], c.first?["args"] as? [String] ?? [])
        }
        let launcher = try container("Launcher"), worker = try container("Worker")
        #expect(launcher.replicas == 1)
        #expect(worker.replicas >= 2)
        // The launcher runs mpirun through the project's wrapper, on as many ranks as the workers have slots.
        #expect(launcher.command == ["/opt/moe/Scripts/mpirun.sh"])
        let np = try #require(launcher.args.firstIndex(of: "-np"))
        #expect(Int(launcher.args[np + 1]) == worker.replicas * slots)
        // The ranks run the binary the container file builds, with a subcommand moe has; the workers run sshd.
        let binary = try #require(launcher.args.firstIndex { $0.hasSuffix("/moe") })
        #expect(launcher.args[binary] == "/opt/moe/.build/release/moe")
        #expect(["bench", "generate", "forward", "trace"].contains(launcher.args[binary + 1]))
        #expect(worker.command == ["/usr/sbin/sshd"])
        let containerfile = try Self.text("Deploy/Containerfile")
        #expect(containerfile.contains("WORKDIR /opt/moe") && containerfile.contains("openssh-server"))
        // The arguments after the subcommand are ones moe takes: the built binary parses them (bench on the
        // tiny preset, one step).
        var args = Array(launcher.args[(binary + 1)...])
        for (flag, value) in [("--preset", "tiny"), ("--gen-len", "1"), ("--prompt-len", "2"), ("--batch", "1")] {
            if let i = args.firstIndex(of: flag) { args[i + 1] = value } else { args += [flag, value] }
        }
        let r = try MoEBinary.run(args + ["--repetitions", "1"])
        #expect(r.status == 0, "\(args): \(r.stderr)")
    }

    /// The container file builds with exactly the README's build commands, in its order.
    @Test func containerFileStepsAreTheREADMEs() throws {
        let readme = try Self.text("README.md")
        let section = try #require(readme.components(separatedBy: "## Build\n").dropFirst().first)
        let block = try #require(section.components(separatedBy: "```sh\n").dropFirst().first?.components(separatedBy: "```").first)
        let commands = block.split(separator: "\n").map { $0.split(separator: "#").first.map { String($0).trimmingCharacters(in: .whitespaces) } ?? "" }
            .filter { !$0.isEmpty }
        #expect(commands == ["Scripts/setup.sh", "swift build -c release --product moe"])
        let runs = try Self.text("Deploy/Containerfile").split(separator: "\n").filter { $0.hasPrefix("RUN ") }.map { String($0.dropFirst(4)) }
        #expect(Array(runs.prefix(commands.count)) == commands, "\(runs)")
    }

    @Test(arguments: ["Deploy/moe.sbatch", "Deploy/launch.sh", "Deploy/netns-cluster.sh", "Scripts/mpirun.sh"])
    func shellScriptsParse(path: String) throws {
        let file = Self.root.appendingPathComponent(path).path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = ["-n", file]
        let r = try MoEBinary.wait(p, timeout: 30)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileManager.default.isExecutableFile(atPath: file))
        if let shellcheck = ["/usr/bin/shellcheck", "/usr/local/bin/shellcheck"].first(where: FileManager.default.isExecutableFile(atPath:)) {
            let s = Process()
            s.executableURL = URL(fileURLWithPath: shellcheck)
            s.arguments = ["-S", "warning", file]
            let c = try MoEBinary.wait(s, timeout: 60)
            #expect(c.status == 0, "\(c.stdout)")
        }
    }

    @Test func slurmScriptAsksForOneRankPerNode() throws {
        let text = try Self.text("Deploy/moe.sbatch")
        #expect(text.contains("#SBATCH --ntasks-per-node=1"))
        #expect(text.contains("Scripts/mpirun.sh") && text.contains("--map-by ppr:1:node"))
    }

    /// The wrapper for real machines refuses what it cannot run, with exit 2 and a message.
    @Test(arguments: [([String](), "--hostfile is required"), (["--hostfile", "/nonexistent"], "/nonexistent: no such file"),
                      (["--hostfile", "Deploy/hostfile.example"], "nothing to run"),
                      (["--hostfile", "Deploy/hostfile.example", "--np", "x", "--", "bench"], "--np must be a positive integer"),
                      (["--hostfile", "Deploy/hostfile.example", "--subnet", "eth0", "--", "bench"], "--subnet takes a CIDR")])
    func launchWrapperRefusesBadArguments(args: [String], message: String) throws {
        let p = Process()
        p.executableURL = Self.root.appendingPathComponent("Deploy/launch.sh")
        p.arguments = args
        p.currentDirectoryURL = Self.root
        let r = try MoEBinary.wait(p, timeout: 30)
        #expect(r.status == 2)
        #expect(r.stderr.contains(message), "\(r.stderr)")
    }
}
