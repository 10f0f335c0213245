import Dispatch

/// The DRAM read bandwidth weight streaming can reach here: every worker thread sums its share of a buffer far
/// larger than the caches, SIMD16 at a time (the bound a decode step's weight reads meet).
public enum MemoryBandwidth {
    /// Σ p[0 ..< n], with four SIMD16 accumulators so that loads stay in flight (the value keeps the loop honest).
    public static func sum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        var a = SIMD16<Float>(), b = SIMD16<Float>(), c = SIMD16<Float>(), d = SIMD16<Float>()
        var i = 0
        let raw = UnsafeRawPointer(p)
        while i + 64 <= n {
            a += raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            b += raw.loadUnaligned(fromByteOffset: 4 * (i + 16), as: SIMD16<Float>.self)
            c += raw.loadUnaligned(fromByteOffset: 4 * (i + 32), as: SIMD16<Float>.self)
            d += raw.loadUnaligned(fromByteOffset: 4 * (i + 48), as: SIMD16<Float>.self)
            i += 64
        }
        var total = ((a + b) + (c + d)).sum()
        while i < n {
            total += p[i]
            i += 1
        }
        return total
    }

    /// Bytes per second of the fastest of `passes` reads of a `bytes`-byte buffer (written first, so that its pages
    /// are mapped), split over `Parallel.workers` threads.
    public static func measureRead(bytes: Int = 128 << 20, passes: Int = 3) -> Double {
        let n = max(bytes / 4, 1024)
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { buffer.deallocate() }
        let ranges = Parallel.ranges(n, parts: Parallel.workers, align: 64)
        Parallel.run(ranges.count) { t in
            for i in ranges[t] { buffer[i] = Float(i & 1023) }
        }
        var best = 0.0
        for _ in 0..<max(passes, 1) {
            // Each thread stores its sum for the caller, so the reads cannot be left out.
            var sums = [Float](repeating: 0, count: ranges.count)
            let start = DispatchTimeNanos.now
            sums.withUnsafeMutableBufferPointer { out in
                let out = out.baseAddress!
                Parallel.run(ranges.count) { t in out[t] = sum(buffer + ranges[t].lowerBound, ranges[t].count) }
            }
            let seconds = Double(DispatchTimeNanos.now - start) / 1e9
            best = max(best, Double(n * 4) / max(seconds, 1e-9))
        }
        return best
    }
}

/// Monotonic nanoseconds (Kernels has no Foundation).
enum DispatchTimeNanos {
    static var now: UInt64 { DispatchTime.now().uptimeNanoseconds }
}
