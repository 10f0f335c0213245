import Foundation
import Kernels
import Testing

@Suite struct ElementwiseTests {
    /// The read loop's sum against a Double loop, on lengths that are not multiples of its 64-float stride; the
    /// bandwidth it measures over a small buffer is a finite positive rate.
    @Test func readLoopSumsEveryElement() {
        for n in [1, 17, 64, 1000, 4099] {
            let x = randomFloats(n, seed: UInt64(n))
            let want = x.reduce(0.0) { $0 + Double($1) }
            let got = x.withUnsafeBufferPointer { MemoryBandwidth.sum($0.baseAddress!, n) }
            #expect(abs(Double(got) - want) <= 1e-4 * max(1, abs(want)), "n = \(n)")
        }
        // A debug build on a loaded machine has read this at under 100 MB/s (the suite once failed on 1e8 here, beside a
        // compile); a timer or unit slip (nanoseconds taken for seconds, say) would be off by 1e3 or more either way.
        let rate = MemoryBandwidth.measureRead(bytes: 4 << 20, passes: 2)
        #expect(rate > 1e6 && rate < 1e13 && rate.isFinite, "\(rate)")
    }

    @Test func rmsNormMatchesDefinition() {
        let rows = 3, n = 37
        let x = randomFloats(rows * n, seed: 10), w = randomFloats(n, seed: 11)
        var y = [Float](repeating: 0, count: rows * n)
        Elementwise.rmsNorm(x, weight: w, eps: 1e-5, rows: rows, n: n, into: &y)
        for r in 0..<rows {
            let ms = (0..<n).reduce(0.0) { $0 + Double(x[r * n + $1]) * Double(x[r * n + $1]) } / Double(n)
            for i in 0..<n {
                let want = Double(w[i]) * Double(x[r * n + i]) / (ms + 1e-5).squareRoot()
                #expect(abs(Double(y[r * n + i]) - want) < 1e-5)
            }
        }
    }

    @Test func vectorExpAgreesWithLibm() {
        var worst = 0.0
        for start in stride(from: -87.0, to: 88.0, by: 0.37) {
            let v = SIMD16<Float>((0..<16).map { Float(start + Double($0) * 0.021) })
            let e = VectorMath.exp(v)
            for i in 0..<16 {
                let ref = Foundation.exp(Double(v[i]))
                worst = max(worst, abs(Double(e[i]) - ref) / ref)
            }
        }
        #expect(worst < 4e-7)
        // Far outside the range the result saturates instead of turning into inf or NaN.
        let big = VectorMath.exp(SIMD16(repeating: 1000)), small = VectorMath.exp(SIMD16(repeating: -1000))
        #expect(big[0].isFinite && big[0] > 1e38)
        #expect(small[0] >= 0 && small[0] < 1e-37)
    }

    /// The blended SIMD maximum against `Array.max()` on lengths around its 16-float stride, with the largest
    /// value at every position of the row (each lane, each tail slot), negative rows, -∞ and an empty row.
    @Test func maximumFindsTheLargestAnywhere() {
        for n in [1, 7, 15, 16, 17, 31, 32, 33, 100, 256, 259] {
            let x = randomFloats(n, seed: UInt64(100 + n)).map { $0 - 3 }  // all negative
            for peak in 0..<n {
                var row = x
                row[peak] = 5 + Float(peak) * 1e-3
                let got = row.withUnsafeBufferPointer { VectorMath.maximum($0.baseAddress!, count: n) }
                #expect(got == row.max()!, "n = \(n), peak at \(peak)")
            }
            let got = x.withUnsafeBufferPointer { VectorMath.maximum($0.baseAddress!, count: n) }
            #expect(got == x.max()!, "n = \(n), negative row")
        }
        let masked: [Float] = [-.infinity, -.infinity, -2.5] + [Float](repeating: -.infinity, count: 20)
        #expect(masked.withUnsafeBufferPointer { VectorMath.maximum($0.baseAddress!, count: $0.count) } == -2.5)
        let none: [Float] = [0]
        #expect(none.withUnsafeBufferPointer { VectorMath.maximum($0.baseAddress!, count: 0) } == -.infinity)
    }

    @Test func siluGLUMatchesDefinition() {
        let rows = 2, n = 21
        var gu = randomFloats(rows * 2 * n, seed: 12).map { $0 * 8 }
        let original = gu
        Elementwise.siluGLU(&gu, rows: rows, n: n)
        for r in 0..<rows {
            for i in 0..<n {
                let g = Double(original[r * 2 * n + i]), u = Double(original[r * 2 * n + n + i])
                let want = g / (1 + Foundation.exp(-g)) * u
                #expect(abs(Double(gu[r * 2 * n + i]) - want) < 1e-5 * max(1, abs(want)))
            }
        }
    }

    @Test func softmaxSumsToOneAndKeepsOrder() {
        var x: [Float] = [1, 3, -2, 3, 0.5]
        Routing.softmax(&x, 5)
        #expect(abs(x.reduce(0, +) - 1) < 1e-6)
        let e = [1, 3, -2, 3, 0.5].map { Foundation.exp(Double($0) - 3) }
        let total = e.reduce(0, +)
        for i in 0..<5 { #expect(abs(Double(x[i]) - e[i] / total) < 1e-7) }
    }

    @Test(arguments: [1, 2, 3])
    func topKBreaksTiesByLowerIndex(k: Int) {
        let x: [Float] = [0.1, 0.3, 0.3, 0.05, 0.3, 0.25]
        var ids = [Int32](repeating: -1, count: k), values = [Float](repeating: 0, count: k)
        Routing.topK(x, x.count, k: k, ids: &ids, values: &values)
        #expect(ids == Array([1, 2, 4].prefix(k)))
        #expect(values == Array(repeating: 0.3, count: k))
    }

    @Test func topKOrdersLargestFirst() {
        let x = randomFloats(64, seed: 13)
        var ids = [Int32](repeating: -1, count: 5), values = [Float](repeating: 0, count: 5)
        Routing.topK(x, 64, k: 5, ids: &ids, values: &values)
        let expected = x.indices.sorted { x[$0] > x[$1] || (x[$0] == x[$1] && $0 < $1) }.prefix(5)
        #expect(ids.map(Int.init) == Array(expected))
    }
}
