#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Rotary position embedding in Hugging Face's rotate-half layout: dimension j pairs with j + headDim/2.
public struct RoPE: Sendable {
    /// Per-pair inverse frequencies `[headDim/2]`, rounded to f32 as transformers computes them.
    public let inverseFrequencies: [Float]
    public let headDim: Int

    public init(theta: Double, headDim: Int) {
        self.headDim = headDim
        let half = headDim / 2
        inverseFrequencies = (0..<half).map { j in
            let exponent = Float(2 * j) / Float(headDim)
            let power = Float(pow(Double(Float(theta)), Double(exponent)))
            return 1 / power
        }
    }

    /// cos and sin of every position's angles, `[positions.count, headDim/2]` each. The angle is the f32
    /// product `position * invFreq`, as transformers forms it, so long positions round the same way.
    public func table(positions: [Int]) -> (cos: [Float], sin: [Float]) {
        let half = headDim / 2
        var c = [Float](repeating: 0, count: positions.count * half)
        var s = c
        for (t, p) in positions.enumerated() {
            for j in 0..<half {
                let angle = Double(Float(p) * inverseFrequencies[j])
                c[t * half + j] = Float(cos(angle))
                s[t * half + j] = Float(sin(angle))
            }
        }
        return (c, s)
    }

    /// Rotates `[tokens, heads * headDim]` in place with the rows of a `table`.
    public func apply(
        _ x: UnsafeMutablePointer<Float>, tokens: Int, heads: Int,
        cos: UnsafePointer<Float>, sin: UnsafePointer<Float>
    ) {
        let half = headDim / 2
        for t in 0..<tokens {
            let c = cos + t * half, s = sin + t * half
            for h in 0..<heads {
                let v = x + (t * heads + h) * headDim
                for j in 0..<half {
                    let a = v[j], b = v[j + half]
                    v[j] = a * c[j] - b * s[j]
                    v[j + half] = b * c[j] + a * s[j]
                }
            }
        }
    }
}
