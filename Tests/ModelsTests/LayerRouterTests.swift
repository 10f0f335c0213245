import Foundation
import Kernels
@testable import Models
import Testing

/// Flux's layer router: the MLP against plain loops, the pooling and policy rules as documented, and the
/// decisions of a checkpoint's router weights (`tiny-mixtral-router`, `Scripts/make_router_fixture.py`).
@Suite struct LayerRouterTests {
    /// Plain f64 loops over `[out, in]` weights: `Linear SiLU Linear | Linear SiLU Linear SiLU Linear`.
    static func referenceLogits(_ parts: [(w: [Float], b: [Float], rows: Int, cols: Int)], _ input: [Double]) -> [Double] {
        var x = input
        for (i, p) in parts.enumerated() {
            var y = [Double](repeating: 0, count: p.rows)
            for r in 0..<p.rows {
                var acc = Double(p.b[r])
                for c in 0..<p.cols { acc += Double(p.w[r * p.cols + c]) * x[c] }
                y[r] = [0, 2, 3].contains(i) ? acc / (1 + Foundation.exp(-acc)) : acc
            }
            x = y
        }
        return x
    }

    static func randomParts(d: Int, seed: UInt64) -> [(w: [Float], b: [Float], rows: Int, cols: Int)] {
        var rng = SplitMix64(seed: seed)
        return RouterMLP.parts.enumerated().map { i, part in
            let rows = RouterMLP.rows(part: i, d: d), cols = part.in * d
            let bound = 2 / Float(cols).squareRoot()
            return ((0..<(rows * cols)).map { _ in Float.random(in: -bound...bound, using: &rng) },
                    (0..<rows).map { _ in Float.random(in: -bound...bound, using: &rng) }, rows, cols)
        }
    }

    static func mlp(_ parts: [(w: [Float], b: [Float], rows: Int, cols: Int)]) -> RouterMLP {
        RouterMLP(linears: parts.map { p in
            RouterMLP.Linear(weight: FloatStorage(p.w).matrix(rows: p.rows, cols: p.cols), bias: p.b)
        })
    }

    @Test(arguments: [8, 16, 128])
    func mlpMatchesPlainLoops(d: Int) {
        let parts = Self.randomParts(d: d, seed: UInt64(d))
        let router = Self.mlp(parts)
        var rng = SplitMix64(seed: 99)
        for _ in 0..<4 {
            let input = (0..<d).map { _ in Float.random(in: -2...2, using: &rng) }
            let got = router.logits(input), want = Self.referenceLogits(parts, input.map(Double.init))
            #expect(got.count == 2)
            for j in 0..<2 { #expect(abs(Double(got[j]) - want[j]) <= 1e-5 * max(1, abs(want[j]))) }
        }
    }

    /// Mean over the first and last `pool` tokens (all of them below 2 · pool), then over heads.
    @Test(arguments: [(7, 2), (4, 2), (3, 2), (1, 100), (250, 100)])
    func poolingTakesBothEndsThenHeads(tokens: Int, pool: Int) {
        let heads = 3, d = 4
        var rng = SplitMix64(seed: UInt64(tokens))
        let q = (0..<(tokens * heads * d)).map { _ in Float.random(in: -1...1, using: &rng) }
        let rows = tokens < 2 * pool ? Array(0..<tokens) : Array(0..<pool) + Array((tokens - pool)..<tokens)
        let got = LayerRouter(weights: nil, policy: RouterPolicy(), pool: pool).pooled(queries: q, tokens: tokens, heads: heads, headDim: d)
        for j in 0..<d {
            let perHead = (0..<heads).map { h in rows.map { Double(q[($0 * heads + h) * d + j]) }.reduce(0, +) / Double(rows.count) }
            #expect(abs(Double(got[j]) - perHead.reduce(0, +) / Double(heads)) < 1e-6)
        }
    }

    @Test func policyPicksLayersAsDocumented() throws {
        func picked(_ text: String, of n: Int) throws -> [Int] {
            let p = try RouterPolicy(parsing: text)
            return (0..<n).filter { p.sparse(layer: $0, of: n) == true }
        }
        #expect(try picked("fraction=0.5", of: 4) == [1, 3])
        #expect(try picked("fraction=0.25", of: 8) == [3, 7])
        #expect(try picked("fraction=0.1", of: 10) == [9])
        #expect(try picked("fraction=1", of: 3) == [0, 1, 2])
        #expect(try picked("fraction=0", of: 3) == [])
        #expect(try picked("layers=0, 2", of: 4) == [0, 2])
        let both = try RouterPolicy(parsing: "fraction=0.5; min-prompt=64")
        #expect(both.minPrompt == 64 && both.layers == .fraction(0.5))
        #expect(try RouterPolicy(parsing: "min-prompt=8").sparse(layer: 0, of: 2) == nil)
        let short = LayerRouter(weights: nil, policy: both)
        #expect(short.sparse(layer: 1, of: 4, promptLength: 63, queries: [0], tokens: 1, heads: 1, headDim: 1) == false)
        #expect(short.sparse(layer: 1, of: 4, promptLength: 64, queries: [0], tokens: 1, heads: 1, headDim: 1) == true)
        for (bad, message) in [("fraction=1.5", "fraction= takes a number in [0, 1]"), ("layers=1,x", "layers= takes layer indices, got 'x'"),
                               ("depth=3", "unknown clause 'depth'"), ("fraction", "'fraction' is not key=value"),
                               ("layers=1;fraction=0.5", "give layers= or fraction=, once"), ("min-prompt=-1", "min-prompt= takes a token count")] {
            do { _ = try RouterPolicy(parsing: bad); Issue.record("'\(bad)' parsed") } catch {
                #expect("\(error)".contains(message), "\(error)")
            }
        }
    }

    /// Layer 0's decision from the checkpoint's router equals the plain-loop MLP on layer 0's queries computed
    /// here from the weights (embedding, input RMSNorm, q_proj: no RoPE), for prompts of many lengths; the prompts
    /// reach both decisions, and the logits equal those of the same layers made sparse by a policy.
    @Test func checkpointRouterDecidesFromLayerZeroQueries() throws {
        let dir = Fixtures.path("tiny-mixtral-router")
        let model = try MoEDecoder.load(directory: dir)
        let weights = try #require(model.routerWeights)
        #expect(weights.count == model.spec.layers)
        let store = try WeightStore.open(directory: dir)
        func floats(_ name: String) -> [Float] {
            let t = store.tensors[name]!
            return Array(UnsafeBufferPointer(start: t.data.assumingMemoryBound(to: Float.self), count: t.elementCount))
        }
        let spec = model.spec, h = spec.hiddenSize, d = spec.headDim
        let embedding = floats("model.embed_tokens.weight"), norm = floats("model.layers.0.input_layernorm.weight")
        let wq = floats("model.layers.0.self_attn.q_proj.weight")
        let parts = RouterMLP.parts.enumerated().map { i, part in
            let name = "model.layers.0.self_attn.mask_allocator.\(part.name)"
            return (w: floats(name + ".weight"), b: floats(name + ".bias"), rows: RouterMLP.rows(part: i, d: d), cols: part.in * d)
        }
        model.sparse = .sinkWindow(sink: 0, window: 4, block: 1)
        model.router = LayerRouter(weights: weights, policy: RouterPolicy(), pool: 3)
        var seen = Set<Bool>()
        var rng = SplitMix64(seed: 5)
        for n in [2, 5, 6, 7, 12, 30] {
            let ids = (0..<n).map { _ in Int.random(in: 0..<spec.vocabSize, using: &rng) }
            var pooled = [Double](repeating: 0, count: d)
            let rows = n < 6 ? Array(0..<n) : [0, 1, 2, n - 3, n - 2, n - 1]
            for t in rows {
                let x = Array(embedding[(ids[t] * h)..<((ids[t] + 1) * h)]).map(Double.init)
                let inv = 1 / (x.map { $0 * $0 }.reduce(0, +) / Double(h) + Double(spec.rmsNormEps)).squareRoot()
                let xn = (0..<h).map { x[$0] * inv * Double(norm[$0]) }
                for o in 0..<spec.qDim {
                    var acc = 0.0
                    for c in 0..<h { acc += Double(wq[o * h + c]) * xn[c] }
                    pooled[o % d] += acc / Double(rows.count * spec.heads)
                }
            }
            let want = Self.referenceLogits(parts, pooled)
            var observed: [Int: [Float]] = [:]
            model.routerObserver = { l, input, _ in observed[l] = input }
            let result = try Engine(model: model).generate([GenerationRequest(promptIds: ids, maxNewTokens: 3)], keepLogits: true)[0]
            model.routerObserver = nil
            let input = try #require(observed[0])
            #expect(zip(input, pooled).allSatisfy { abs(Double($0) - $1) < 1e-5 }, "prompt of \(n): pooled \(input) against \(pooled)")
            #expect(observed.count == spec.layers)
            let layers = try #require(result.sparseLayers)
            #expect(layers.contains(0) == !(want[1] > want[0]), "prompt of \(n): logits \(want)")
            seen.insert(layers.contains(0))

            // The same layers made sparse by a policy give the same tokens and logits.
            let routed = model.router
            model.router = LayerRouter(weights: nil, policy: RouterPolicy(layers: .list(Set(layers))))
            let again = try Engine(model: model).generate([GenerationRequest(promptIds: ids, maxNewTokens: 3)], keepLogits: true)[0]
            model.router = routed
            #expect(again.tokens == result.tokens && again.stepLogits == result.stepLogits)
        }
        #expect(seen == [true, false], "the fixture's prompts should reach both decisions at layer 0")
    }

    @Test func aCheckpointWithRouterWeightsForSomeLayersIsRefused() throws {
        let dir = try TemporaryDirectory()
        try rewriteCheckpoint(from: Fixtures.path("tiny-mixtral-router"), to: dir.path, transform: { tensors in
            tensors.filter { !$0.key.hasPrefix("model.layers.1.self_attn.mask_allocator.") }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        })
        #expect(throws: (any Error).self) { try MoEDecoder.load(directory: dir.path) }
        do { _ = try MoEDecoder.load(directory: dir.path) } catch {
            #expect("\(error)".contains("model.layers.1.self_attn.mask_allocator.cls_feat_extractor.0.weight"), "\(error)")
        }
        #expect(try MoEDecoder.load(directory: Fixtures.path("tiny-mixtral")).routerWeights == nil)
    }
}
