import Foundation
import Kernels
@testable import Models
import Testing

/// The paged KV cache: transformers' numbers whatever the page size, admission by pages, and pages of windowed
/// attention going back to the pool.
@Suite struct PagedKVTests {
    static func pool(_ model: MoEDecoder, pageSize: Int, pages: Int, dtype: KVDType = .f32) -> KVPool {
        KVPool(layers: model.spec.layers, kvDim: model.spec.kvDim, dtype: dtype, pageSize: pageSize, pageCount: pages)
    }

    /// Pages of 1, 16 and 64 tokens from one shared pool, two prompts prefilled together in passes of 7 tokens:
    /// transformers' greedy tokens and step logits (1e-4), and every page back in the pool afterwards.
    @Test(arguments: Fixtures.names, [1, 16, 64])
    func pagesOfAnySizeMatchTransformers(fixture: String, pageSize: Int) throws {
        let expected = try Fixtures.expected(fixture)
        let model = try MoEDecoder.load(directory: Fixtures.path(fixture))
        model.kvPool = Self.pool(model, pageSize: pageSize, pages: 2 * (64 / pageSize + 2))
        model.prefillChunk = 7
        let want = expected.ints("gen.tokens")
        let results = try Engine(model: model).generate([GenerationRequest(promptIds: expected.ints("gen.prompt"), maxNewTokens: want.count),
                                                         GenerationRequest(promptIds: expected.ints("c.input_ids"), maxNewTokens: 1)],
                                                        keepLogits: true)
        #expect(results[0].tokens == want)
        #expect(maxDifference(results[0].stepLogits, expected.floats("gen.step_logits")) < 1e-4)
        let lastRow = Array(expected.floats("c.logits").suffix(model.spec.vocabSize))
        #expect(maxDifference(results[1].stepLogits, lastRow) < 1e-4)
        #expect(model.kvPool!.freePages == model.kvPool!.pageCount)
    }

    /// A batch whose pages the pool cannot hold fails before any forward pass and leaves every page free; a
    /// request that could never fit is refused by validation, naming the pages.
    @Test func admissionIsByPages() throws {
        let model = try MoEDecoder.load(directory: Fixtures.path("tiny-mixtral"))
        model.kvPool = Self.pool(model, pageSize: 4, pages: 6)
        let engine = Engine(model: model)
        let request = GenerationRequest(promptIds: [5, 6, 7, 8, 9], maxNewTokens: 6)  // 11 positions: 3 pages
        #expect(try engine.generate([request, request])[1].tokens.count == 6)
        do {
            _ = try engine.generate([request, request, request])
            Issue.record("three requests of three pages fitted in six")
        } catch let e as KVPoolExhausted {
            #expect(e.needed == 3 && e.free == 0 && e.pool == 6, "\(e)")
        }
        #expect(model.kvPool!.freePages == 6)
        let huge = GenerationRequest(promptIds: [5, 6, 7], maxNewTokens: 22)  // 25 positions: 7 pages
        #expect(throws: ModelError.invalidArgument("the prompt (3 tokens) and max_new_tokens (22) need 7 KV pages of 4 tokens, beyond the pool's 6 (--kv-memory, --page-size)")) {
            try engine.validate(huge)
        }
    }

    /// Sink + window on every layer: pages between the sink and the window go back as the sequence grows (pages
    /// of 2 tokens, sink 2, window 4, blocks of 2), and the logits equal those with pages of 64, which keep all.
    @Test func windowedAttentionGivesBackPagesNoLayerReads() throws {
        let expected = try Fixtures.expected("tiny-qwen2moe")
        let ids = expected.ints("c.input_ids")
        func run(pageSize: Int) throws -> (logits: [Float], released: Int, held: Int, free: Int, pool: KVPool) {
            let model = try MoEDecoder.load(directory: Fixtures.path("tiny-qwen2moe"))
            model.sparse = .sinkWindow(sink: 2, window: 4, block: 2)
            let pool = Self.pool(model, pageSize: pageSize, pages: 64 / pageSize + 1)
            model.kvPool = pool
            let cache = try model.makeCache(capacity: ids.count)
            var logits: [Float] = []
            for lo in stride(from: 0, to: ids.count, by: 5) {
                logits += try model.forward(.init(tokens: Array(ids[lo..<min(ids.count, lo + 5)]), cache: cache), logits: .all)
            }
            return (logits, cache.releasedPages, cache.heldPages, pool.freePages, pool)
        }
        let small = try run(pageSize: 2), large = try run(pageSize: 64)
        #expect(maxDifference(small.logits, large.logits) < 1e-5)
        // 40 positions: the next query (40, block 20) sees the sink 0-1 and blocks 19 on (positions 38-39), so pages
        // 1-18 (positions 2-37) are unread; the sink page and page 19 stay.
        #expect(small.released == 18 && small.held == 2, "released \(small.released), held \(small.held)")
        #expect(small.free == small.pool.pageCount - 2 && small.pool.freePages == small.pool.pageCount)  // and all once it ends
        #expect(large.released == 0)
    }

    /// Quest top-k decode (`--sparse-kind topk`): a budget covering every page is full attention; a budget of two
    /// pages reads exactly two pages per KV head, layer and decode step, and changes the numbers.
    @Test(arguments: ["tiny-mixtral", "tiny-qwen3moe"])
    func topKDecodeReadsItsBudget(fixture: String) throws {
        let expected = try Fixtures.expected(fixture)
        let model = try MoEDecoder.load(directory: Fixtures.path(fixture))
        let request = GenerationRequest(promptIds: expected.ints("c.input_ids"), maxNewTokens: 5)
        let full = try Engine(model: model).generate([request], keepLogits: true)[0]
        func topK(budget: Int) throws -> GenerationResult {
            model.topK = TopKPages(budget: budget, sink: 4)
            model.kvPool = KVPool(layers: model.spec.layers, kvDim: model.spec.kvDim, dtype: .f32, pageSize: 4, pageCount: 40, keyBounds: true)
            model.topKPagesRead = 0
            defer { model.topK = nil; model.kvPool = nil }
            return try Engine(model: model).generate([request], keepLogits: true)[0]
        }
        let covering = try topK(budget: 1000)
        #expect(covering.tokens == full.tokens && maxDifference(covering.stepLogits, full.stepLogits) < 1e-5)
        let small = try topK(budget: 8)
        // 4 decode steps (the first token comes from the prefill), every layer, every KV head, 2 pages each.
        #expect(model.topKPagesRead == 4 * model.spec.layers * model.spec.kvHeads * 2)
        #expect(maxDifference(small.stepLogits, full.stepLogits) > 1e-3)
        #expect(Array(small.stepLogits.prefix(model.spec.vocabSize)) == Array(full.stepLogits.prefix(model.spec.vocabSize)), "prefill runs full")
    }

    /// Prefix caching in the pool: whole prompt pages are found again by their tokens (not the last partial one,
    /// never beyond the limit), shared pages count once and stay held while any cache holds them, pages no cache
    /// holds are reused only when the free list runs out (the end of a chain before its start), and a prefix whose
    /// first page was reused is not found through its later pages.
    @Test func prefixPagesAreSharedAndReusedLast() throws {
        let pool = KVPool(layers: 1, kvDim: 2, dtype: .f32, pageSize: 4, pageCount: 6)
        pool.enablePrefixCaching()
        let prompt = Array(10..<21)  // 11 tokens: two whole pages and 3 more
        let a = try KVCache(pool: pool, capacity: 12)
        a.commit(11)
        a.cachePrompt(prompt)
        #expect(pool.cachedPages == 2 && pool.freePages == 3)
        #expect(pool.cachedPrefix(prompt, limit: 10) == 8 && pool.cachedPrefix(prompt, limit: 7) == 4)
        #expect(pool.cachedPrefix([10, 11, 12, 13, 99, 15, 16, 17], limit: 8) == 4)  // the second page differs
        #expect(pool.cachedPrefix([11, 12, 13, 14], limit: 4) == 0)

        let b = try KVCache(pool: pool, capacity: 12, prompt: prompt, cacheLimit: 10)  // two shared pages and one new
        #expect(b.length == 8 && pool.freePages == 2)
        #expect(b.pageTable[0] == a.pageTable[0] && b.pageTable[1] == a.pageTable[1] && b.pageTable[2] != a.pageTable[2])
        a.free()
        #expect(pool.freePages == 3)  // a's third page; the shared two are still b's
        b.free()
        #expect(pool.freePages == 6 && pool.cachedPages == 2)  // cached pages no cache holds count as free

        // Five pages for another prompt: the free list has 4, so one cached page is taken back: the chain's end.
        let other = try KVCache(pool: pool, capacity: 20)
        #expect(pool.cachedPages == 1 && pool.cachedPrefix(prompt, limit: 10) == 4)
        other.free()
        let c = try KVCache(pool: pool, capacity: 24)  // every page: the first cached page goes too
        #expect(pool.cachedPages == 0 && pool.cachedPrefix(prompt, limit: 10) == 0)
        #expect(throws: KVPoolExhausted.self) { _ = try KVCache(pool: pool, capacity: 4) }
        c.free()
        #expect(pool.freePages == 6)
    }

    /// A cached prefix read again goes to the back of the reuse order: when pages run short, the prefix released
    /// longer ago goes first.
    @Test func aPrefixReadAgainIsReusedLast() throws {
        let pool = KVPool(layers: 1, kvDim: 2, dtype: .f32, pageSize: 2, pageCount: 4)
        pool.enablePrefixCaching()
        let x = [1, 2, 3, 4, 9], y = [5, 6, 7, 8, 9]
        for prompt in [x, y] {
            let c = try KVCache(pool: pool, capacity: 4)
            c.commit(4)
            c.cachePrompt(prompt)
            c.free()
        }
        #expect(pool.cachedPages == 4 && pool.freePages == 4)
        let again = try KVCache(pool: pool, capacity: 4, prompt: x, cacheLimit: 4)
        #expect(again.length == 4)
        again.free()
        let other = try KVCache(pool: pool, capacity: 4)  // two pages: y's, released before x's second release
        #expect(pool.cachedPrefix(x, limit: 4) == 4 && pool.cachedPrefix(y, limit: 4) == 0)
        other.free()
    }
}
