import Cluster
import Foundation
import Testing

@Suite struct StepBudgetTests {
    typealias Chunk = StepBudget.Chunk

    /// Seconds of a pass as the model defines it, computed here from its definition.
    static func cost(_ chunks: [Chunk], pass: Double, perToken: Double, perKiloPair: Double) -> Double {
        let tokens = chunks.reduce(0) { $0 + $1.count }
        let pairs = chunks.reduce(0.0) { $0 + Double($1.count) * Double($1.context) + Double($1.count * ($1.count + 1)) / 2 }
        return pass + perToken * Double(tokens) + perKiloPair * pairs / 1000
    }

    static let varied: [[Chunk]] = [
        [Chunk(count: 128, context: 0)], [Chunk(count: 16, context: 0), Chunk(count: 16, context: 0)],
        [Chunk(count: 16, context: 16)], [Chunk(count: 5, context: 900)], [Chunk(count: 60, context: 3000)],
        [Chunk(count: 1, context: 40)], [Chunk(count: 300, context: 0)], [Chunk(count: 33, context: 2000), Chunk(count: 7, context: 0)],
    ]

    @Test func targetsParseTimesAndMultiples() {
        #expect(StepBudget.Target("90ms") == .seconds(0.09))
        #expect(StepBudget.Target("0.25s") == .seconds(0.25))
        #expect(StepBudget.Target("1.4x") == .ratio(1.4))
        #expect(StepBudget.Target(" 2X ") == .ratio(2))
        for bad in ["1x", "0.5x", "0ms", "-5ms", "fast", "", "ms", "nanms", "infs", "12"] {
            #expect(StepBudget.Target(bad) == nil, "'\(bad)'")
        }
    }

    /// Noise-free passes of varied lengths and contexts: the fit gives back the costs that made them.
    @Test func fitRecoversTheCostsThatMadeThePasses() throws {
        var b = StepBudget(target: .ratio(1.5))
        let truth = (pass: 0.02, perToken: 0.0015, perKiloPair: 0.0002)
        for (i, chunks) in Self.varied.enumerated() {
            b.observePrefill(chunks, seconds: Self.cost(chunks, pass: truth.pass, perToken: truth.perToken, perKiloPair: truth.perKiloPair))
            #expect((b.coefficients == nil) == (i < 2), "a fit from the third pass on")
        }
        let c = try #require(b.coefficients)
        #expect(abs(c.pass - truth.pass) < 1e-6 * truth.pass * 100)
        #expect(abs(c.perToken - truth.perToken) < 1e-6 * truth.perToken * 100)
        #expect(abs(c.perKiloPair - truth.perKiloPair) < 1e-6 * truth.perKiloPair * 100)
        let probe = [Chunk(count: 77, context: 5000)]
        let predicted = try #require(b.prefillSeconds(probe))
        let want = Self.cost(probe, pass: truth.pass, perToken: truth.perToken, perKiloPair: truth.perKiloPair)
        #expect(abs(predicted - want) < 1e-6 * want * 100)
    }

    /// Passes whose time falls with length (what an unconstrained fit would answer with a negative cost): every
    /// coefficient stays >= 0, and the fit is the best such one for the data (here: no per-token or pair cost).
    @Test func coefficientsNeverGoNegative() throws {
        var b = StepBudget(target: .ratio(1.5))
        for (i, chunks) in Self.varied.enumerated() { b.observePrefill(chunks, seconds: 0.05 - 0.001 * Double(i)) }
        let c = try #require(b.coefficients)
        #expect(c.pass >= 0 && c.perToken >= 0 && c.perKiloPair >= 0, "\(c)")
        #expect(c.pass > 0.03)
    }

    /// The largest chunk fits its allowance and one more token would not; none when one token does not fit; never
    /// more than asked.
    @Test func largestChunkIsTheLastThatFits() throws {
        var b = StepBudget(target: .seconds(0.1))
        for chunks in Self.varied { b.observePrefill(chunks, seconds: Self.cost(chunks, pass: 0.01, perToken: 0.002, perKiloPair: 0.0003)) }
        let before = [Chunk(count: 8, context: 100)]
        for (context, allowance) in [(0, 0.05), (4000, 0.05), (4000, 0.2), (100, 0.5)] {
            let n = b.largestChunk(after: before, context: context, most: 10_000, allowance: allowance)
            #expect(n >= 1)
            #expect(try #require(b.prefillSeconds(before + [Chunk(count: n, context: context)])) <= allowance)
            #expect(try #require(b.prefillSeconds(before + [Chunk(count: n + 1, context: context)])) > allowance, "context \(context)")
        }
        #expect(b.largestChunk(after: [], context: 0, most: 10_000, allowance: 0.005) == 0)
        #expect(b.largestChunk(after: [], context: 0, most: 3, allowance: 10) == 3)
        #expect(b.largestChunk(after: [], context: 0, most: 0, allowance: 10) == 0)
        // A longer context leaves room for fewer tokens.
        #expect(b.largestChunk(after: [], context: 8000, most: 10_000, allowance: 0.1) < b.largestChunk(after: [], context: 0, most: 10_000, allowance: 0.1))
    }

    /// What a step with decodes leaves for chunks: nothing to limit while nothing decodes or the costs are
    /// unknown (then it probes); with a multiple, (r - 1) times the decodes' mean time; with a time, what remains.
    @Test func allowanceFollowsTheTarget() {
        var ratio = StepBudget(target: .ratio(1.5)), fixed = StepBudget(target: .seconds(0.1))
        #expect(ratio.allowance(decoding: 4) == nil && ratio.probing(decoding: 4) && !ratio.probing(decoding: 0))
        for chunks in Self.varied.prefix(3) {
            ratio.observePrefill(chunks, seconds: 0.01 * Double(chunks.count))
            fixed.observePrefill(chunks, seconds: 0.01 * Double(chunks.count))
        }
        #expect(ratio.allowance(decoding: 4) == nil && ratio.probing(decoding: 4), "no decode measured yet")
        ratio.observeDecode(sequences: 4, seconds: 0.06)
        fixed.observeDecode(sequences: 4, seconds: 0.06)
        #expect(!ratio.probing(decoding: 4))
        #expect(ratio.allowance(decoding: 0) == nil)
        #expect(abs(ratio.allowance(decoding: 4)! - 0.03) < 1e-12)
        #expect(abs(fixed.allowance(decoding: 4)! - 0.04) < 1e-12)
        // An unmeasured batch size with one count measured: that count's time (not scaled by the counts).
        #expect(abs(ratio.allowance(decoding: 8)! - 0.5 * 0.06) < 1e-12)
        // A running mean: 0.8 of the old, 0.2 of the new.
        ratio.observeDecode(sequences: 4, seconds: 0.16)
        #expect(abs(ratio.allowance(decoding: 4)! - 0.5 * 0.08) < 1e-12)
        // A smaller batch gets the multiple of the largest batch measured, less its own.
        ratio.observeDecode(sequences: 1, seconds: 0.02)
        #expect(abs(ratio.allowance(decoding: 1)! - (1.5 * 0.08 - 0.02)) < 1e-12)
        #expect(abs(ratio.allowance(decoding: 4)! - 0.5 * 0.08) < 1e-12)
    }

    /// Batch sizes not measured get the least-squares line through the measured ones (a decode mostly streams
    /// weights: eight sequences cost far less than eight times one), never below zero at either end.
    @Test func unmeasuredBatchesFollowTheLineThroughTheMeasuredOnes() {
        var b = StepBudget(target: .ratio(1.5))
        for chunks in Self.varied.prefix(3) { b.observePrefill(chunks, seconds: 0.01 * Double(chunks.count)) }
        b.observeDecode(sequences: 1, seconds: 0.02)
        b.observeDecode(sequences: 4, seconds: 0.05)
        // d(n) = 0.01 + 0.01 n: d(8) = 0.09, the reference of the multiple is the largest count measured (4).
        #expect(abs(b.allowance(decoding: 8)! - (1.5 * 0.09 - 0.09)) < 1e-12)
        #expect(abs(b.allowance(decoding: 2)! - (1.5 * 0.05 - 0.03)) < 1e-12)
        // With a full batch named (the server's --max-batch), the multiple applies to its estimate.
        #expect(abs(b.allowance(decoding: 2, fullBatch: 8)! - (1.5 * 0.09 - 0.03)) < 1e-12)
        #expect(abs(b.allowance(decoding: 2, fullBatch: 3)! - (1.5 * 0.05 - 0.03)) < 1e-12, "the larger of the two")
        // A falling line (noise) is held flat at the mean; one whose intercept would be negative goes through 0.
        var flat = StepBudget(target: .seconds(1)), origin = StepBudget(target: .seconds(1))
        for chunks in Self.varied.prefix(3) {
            flat.observePrefill(chunks, seconds: 0.01)
            origin.observePrefill(chunks, seconds: 0.01)
        }
        flat.observeDecode(sequences: 2, seconds: 0.06)
        flat.observeDecode(sequences: 6, seconds: 0.04)
        #expect(abs(flat.allowance(decoding: 4)! - (1 - 0.05)) < 1e-12)
        origin.observeDecode(sequences: 2, seconds: 0.01)
        origin.observeDecode(sequences: 4, seconds: 0.05)
        // Through the origin: slope = (2·0.01 + 4·0.05) / (4 + 16) = 0.011.
        #expect(abs(origin.allowance(decoding: 8)! - (1 - 0.088)) < 1e-12)
    }

    /// The head runs a step without prompt chunks when no decode has been measured alone, and again after
    /// `decodeSampleInterval` mixed steps, so that every step carrying a chunk cannot leave the decode estimate
    /// unknown (the budget would probe forever) or stale.
    @Test func decodesAreMeasuredAloneAgainAfterAWhile() {
        var b = StepBudget(target: .ratio(1.5))
        #expect(b.wantsDecodeSample(decoding: 3) && !b.wantsDecodeSample(decoding: 0))
        b.observeDecode(sequences: 3, seconds: 0.05)
        #expect(!b.wantsDecodeSample(decoding: 3))
        for _ in 0..<(StepBudget.decodeSampleInterval - 1) { b.observeMixed(Self.varied[0], decoding: 3, seconds: 0.07) }
        #expect(!b.wantsDecodeSample(decoding: 3))
        b.observeMixed(Self.varied[0], decoding: 3, seconds: 0.07)
        #expect(b.wantsDecodeSample(decoding: 3))
        b.observeDecode(sequences: 2, seconds: 0.04)
        #expect(!b.wantsDecodeSample(decoding: 3))
    }
}
