import Foundation

/// The head's time budget for prompt chunks (`--step-time-target`): a step's prefill work is cut so that the step
/// takes about the target, whatever the context the chunks attend to.
///
/// A token budget (`--max-step-tokens`) cannot keep steps even: a chunk's attention grows with the context it
/// reads (beside 8 streams, a 56-token chunk took 0.18 s at the start of a 4,096-token prompt and 0.40 s near its
/// end), and a separate prefill pass streams every weight once whatever its length. So the head fits, as the
/// cluster runs, what a prefill pass costs, `seconds = pass + perToken · tokens + perPair · pairs` (pairs: query
/// and key positions its attention multiplies, a chunk of L tokens after c cached ones has L·c + L(L+1)/2), by
/// least squares with non-negative coefficients over recent passes (older ones weigh less), and what a decode of
/// n sequences costs (a running mean by n, and a line through those for counts not measured; one step in
/// `decodeSampleInterval` runs its decodes alone to keep them current). A step's chunks get what the target leaves
/// after its decodes.
/// Only passes beside decodes teach the fit: the long passes of steps in which nothing decodes (a new wave of
/// prompts) are another regime (attention over long chunks runs as large GEMMs) and would skew the short ones.
/// In a mixed step (the decodes ride in the chunks' pass, `ClusterEngine.mixedSteps`) the head sees only the whole
/// step: it learns the chunks' part as the step's time less its decode estimate, so `pass` becomes what joining a
/// prompt to the decodes costs at all, not a second stream of the weights. With separate passes a step that runs
/// any prompt token pays a whole pass over the weights beside the decode pass, so a target below decode + one
/// pass still runs one token a step.
public struct StepBudget: Sendable {
    /// How long a step with decodes may take: a fixed time, or a multiple of the slowest decode step measured.
    public enum Target: Sendable, Equatable {
        case seconds(Double)
        case ratio(Double)

        /// `"90ms"`, `"0.09s"` or `"1.4x"`; nil for anything else (or a value that is not positive; a ratio must
        /// be above 1: at 1 no prompt token would fit).
        public init?(_ text: String) {
            let t = text.trimmingCharacters(in: .whitespaces).lowercased()
            func number(_ suffix: String) -> Double? {
                guard t.hasSuffix(suffix), let v = Double(t.dropLast(suffix.count)), v.isFinite else { return nil }
                return v
            }
            if let v = number("ms"), v > 0 { self = .seconds(v / 1000) }
            else if let v = number("x"), v > 1 { self = .ratio(v) }
            else if let v = number("s"), v > 0 { self = .seconds(v) }
            else { return nil }
        }
    }

    /// A prompt chunk as the cost model sees it: its tokens and the positions already cached before it.
    public struct Chunk: Sendable, Equatable {
        public var count: Int
        public var context: Int
        public init(count: Int, context: Int) { self.count = count; self.context = context }
        /// Query-key products of its causal attention.
        var pairs: Double { Double(count) * Double(context) + Double(count) * Double(count + 1) / 2 }
    }

    public let target: Target
    /// Weight of an observation relative to the next one (0.97: the last ~30 passes count most).
    let forgetting = 0.97
    /// Pairs are counted in thousands so that the three columns have similar sizes.
    static let pairScale = 1e-3
    /// Weighted sums of the normal equations of the fit: XᵀX (3×3, row-major), Xᵀy and yᵀy.
    private var xtx = [Double](repeating: 0, count: 9)
    private var xty = [Double](repeating: 0, count: 3)
    private var observations = 0
    /// The fitted (pass, perToken, perKiloPair) seconds; nil until there is a fit.
    public private(set) var coefficients: (pass: Double, perToken: Double, perKiloPair: Double)?
    /// A running mean of the decode time by batch size, and the mixed steps since a decode was last measured alone.
    private var decodeSeconds: [Int: Double] = [:]
    private var stepsSinceDecode = 0

    public init(target: Target) { self.target = target }

    /// A prefill pass that ran `chunks` in `seconds`.
    public mutating func observePrefill(_ chunks: [Chunk], seconds: Double) {
        guard seconds >= 0 else { return }
        add(chunks, seconds: seconds)
    }

    /// A mixed step that ran `chunks` beside the decodes of `decoding` sequences in `seconds`: the chunks' part is
    /// what the step took beyond its decode estimate (nothing is learned before there is one). That part may come
    /// out below zero on a noisy step; it is kept as it is, so that noise does not bias the fit upwards (the
    /// coefficients stay >= 0 anyway).
    public mutating func observeMixed(_ chunks: [Chunk], decoding: Int, seconds: Double) {
        guard decoding > 0, let d = decodeEstimate(decoding) else { return }
        stepsSinceDecode += 1
        add(chunks, seconds: seconds - d)
    }

    private mutating func add(_ chunks: [Chunk], seconds: Double) {
        guard !chunks.isEmpty, seconds.isFinite else { return }
        let x = Self.features(chunks)
        for i in 0..<9 { xtx[i] *= forgetting }
        for i in 0..<3 { xty[i] *= forgetting }
        for i in 0..<3 {
            xty[i] += x[i] * seconds
            for j in 0..<3 { xtx[i * 3 + j] += x[i] * x[j] }
        }
        observations += 1
        coefficients = observations >= 3 ? fit() : nil
    }

    /// A decode of `sequences` tokens (and the step's end) that took `seconds`: a step that ran no prompt chunk, or
    /// the decode pass of a step that ran its chunks in a pass of their own.
    public mutating func observeDecode(sequences: Int, seconds: Double) {
        guard sequences > 0, seconds.isFinite, seconds >= 0 else { return }
        decodeSeconds[sequences] = decodeSeconds[sequences].map { 0.8 * $0 + 0.2 * seconds } ?? seconds
        stepsSinceDecode = 0
    }

    /// Mixed steps in a row after which the head runs one step without prompt chunks, so that the decode estimates
    /// the budget rests on stay current (contexts grow, the batch changes). Under a steady stream of requests every
    /// step may carry a chunk, and then no decode is ever measured on its own.
    public static let decodeSampleInterval = 64

    /// Whether a step with `decoding` sequences should run no prompt chunk, to measure the decodes alone: none
    /// has been measured yet (until then the chunks' cost cannot be told from the decodes'), or the last was
    /// `decodeSampleInterval` mixed steps ago.
    public func wantsDecodeSample(decoding: Int) -> Bool {
        decoding > 0 && (decodeSeconds.isEmpty || stepsSinceDecode >= Self.decodeSampleInterval)
    }

    /// Predicted seconds of a prefill pass over `chunks`; nil before the fit.
    public func prefillSeconds(_ chunks: [Chunk]) -> Double? {
        guard let c = coefficients else { return nil }
        guard !chunks.isEmpty else { return 0 }
        let x = Self.features(chunks)
        return c.pass * x[0] + c.perToken * x[1] + c.perKiloPair * x[2]
    }

    /// Prompt tokens a step with decodes runs at most until the costs are known (three passes measured): the
    /// passes that teach the fit, short enough not to stall the streams.
    public static let probeTokens = 16

    /// Whether the chunks of a step with `decoding` sequences are limited to `probeTokens`: sequences decode and
    /// the costs are not known yet.
    public func probing(decoding: Int) -> Bool { decoding > 0 && (coefficients == nil || decodeEstimate(decoding) == nil) }

    /// Seconds a step with `decoding` sequences has left for prompt chunks: unlimited (nil) when nothing decodes
    /// (nobody waits for the step) or while the costs are not known yet (see `probing`). A multiple applies to the
    /// decode of a full batch (`fullBatch`, the server's `--max-batch`, or the largest batch measured so far if
    /// that is larger or there is no limit), not to this step's: a step of one decode (22 ms on `medium`) times
    /// 1.4 leaves 9 ms, less than a prefill pass costs at all (13-20 ms), so a prompt would crawl a token or two a
    /// step while the batch is nearly empty (and the requests behind it wait for it), and nobody would gain.
    public func allowance(decoding: Int, fullBatch: Int? = nil) -> Double? {
        guard decoding > 0, coefficients != nil else { return nil }
        switch target {
        case .seconds(let s):
            return s - (decodeEstimate(decoding) ?? 0)
        case .ratio(let r):
            guard let d = decodeEstimate(decoding), let largest = decodeSeconds.keys.max() else { return nil }
            return r * max(d, decodeEstimate(max(largest, fullBatch ?? 0))!) - d
        }
    }

    /// The mean decode time for `n` sequences; for a count not measured, the least-squares line `a + b·n` through
    /// the counts measured (each count's mean one point; `a, b >= 0`). A decode step mostly streams weights, so its
    /// time grows far slower than its batch (on `medium`, 22 ms for one sequence, 50 for eight): scaling the
    /// nearest count by the ratio of counts, as this did before, made an estimate for 8 from a measured 4 almost
    /// twice too long, and with it the budget of every step. With one count measured, its time.
    func decodeEstimate(_ n: Int) -> Double? {
        if let d = decodeSeconds[n] { return d }
        guard !decodeSeconds.isEmpty else { return nil }
        let points = decodeSeconds.map { (Double($0.key), $0.value) }
        let count = Double(points.count)
        let meanN = points.reduce(0) { $0 + $1.0 } / count, meanD = points.reduce(0) { $0 + $1.1 } / count
        let sxx = points.reduce(0) { $0 + ($1.0 - meanN) * ($1.0 - meanN) }
        let sxy = points.reduce(0) { $0 + ($1.0 - meanN) * ($1.1 - meanD) }
        var slope = sxx > 0 ? max(0, sxy / sxx) : 0
        var intercept = meanD - slope * meanN
        if intercept < 0 {
            // Through the origin instead: the slope that fits best with a = 0.
            intercept = 0
            slope = points.reduce(0) { $0 + $1.0 * $1.1 } / points.reduce(0) { $0 + $1.0 * $1.0 }
        }
        return intercept + slope * Double(n)
    }

    /// The most tokens (at most `most`) of a chunk at `context` that keep a pass over `chosen` plus it within
    /// `allowance` seconds; 0 when not even one fits.
    public func largestChunk(after chosen: [Chunk], context: Int, most: Int, allowance: Double) -> Int {
        guard most > 0 else { return 0 }
        func fits(_ n: Int) -> Bool { (prefillSeconds(chosen + [Chunk(count: n, context: context)]) ?? 0) <= allowance }
        guard fits(1) else { return 0 }
        var lo = 1, hi = most  // fits(lo); the cost grows with n
        if fits(hi) { return hi }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2
            if fits(mid) { lo = mid } else { hi = mid }
        }
        return lo
    }

    static func features(_ chunks: [Chunk]) -> [Double] {
        [1, Double(chunks.reduce(0) { $0 + $1.count }), chunks.reduce(0) { $0 + $1.pairs } * pairScale]
    }

    /// Non-negative least squares over three columns: the best of the solutions on each subset of columns whose
    /// coefficients are all >= 0 (with a small ridge, so a column that has not varied yet does not make it singular).
    private func fit() -> (pass: Double, perToken: Double, perKiloPair: Double)? {
        let trace = xtx[0] + xtx[4] + xtx[8]
        let ridge = 1e-9 * max(trace, 1e-30)
        var best: (error: Double, beta: [Double])?
        for mask in 1..<8 {
            let cols = (0..<3).filter { mask & (1 << $0) != 0 }
            var a = cols.map { i in cols.map { j in xtx[i * 3 + j] + (i == j ? ridge : 0) } }
            var b = cols.map { xty[$0] }
            guard Self.solve(&a, &b) else { continue }
            guard b.allSatisfy({ $0 >= 0 }) else { continue }
            var beta = [Double](repeating: 0, count: 3)
            for (k, i) in cols.enumerated() { beta[i] = b[k] }
            // The weighted squared error up to the constant yᵀy: βᵀXᵀXβ - 2βᵀXᵀy.
            var error = 0.0
            for i in 0..<3 {
                error -= 2 * beta[i] * xty[i]
                for j in 0..<3 { error += beta[i] * xtx[i * 3 + j] * beta[j] }
            }
            if best == nil || error < best!.error { best = (error, beta) }
        }
        return best.map { ($0.beta[0], $0.beta[1], $0.beta[2]) }
    }

    /// Solves `a · x = b` in place (Gaussian elimination with partial pivoting); false when singular.
    static func solve(_ a: inout [[Double]], _ b: inout [Double]) -> Bool {
        let n = b.count
        for c in 0..<n {
            let p = (c..<n).max { abs(a[$0][c]) < abs(a[$1][c]) }!
            guard abs(a[p][c]) > 0 else { return false }
            a.swapAt(c, p)
            b.swapAt(c, p)
            for r in (c + 1)..<n {
                let f = a[r][c] / a[c][c]
                for k in c..<n { a[r][k] -= f * a[c][k] }
                b[r] -= f * b[c]
            }
        }
        for c in stride(from: n - 1, through: 0, by: -1) {
            var s = b[c]
            for k in (c + 1)..<n { s -= a[c][k] * b[k] }
            b[c] = s / a[c][c]
        }
        return true
    }
}
