import ArgumentParser
import Foundation
import Kernels
import Models
import COpenBLAS

struct KernelBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kernel-bench", shouldDisplay: false)
    @Option var tokens: Int = 2
    @Option var threads: Int = 2
    @Option var mats: Int = 64
    @Flag var huge = false
    @Flag var bf16 = false
    @Option var blasThreads: Int = 0
    func run() throws {
        Parallel.configure(workers: threads)
        if blasThreads > 0 { openblas_set_num_threads(Int32(blasThreads)) }
        let rows = 2816, cols = 1024
        let store = FloatStorage(count: rows * cols * mats)
        if huge { madvise(store.pointer, rows*cols*mats*4, 14) }
        for i in 0..<(rows * cols * mats) { store.pointer[i] = bf16 ? Float(bitPattern: 0x3F80_3F80) : Float(i % 7) * 0.01 }
        let x = [Float](repeating: 0.5, count: tokens * cols)
        var y = [Float](repeating: 0, count: tokens * rows)
        for rep in 0..<3 {
            let t0 = Clock.now
            for m in 0..<mats {
                let w0 = store.matrix(rows: rows, cols: cols, offset: m * rows * cols)
                let w = bf16 ? WeightMatrix(rows: rows, cols: cols, type: .bf16, base: UnsafeRawPointer(store.pointer) + m * rows * cols * 2, owner: store) : w0
                x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
                    GEMM.linear(xp.baseAddress!, tokens: tokens, weight: w, into: yp.baseAddress!) } }
            }
            let dt = Clock.since(t0)
            print(rep, Double(rows * cols * mats * (bf16 ? 2 : 4)) / dt / 1e9, "GB/s")
        }
    }
}
