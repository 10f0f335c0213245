import ArgumentParser
import Comm
import Foundation

extension MoE {
    /// `moe comm-bench`: what one communication round costs between the ranks of this job.
    struct CommBench: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "comm-bench",
            abstract: "Under mpirun: seconds per all-to-all, point-to-point exchange and allgather, by message size.",
            discussion: """
            Every rank sends SIZE bytes to every other rank per call, --iterations calls after a warm-up; the median \
            over --rounds rounds of the per-call time is reported. The link's latency is the 0-byte figure, its \
            bandwidth the slope between the largest sizes. One JSON object per size with --format json.
            """)

        @Option(help: "Message sizes in bytes, comma-separated.")
        var sizes: String = "0,1024,16384,131072,1048576"

        @Option(help: "Calls per round.")
        var iterations: Int = 50

        @Option(help: "Rounds (the median per-call time is reported).")
        var rounds: Int = 5

        @Option(help: "Output: md (a table) or json (one object per size).")
        var format: String = "md"

        /// MPI for a command that measures between ranks (`comm-bench`, `calibrate`): outside mpirun, or on one
        /// rank, it says so and exits 1.
        static func measuringCommunicator(_ command: String) throws -> MPICommunicator {
            guard MPICommunicator.launchedByMPI else {
                FileHandle.standardError.write(Data("moe: error: \(command) measures between ranks: start it with mpirun -np 2 or more\n".utf8))
                throw ExitCode(1)
            }
            let comm = try MPICommunicator()
            guard comm.size > 1 else {
                FileHandle.standardError.write(Data("moe: error: \(command) needs at least 2 ranks\n".utf8))
                comm.finalize()
                throw ExitCode(1)
            }
            return comm
        }

        func parsedSizes() throws -> [Int] {
            let parts = sizes.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !parts.isEmpty, parts.allSatisfy({ $0 != nil && $0! >= 0 && $0! <= 1 << 28 }) else {
                throw ValidationError("--sizes takes byte counts from 0 to 268435456 separated by commas, not '\(sizes)'")
            }
            return parts.map { $0! }
        }

        func validate() throws {
            _ = try parsedSizes()
            if iterations < 1 { throw ValidationError("--iterations must be at least 1") }
            if rounds < 1 { throw ValidationError("--rounds must be at least 1") }
            if format != "md" && format != "json" { throw ValidationError("--format must be md or json") }
        }

        func run() throws {
            let comm = try Self.measuringCommunicator("comm-bench")
            defer { comm.finalize() }
            if comm.rank == 0 && format == "md" {
                emit("| bytes per peer | all-to-all µs | exchange µs | allgather µs |")
                emit("|---|---|---|---|")
            }
            for size in try parsedSizes() {
                let block = [UInt8](repeating: 7, count: size)
                let blocks = Array(repeating: block, count: comm.size)
                let peers = Dictionary(uniqueKeysWithValues: (0..<comm.size).filter { $0 != comm.rank }.map { ($0, block) })
                let expect = peers.mapValues { $0.count }
                func time(_ body: () throws -> Void) throws -> Double {
                    try body()  // warm-up
                    try comm.barrier()
                    var perCall: [Double] = []
                    for _ in 0..<rounds {
                        let start = DispatchTime.now().uptimeNanoseconds
                        for _ in 0..<iterations { try body() }
                        perCall.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 / Double(iterations))
                    }
                    return perCall.sorted()[perCall.count / 2]
                }
                let gather = try time { _ = try comm.allgatherv(block) }
                let exchange = try time { _ = try comm.exchange(send: peers, receive: expect) }
                let a2a = try time { _ = try comm.alltoallv(blocks, kind: .dispatch) }
                guard comm.rank == 0 else { continue }
                if format == "json" {
                    emit(try jsonLine(["ranks": comm.size, "bytes": size, "alltoall_s": a2a, "exchange_s": exchange, "allgather_s": gather]))
                } else {
                    emit(String(format: "| %d | %.1f | %.1f | %.1f |", size, a2a * 1e6, exchange * 1e6, gather * 1e6))
                }
            }
        }
    }
}
