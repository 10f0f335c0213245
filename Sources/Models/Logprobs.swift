import Foundation
import Kernels

/// One token's log-probability under the model's raw distribution (a log-softmax of the logits, before
/// temperature, penalties or truncation, as vLLM's default `raw_logprobs`), with the most likely tokens there.
public struct TokenLogprob: Sendable, Equatable {
    public var token: Int
    public var logprob: Float
    /// The most likely tokens at this position and their log-probabilities, most likely first (ties: lower id).
    public var top: [Alternative]

    public struct Alternative: Sendable, Equatable {
        public var token: Int
        public var logprob: Float
        public init(token: Int, logprob: Float) {
            self.token = token
            self.logprob = logprob
        }
    }

    public init(token: Int, logprob: Float, top: [Alternative] = []) {
        self.token = token
        self.logprob = logprob
        self.top = top
    }

    /// Alternatives the API gives at most per position (vLLM's default `max_logprobs`).
    public static let maxTop = 20

    /// `token`'s log-probability in `logits` `[vocab]`, with the `top` most likely tokens.
    public init(_ logits: UnsafeBufferPointer<Float>, token: Int, top n: Int) {
        let logZ = Self.logNormaliser(logits)
        self.init(token: token, logprob: logits[token] - logZ, top: Self.largest(logits, n).map { Alternative(token: $0, logprob: logits[$0] - logZ) })
    }

    /// log Σ exp(logits): the maximum plus the log of the shifted sum, accumulated in Double.
    static func logNormaliser(_ logits: UnsafeBufferPointer<Float>) -> Float {
        let top = logits.isEmpty ? -Float.infinity : VectorMath.maximum(logits.baseAddress!, count: logits.count)
        var sum = 0.0
        for v in logits { sum += Double(exp(v - top)) }
        return top + Float(log(sum))
    }

    /// Indices of the `n` largest logits, largest first, ties to the lower index.
    static func largest(_ logits: UnsafeBufferPointer<Float>, _ n: Int) -> [Int] {
        guard n > 0 else { return [] }
        var best: [Int] = []  // sorted, largest first
        best.reserveCapacity(n + 1)
        for (i, v) in logits.enumerated() {
            if best.count == n, v <= logits[best[n - 1]] { continue }
            var k = best.count
            while k > 0, logits[best[k - 1]] < v { k -= 1 }
            best.insert(i, at: k)
            if best.count > n { best.removeLast() }
        }
        return best
    }
}
