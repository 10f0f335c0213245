import ArgumentParser
import Cluster
import Comm
import Foundation
import Kernels
import Models
import Placement

extension MoE {
    /// `moe calibrate`: the rates the step-time model needs, measured by microbenchmarks on this job's ranks.
    struct Calibrate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Under mpirun: measure a round's latency, the link's bandwidth and weight streaming per token rows; write them as JSON.",
            discussion: """
            Every rank streams weights through the decode path at once: with --model its own experts of a contiguous \
            placement (gate, up, SiLU-GLU, down), else synthetic matrices of the expert's shapes in --dtype, \
            for 1 to 8, 10, 12, 16, 24 and 32 token rows, so they share memory as in a run; the ranks' mean seconds \
            per byte are kept. Latency is the median 0-byte all-to-all; bandwidth comes from 1 MiB blocks. The file \
            feeds `bench --dispatch auto --calibration FILE` and `moe predict`.
            """)

        @OptionGroup var modelOptions: ModelOptions

        @Option(help: "Weight type of the synthetic streaming benchmark (without --model): f32, bf16 or f16.")
        var dtype: String = "bf16"

        @Option(help: "MiB of distinct weights each streaming pass reads (more than the caches hold).")
        var streamMib: Int = 256

        @Option(help: "Output calibration file (JSON).")
        var output: String

        func validate() throws {
            guard ElementType.stored(dtype) != nil else { throw ValidationError("--dtype must be f32, bf16 or f16") }
            if !(1...65536).contains(streamMib) { throw ValidationError("--stream-mib must be between 1 and 65536") }
        }

        func run() throws {
            let comm = try MoE.CommBench.measuringCommunicator("calibrate")
            defer { comm.finalize() }
            let localRanks = Int(ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"] ?? "1") ?? 1
            Parallel.configure(workers: modelOptions.threads ?? max(1, System.coreCount / max(localRanks, 1)))
            var failure: String?
            var spec: DecoderSpec?
            var model: MoEDecoder?  // with --model: this rank's contiguous shard, whose experts are streamed
            do {
                let s = try modelOptions.spec()
                spec = s
                if modelOptions.model != nil {
                    let table = Placement.contiguous(layers: s.layers, experts: s.experts, ranks: comm.size).rankOf, rank = comm.rank
                    model = try modelOptions.load(holding: { layer, expert in table[layer][expert] == rank })
                }
            } catch { failure = "\(error)" }
            do { _ = try Agreement.agree(comm, error: failure, expertBytes: 0) } catch {
                if comm.rank == 0 { FileHandle.standardError.write(Data("moe: error: \(error)\n".utf8)) }
                throw ExitCode(1)
            }
            let c = try Self.measure(comm, spec: spec!, type: ElementType(rawValue: dtype)!, streamBytes: streamMib << 20,
                                     experts: model?.bank.experts.joined().compactMap { $0 } ?? [])
            if comm.rank == 0 {
                try reportingErrors {
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
                    try encoder.encode(c).write(to: URL(fileURLWithPath: output))
                    emit(String(format: "latency %.1f us per round, bandwidth %.2f GB/s, streaming %@ GB/s at %@ token rows",
                                c.latency * 1e6, c.bandwidth / 1e9, c.secondsPerByte.map { String(format: "%.1f", 1 / $0 / 1e9) }.joined(separator: "/"),
                                c.rows.map(String.init).joined(separator: "/")))
                }
            }
        }

        /// Token-row counts at which weight streaming is measured.
        static let streamRows = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32]

        /// The microbenchmarks, on every rank (collective).
        /// `experts`: this rank's loaded experts (a running job's), streamed instead of synthetic matrices.
        static func measure(_ comm: Communicator, spec: DecoderSpec, type: ElementType, streamBytes: Int = 256 << 20,
                            experts: [FeedForwardWeights] = []) throws
            -> StepTimeModel.Calibration {
            func perCall(_ iterations: Int, _ body: () throws -> Void) throws -> Double {
                try body()
                try comm.barrier()
                var times: [Double] = []
                for _ in 0..<5 {
                    let start = Clock.now
                    for _ in 0..<iterations { try body() }
                    times.append(Clock.since(start) / Double(iterations))
                }
                return times.sorted()[2]
            }
            let empty = [[UInt8]](repeating: [], count: comm.size)
            let latency = try perCall(100) { _ = try comm.alltoallv(empty, kind: .dispatch) }
            let big = [[UInt8]](repeating: [UInt8](repeating: 1, count: 1 << 20), count: comm.size)
            let bigCall = try perCall(5) { _ = try comm.alltoallv(big, kind: .dispatch) }
            let bandwidth = Double((comm.size - 1) << 20) / max(bigCall - latency, 1e-9)

            // Streaming, more weights than the caches hold per pass: this rank's own experts where it holds them
            // (the decode path itself: gate, up, SiLU-GLU, down, on the checkpoint's weights), else distinct
            // synthetic matrices of the expert's two shapes. Row counts take turns over 6 rounds (so a slow spell of
            // the machine spreads over all of them); the median round counts.
            let h = spec.hiddenSize, f = spec.expertIntermediate
            // Every count to 8 (the decode kernel takes token rows in pairs, so an odd count costs as the even one above
            // it and straight lines between powers of two miss that), then sparser.
            let counts = Self.streamRows
            let x = [Float](repeating: 0.5, count: counts.last! * max(h, f))
            var y = [Float](repeating: 0, count: counts.last! * 2 * max(h, f))
            var ffnScratch = [Float](repeating: 0, count: counts.last! * 2 * f)
            var held: [FeedForwardWeights] = [], heldBytes = 0
            for e in experts where heldBytes < streamBytes {
                held.append(e)
                heldBytes += e.byteCount
            }
            let per = h * f * type.byteSize
            let matrices = held.isEmpty ? max(2, streamBytes / per) : 0
            let storage = UnsafeMutableRawPointer.allocate(byteCount: max(1, per * matrices), alignment: 64)
            defer { storage.deallocate() }
            if matrices > 0 {
                let scratch = UnsafeMutablePointer<Float>.allocate(capacity: type == .f32 ? 1 : h * f * matrices)
                defer { scratch.deallocate() }
                SyntheticModel.encode(name: "calibrate", count: h * f * matrices, dtype: type, scratch: scratch, into: storage)
            }
            let passBytes = held.isEmpty ? per * matrices : heldBytes
            func pass(_ n: Int) {
                x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { yp in
                        if held.isEmpty {
                            for m in 0..<matrices {
                                let (rows, cols) = m % 2 == 0 ? (f, h) : (h, f)
                                let w = WeightMatrix(rows: rows, cols: cols, type: type, base: UnsafeRawPointer(storage + m * per), owner: nil)
                                GEMM.linear(xp.baseAddress!, tokens: n, weight: w, into: yp.baseAddress!)
                            }
                        } else {
                            ffnScratch.withUnsafeMutableBufferPointer { sp in
                                for e in held { e.apply(xp.baseAddress!, rows: n, scratch: sp.baseAddress!, into: yp.baseAddress!) }
                            }
                        }
                    }
                }
            }
            var samples = [[Double]](repeating: [], count: counts.count)
            for round in 0..<7 {
                for (i, n) in counts.enumerated() {
                    try comm.barrier()
                    let start = Clock.now
                    pass(n)
                    if round > 0 { samples[i].append(Clock.since(start) / Double(passBytes)) }  // round 0 warms up
                }
            }
            let secondsPerByte = samples.map { $0.sorted()[$0.count / 2] }
            // Latency and bandwidth: the worst rank's; streaming: the ranks' mean (each rank's own in a run).
            let mine = ([latency, bandwidth] + secondsPerByte).withUnsafeBytes { Array($0) }
            let all = try comm.allgatherv(mine).map { b in
                (0..<(b.count / 8)).map { i in b.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8 * i, as: Double.self) } }
            }
            let slowest = (0..<(2 + counts.count)).map { i -> Double in
                let column = all.map { $0[i] }
                switch i {
                case 0: return column.max()!
                case 1: return column.min()!
                default: return column.reduce(0, +) / Double(column.count)
                }
            }
            return StepTimeModel.Calibration(latency: slowest[0], bandwidth: slowest[1], rows: counts, secondsPerByte: Array(slowest[2...]))
        }
    }
}

