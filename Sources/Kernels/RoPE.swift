#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How a checkpoint stretches RoPE past the context it was trained on, as transformers' `rope_type` names it.
public enum RoPEScaling: Sendable, Equatable {
    case none
    /// Positions interpolated: every inverse frequency divided by `factor`.
    case linear(factor: Double)
    /// YaRN (arXiv 2309.00071): low frequencies interpolated by `factor`, high ones kept, a linear ramp between the
    /// dimensions that turn `betaFast` and `betaSlow` times over `originalContext` positions; cos and sin scaled by
    /// `attentionFactor`.
    case yarn(factor: Double, originalContext: Int, betaFast: Double, betaSlow: Double, attentionFactor: Double, truncate: Bool)

    /// YaRN's default attention factor for `factor` (its `get_mscale`), or the ratio DeepSeek-style configs ask for.
    public static func yarnAttentionFactor(factor: Double, mscale: Double?, mscaleAllDim: Double?) -> Double {
        func get(_ scale: Double, _ m: Double) -> Double { scale <= 1 ? 1 : 0.1 * m * log(scale) + 1 }
        if let mscale, let mscaleAllDim, mscale != 0, mscaleAllDim != 0 {
            return get(factor, mscale) / get(factor, mscaleAllDim)
        }
        return get(factor, 1)
    }
}

/// Rotary position embedding in Hugging Face's rotate-half layout: dimension j pairs with j + headDim/2.
public struct RoPE: Sendable {
    /// Per-pair inverse frequencies `[headDim/2]`, rounded to f32 as transformers computes them.
    public let inverseFrequencies: [Float]
    /// What cos and sin are multiplied by (YaRN's attention factor; 1 otherwise).
    public let attentionScaling: Float
    public let headDim: Int

    public init(theta: Double, headDim: Int, scaling: RoPEScaling = .none) {
        self.headDim = headDim
        let half = headDim / 2
        // base ** (2j / d) in f32, as torch forms it.
        let powers: [Float] = (0..<half).map { j in
            Float(pow(Double(Float(theta)), Double(Float(2 * j) / Float(headDim))))
        }
        switch scaling {
        case .none:
            inverseFrequencies = powers.map { 1 / $0 }
            attentionScaling = 1
        case .linear(let factor):
            inverseFrequencies = powers.map { (1 / $0) / Float(factor) }
            attentionScaling = 1
        case let .yarn(factor, originalContext, betaFast, betaSlow, attentionFactor, truncate):
            // The dimension whose pair turns `rotations` times over the original context.
            func correctionDim(_ rotations: Double) -> Double {
                Double(headDim) * log(Double(originalContext) / (rotations * 2 * Double.pi)) / (2 * log(theta))
            }
            var low = correctionDim(betaFast), high = correctionDim(betaSlow)
            if truncate { low = low.rounded(.down); high = high.rounded(.up) }
            low = max(low, 0)
            high = min(high, Double(headDim - 1))
            if low == high { high += 0.001 }
            let lowF = Float(low), span = Float(high) - Float(low)
            inverseFrequencies = (0..<half).map { j in
                let ramp = min(max((Float(j) - lowF) / span, 0), 1)
                let extrapolation = 1 - ramp
                let interpolated = 1 / (Float(factor) * powers[j]), kept = 1 / powers[j]
                return interpolated * (1 - extrapolation) + kept * extrapolation
            }
            attentionScaling = Float(attentionFactor)
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
                c[t * half + j] = Float(cos(angle)) * attentionScaling
                s[t * half + j] = Float(sin(angle)) * attentionScaling
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
