import ArgumentParser
import Foundation
import Kernels
import Models

extension MoE {
    /// `moe kernel-bench`: the bandwidth one weight product reaches for a given token count (a tuning aid).
    struct KernelBench: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "kernel-bench",
            abstract: "Measure GB/s of weights streamed by x·Wᵀ over many distinct [rows, cols] matrices.",
            discussion: "Used to place GEMM.smallBatch, where the streaming kernel hands over to sgemm.",
            shouldDisplay: false)

        @Option(help: "Tokens (rows of x).")
        var tokens: Int = 2

        @Option(help: "Kernel threads.")
        var threads: Int = System.coreCount

        @Option(help: "Distinct matrices, so the weights come from DRAM rather than cache.")
        var matrices: Int = 64

        @Option(help: "Rows (output features) and columns (input features) of each matrix.")
        var rows: Int = 2816
        @Option var cols: Int = 1024

        @Option(help: "Weight type: f32, bf16, f16, q8 or fp8 (f32 weights quantized in blocks of 32 or 128 columns).")
        var dtype: String = "f32"

        func validate() throws {
            guard ElementType(rawValue: dtype) != nil else { throw ValidationError("--dtype must be f32, bf16, f16, q8 or fp8") }
            guard tokens > 0, threads > 0, matrices > 0, rows > 0, cols > 0 else { throw ValidationError("counts must be positive") }
        }

        func run() throws {
            Parallel.configure(workers: threads)
            let type = ElementType(rawValue: dtype)!
            let stored = type.isBlocked ? ElementType.f32 : type
            let per = rows * cols * stored.byteSize
            let storage = UnsafeMutableRawPointer.allocate(byteCount: per * matrices, alignment: 64)
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: stored == .f32 ? 1 : rows * cols * matrices)
            defer { storage.deallocate(); scratch.deallocate() }
            SyntheticModel.encode(name: "bench", count: rows * cols * matrices, dtype: stored, scratch: scratch, into: storage)
            let weights = (0..<matrices).map { m in
                let w = WeightMatrix(rows: rows, cols: cols, type: stored, base: UnsafeRawPointer(storage + m * per), owner: nil)
                switch type {
                case .q8: return w.quantized(Q8.self)
                case .fp8: return w.quantized(FP8.self)
                default: return w
                }
            }
            let bytes = weights.reduce(0) { $0 + $1.byteCount }
            let x = [Float](repeating: 0.5, count: tokens * cols)
            var y = [Float](repeating: 0, count: tokens * rows)
            for rep in 0..<3 {
                let start = Clock.now
                for w in weights { GEMM.linear(x, tokens: tokens, weight: w, into: &y) }
                let seconds = Clock.since(start)
                let gbps = Double(bytes) / seconds / 1e9
                let gflops = 2 * Double(tokens * rows * cols * matrices) / seconds / 1e9
                emit(String(format: "run %d: %@ %dx%d, %d tokens, %d threads: %.1f GB/s of weights, %.1f GFLOP/s",
                            rep, dtype, rows, cols, tokens, threads, gbps, gflops))
            }
        }
    }
}
