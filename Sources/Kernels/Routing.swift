#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Softmax and top-k selection as the MoE routers of Hugging Face compute them.
public enum Routing {
    /// Numerically stable softmax in place over `n` floats, with the C library's `expf` (router width is small).
    public static func softmax(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
        guard n > 0 else { return }
        var m = x[0]
        for i in 1..<n where x[i] > m { m = x[i] }
        var s: Float = 0
        for i in 0..<n { x[i] = expf(x[i] - m); s += x[i] }
        let inv = 1 / s
        for i in 0..<n { x[i] *= inv }
    }

    /// The `k` largest of `n` values, largest first; equal values keep the lower index first.
    /// Writes their indices to `ids` and values to `values`.
    public static func topK(
        _ x: UnsafePointer<Float>, _ n: Int, k: Int,
        ids: UnsafeMutablePointer<Int32>, values: UnsafeMutablePointer<Float>
    ) {
        var filled = 0
        for i in 0..<n {
            let v = x[i]
            // Strictly greater moves ahead, so an equal later index stays behind the earlier one.
            if filled == k && !(v > values[k - 1]) { continue }
            var j = filled < k ? filled : k - 1
            while j > 0 && v > values[j - 1] {
                values[j] = values[j - 1]
                ids[j] = ids[j - 1]
                j -= 1
            }
            values[j] = v
            ids[j] = Int32(i)
            if filled < k { filled += 1 }
        }
    }
}
