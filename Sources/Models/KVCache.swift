import Kernels

/// Fixed-size pages of keys and values for every layer (PagedAttention's layout): page p of layer l holds
/// `pageSize` positions' keys at `keys[l] + p · pageSize · rowBytes`, and as many values. A sequence's page table
/// names one page per `pageSize` positions, the same page in every layer.
///
/// The storage is reserved at once and touched as pages are first written, so a large pool costs address space,
/// not memory, until it is used.
public final class KVPool {
    public let layers: Int
    public let kvDim: Int
    public let dtype: KVDType
    public let pageSize: Int
    public let pageCount: Int
    private let keys: [UnsafeMutableRawPointer]
    private let values: [UnsafeMutableRawPointer]
    /// Per layer, each page's per-dimension key minima and maxima `[pageCount, kvDim]` (`--sparse-kind topk`).
    private let keyMinima: [UnsafeMutablePointer<Float>]
    private let keyMaxima: [UnsafeMutablePointer<Float>]
    private var free: [Int32]
    /// The fewest free pages there have been (for reports).
    public private(set) var lowestFree: Int
    /// Per page, how many caches hold it (a cached prompt page may be in several sequences' tables).
    private var holders: [Int32]
    /// Prefix caching (`enablePrefixCaching`): full pages of prompts, by their tokens and the entry of the page
    /// before them, so that a later prompt that starts with the same tokens reads them instead of computing them.
    public private(set) var prefixCaching = false
    private struct PrefixKey: Hashable {
        /// The entry of the previous page (0: none); entries are numbered once and never reused, so an evicted
        /// parent leaves its children unreachable rather than attached to another page's content.
        let parent: Int
        let tokens: [Int32]
    }
    private var entries: [PrefixKey: (page: Int32, id: Int)] = [:]
    private var keyOfPage: [Int32: PrefixKey] = [:]
    private var nextEntry = 1
    /// Cached pages no cache holds, oldest first: taken back (their entries dropped) when the free list runs out.
    /// `evictable` holds each such page's release number; a queue entry whose number is not its page's any more
    /// (held again, or released again later) is skipped, so a page goes back in the order of its last release.
    private var evictionQueue: [(page: Int32, release: Int)] = []
    private var evictionHead = 0
    private var evictable: [Int32: Int] = [:]
    private var releases = 0

    /// `keyBounds`: keep each page's key minima and maxima, for Quest's page selection.
    public init(layers: Int, kvDim: Int, dtype: KVDType, pageSize: Int, pageCount: Int, keyBounds: Bool = false) {
        self.layers = layers
        self.kvDim = kvDim
        self.dtype = dtype
        self.pageSize = pageSize
        self.pageCount = pageCount
        let bytes = max(pageCount * pageSize * kvDim * dtype.byteSize, 1)
        keys = (0..<layers).map { _ in UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64) }
        values = (0..<layers).map { _ in UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64) }
        let boundCount = keyBounds ? max(pageCount * kvDim, 1) : 0
        keyMinima = (0..<(keyBounds ? layers : 0)).map { _ in .allocate(capacity: boundCount) }
        keyMaxima = (0..<(keyBounds ? layers : 0)).map { _ in .allocate(capacity: boundCount) }
        free = (0..<Int32(pageCount)).reversed()  // page 0 first
        lowestFree = pageCount
        holders = Array(repeating: 0, count: pageCount)
    }

    /// Keeps full prompt pages for reuse (`--enable-prefix-caching`). Every rank that keeps a sequence's cache
    /// makes the same calls in the same order, so their indexes hold the same prefixes.
    public func enablePrefixCaching() { prefixCaching = true }

    deinit {
        for p in keys { p.deallocate() }
        for p in values { p.deallocate() }
        for p in keyMinima + keyMaxima { p.deallocate() }
    }

    /// Whether pages keep their key bounds.
    public var keepsKeyBounds: Bool { !keyMinima.isEmpty }

    /// The key bounds of `layer`'s pages (only when `keepsKeyBounds`).
    public func keyBounds(_ layer: Int) -> Attention.KeyBounds {
        Attention.KeyBounds(minima: keyMinima[layer], maxima: keyMaxima[layer])
    }

    /// Folds stored key rows into their pages' bounds: row `offset` of physical `page`; offset 0 starts the page.
    func noteKeys(layer: Int, page: Int, offset: Int, rows: Int, keys: UnsafeRawPointer) {
        guard keepsKeyBounds else { return }
        let lo = keyMinima[layer] + page * kvDim, hi = keyMaxima[layer] + page * kvDim
        var row = [Float](repeating: 0, count: kvDim)
        for r in 0..<rows {
            row.withUnsafeMutableBufferPointer { b in
                switch dtype {
                case .f32: b.baseAddress!.update(from: (keys + r * rowBytes).assumingMemoryBound(to: Float.self), count: kvDim)
                case .bf16: Widen.bf16((keys + r * rowBytes).assumingMemoryBound(to: UInt16.self), into: b.baseAddress!, count: kvDim)
                }
            }
            if offset + r == 0 {
                lo.update(from: row, count: kvDim)
                hi.update(from: row, count: kvDim)
            } else {
                for i in 0..<kvDim {
                    lo[i] = min(lo[i], row[i])
                    hi[i] = max(hi[i], row[i])
                }
            }
        }
    }

    /// Bytes of one position's keys (or values) at one layer.
    public var rowBytes: Int { kvDim * dtype.byteSize }
    /// Bytes one page takes in all layers, keys and values.
    public var pageBytes: Int { 2 * layers * pageSize * rowBytes }
    /// Pages a sequence can take: free ones and cached ones no sequence holds.
    public var freePages: Int { free.count + evictable.count }
    public var usedPages: Int { pageCount - freePages }
    /// Pages that hold a cached prompt prefix.
    public var cachedPages: Int { keyOfPage.count }

    /// Pages that `positions` positions need.
    public func pages(for positions: Int) -> Int { (positions + pageSize - 1) / pageSize }

    /// Pages for a `--kv-memory` of `bytes` (each page's key bounds counted when it keeps them).
    public static func pageCount(memory bytes: Int, layers: Int, kvDim: Int, dtype: KVDType, pageSize: Int, keyBounds: Bool = false) -> Int {
        bytes / max(2 * layers * pageSize * kvDim * dtype.byteSize + (keyBounds ? 2 * layers * kvDim * 4 : 0), 1)
    }

    /// `n` pages, or nil (and nothing taken) when fewer are free; cached pages no sequence holds are taken back,
    /// the least recently released first, when the free list runs out.
    func take(_ n: Int) -> [Int32]? {
        guard n <= freePages else { return nil }
        while free.count < n {
            let (page, release) = evictionQueue[evictionHead]
            evictionHead += 1
            guard evictable[page] == release else { continue }
            evictable[page] = nil
            if let key = keyOfPage.removeValue(forKey: page) { entries[key] = nil }
            free.append(page)
        }
        if evictionHead > 4096 && evictionHead * 2 > evictionQueue.count {
            evictionQueue.removeFirst(evictionHead)
            evictionHead = 0
        }
        let taken = Array(free.suffix(n).reversed())
        free.removeLast(n)
        for p in taken { holders[Int(p)] = 1 }
        lowestFree = min(lowestFree, freePages)
        return taken
    }

    /// Lets go of `pages` (a sequence's, in table order): a page no cache holds any more is free again, or, when
    /// it holds a cached prefix, evictable (the last page of a sequence first, so that chains lose their ends
    /// before their starts).
    func give(_ pages: [Int32]) {
        for p in pages.reversed() {
            holders[Int(p)] -= 1
            guard holders[Int(p)] == 0 else { continue }
            if keyOfPage[p] != nil {
                releases += 1
                evictable[p] = releases
                evictionQueue.append((p, releases))
            } else {
                free.append(p)
            }
        }
    }

    /// The cached pages that hold the longest prefix of `tokens` in whole pages, at most `limit` tokens, now held
    /// by the caller (give them back with `give`).
    func attachPrefix(_ tokens: [Int], limit: Int) -> [Int32] {
        let pages = lookUp(tokens, limit: limit)
        for p in pages {
            holders[Int(p)] += 1
            evictable[p] = nil
        }
        return pages
    }

    /// Tokens of `tokens` that `attachPrefix` would find now (whole pages, at most `limit`), attaching nothing.
    public func cachedPrefix(_ tokens: [Int], limit: Int) -> Int { lookUp(tokens, limit: limit).count * pageSize }

    private func lookUp(_ tokens: [Int], limit: Int) -> [Int32] {
        guard prefixCaching else { return [] }
        var pages: [Int32] = [], parent = 0
        for i in 0..<(min(limit, tokens.count) / pageSize) {
            guard let entry = entries[key(tokens, page: i, parent: parent)] else { break }
            pages.append(entry.page)
            parent = entry.id
        }
        return pages
    }

    private func key(_ tokens: [Int], page i: Int, parent: Int) -> PrefixKey {
        PrefixKey(parent: parent, tokens: tokens[(i * pageSize)..<((i + 1) * pageSize)].map { Int32(truncatingIfNeeded: $0) })
    }

    /// Enters the whole pages of `tokens` (the first `pages.count` pages of a sequence, physical `pages`, -1 where
    /// one went back) into the index; a prefix already there keeps its page.
    func register(_ tokens: [Int], pages: [Int32]) {
        guard prefixCaching else { return }
        var parent = 0
        for (i, page) in pages.enumerated() where (i + 1) * pageSize <= tokens.count {
            let key = key(tokens, page: i, parent: parent)
            if let entry = entries[key] {
                parent = entry.id
                continue
            }
            guard page >= 0, keyOfPage[page] == nil else { return }
            entries[key] = (page, nextEntry)
            keyOfPage[page] = key
            parent = nextEntry
            nextEntry += 1
        }
    }

    func keyBase(_ layer: Int) -> UnsafeMutableRawPointer { keys[layer] }
    func valueBase(_ layer: Int) -> UnsafeMutableRawPointer { values[layer] }
}

/// The pool has too few free pages for a sequence.
public struct KVPoolExhausted: Error, CustomStringConvertible {
    public let needed: Int
    public let free: Int
    public let pool: Int
    public let pageSize: Int
    public var description: String {
        "the KV cache needs \(needed) pages of \(pageSize) tokens and \(free) of the pool's \(pool) are free (--kv-memory, --page-size)"
    }
}

/// One sequence's keys and values for every layer, in pages of a `KVPool`, in f32 or bf16.
public final class KVCache {
    public let pool: KVPool
    public var layers: Int { pool.layers }
    public var kvDim: Int { pool.kvDim }
    public var dtype: KVDType { pool.dtype }
    /// Positions whose keys and values are stored (the next token's position).
    public private(set) var length = 0
    /// Positions its pages hold.
    public var capacity: Int { pageCount * pool.pageSize }
    /// Per layer, whether layer-routed attention sent this sequence to sparse attention (`--attention routed`):
    /// nil until its first prefill pass decides; then kept for every later pass and decode step.
    public var routedSparse: [Bool?]
    /// The sequence's prompt length, as the router's `min-prompt` rule reads it; nil: its first pass's tokens.
    public var promptLength: Int?
    /// The page table, one entry per `pageSize` positions; -1 where a page went back to the pool.
    private var table: UnsafeMutablePointer<Int32>
    private var tableCapacity: Int
    private var pageCount = 0
    /// Pages that went back to the pool (none is read again).
    public private(set) var releasedPages = 0

    /// A cache with pages for `capacity` positions taken from `pool`. With `prompt` (and the pool's prefix
    /// caching on), the cached pages holding the longest whole-page prefix of it, at most `cacheLimit` tokens,
    /// come first, already stored: `length` starts there.
    public init(pool: KVPool, capacity: Int, prompt: [Int]? = nil, cacheLimit: Int = 0) throws {
        self.pool = pool
        routedSparse = Array(repeating: nil, count: pool.layers)
        tableCapacity = max(pool.pages(for: capacity), 4)
        table = .allocate(capacity: tableCapacity)
        if let prompt {
            let cached = pool.attachPrefix(prompt, limit: cacheLimit)
            for (i, p) in cached.enumerated() { table[i] = p }
            pageCount = cached.count
            length = cached.count * pool.pageSize
        }
        try reserve(max(capacity, 1))  // on failure deinit gives the prefix pages back
    }

    deinit {
        free()
        table.deallocate()
    }

    /// Gives every page back to the pool (a sequence that ends; deinit does it otherwise). The cluster calls it
    /// at the same point of a step on every rank, so that pools with prefix caching change in the same order.
    public func free() {
        var held: [Int32] = []
        for i in 0..<pageCount where table[i] >= 0 { held.append(table[i]) }
        pool.give(held)
        pageCount = 0
        releasedPages = 0
    }

    /// Enters this sequence's stored whole pages of `prompt` into the pool's prefix index.
    public func cachePrompt(_ prompt: [Int]) {
        guard pool.prefixCaching else { return }
        let pages = min(pageCount, min(prompt.count, length) / pool.pageSize)
        pool.register(prompt, pages: (0..<pages).map { table[$0] })
    }

    /// Bytes of one position's keys (or values) at one layer.
    public var rowBytes: Int { pool.rowBytes }
    /// Pages this sequence holds now.
    public var heldPages: Int { pageCount - releasedPages }

    /// Takes pages until `positions` positions fit; throws `KVPoolExhausted` (taking none) when the pool is short.
    public func reserve(_ positions: Int) throws {
        let needed = pool.pages(for: positions)
        guard needed > pageCount else { return }
        guard let pages = pool.take(needed - pageCount) else {
            throw KVPoolExhausted(needed: needed - pageCount, free: pool.freePages, pool: pool.pageCount, pageSize: pool.pageSize)
        }
        if needed > tableCapacity {
            let grown = UnsafeMutablePointer<Int32>.allocate(capacity: max(needed, 2 * tableCapacity))
            grown.update(from: table, count: pageCount)
            table.deallocate()
            table = grown
            tableCapacity = max(needed, 2 * tableCapacity)
        }
        for (i, p) in pages.enumerated() { table[pageCount + i] = p }
        pageCount = needed
    }

    /// The keys and values of `layer`, as attention reads them (through the page table).
    public func rows(_ layer: Int) -> Attention.Rows {
        Attention.Rows(keys: pool.keyBase(layer), values: pool.valueBase(layer), dtype: dtype, pages: table, pageSize: pool.pageSize)
    }

    /// Folds the stored keys of positions `first ..< first + count` of `layer` into their pages' bounds (after they
    /// were copied in as raw bytes; `write` does it itself).
    public func noteKeys(layer: Int, first: Int, count: Int) {
        guard pool.keepsKeyBounds else { return }
        let p = pool.pageSize
        forEachRun(layer: layer, first: first, count: count) { j, rows, keys, _ in
            pool.noteKeys(layer: layer, page: Int(table[j / p]), offset: j % p, rows: rows, keys: keys)
        }
    }

    /// Positions `first ..< first + count` of `layer` as runs adjacent in memory: `body(position, rows, keys,
    /// values)` for each, in order (the raw bytes of keys and values, as they travel between ranks).
    public func forEachRun(layer: Int, first: Int, count: Int,
                           _ body: (_ position: Int, _ rows: Int, _ keys: UnsafeMutableRawPointer, _ values: UnsafeMutableRawPointer) -> Void) {
        let p = pool.pageSize, row = rowBytes
        var j = first
        while j < first + count {
            let n = min(first + count, (j / p + 1) * p) - j
            let physical = Int(table[j / p]) * p + j % p
            body(j, n, pool.keyBase(layer) + physical * row, pool.valueBase(layer) + physical * row)
            j += n
        }
    }

    /// Stores `count` positions' keys and values (f32 `[count, kvDim]`) at `first ..< first + count` of `layer`,
    /// rounded to bf16 when the cache holds bf16.
    public func write(layer: Int, first: Int, count: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>) {
        precondition(first + count <= capacity)
        let d = kvDim
        forEachRun(layer: layer, first: first, count: count) { j, rows, kd, vd in
            let src = (j - first) * d, n = rows * d
            switch dtype {
            case .f32:
                kd.assumingMemoryBound(to: Float.self).update(from: k + src, count: n)
                vd.assumingMemoryBound(to: Float.self).update(from: v + src, count: n)
            case .bf16:
                let kb = kd.assumingMemoryBound(to: UInt16.self), vb = vd.assumingMemoryBound(to: UInt16.self)
                for i in 0..<n {
                    kb[i] = Widen.toBF16(k[src + i])
                    vb[i] = Widen.toBF16(v[src + i])
                }
            }
        }
        noteKeys(layer: layer, first: first, count: count)
    }

    /// The logical-to-physical page table (for key bounds).
    public var pageTable: UnsafePointer<Int32> { UnsafePointer(table) }

    /// Marks `count` more positions as stored, once every layer has written them.
    public func commit(_ count: Int) {
        precondition(length + count <= capacity)
        length += count
    }

    /// Gives back the pages that hold only positions in `unread` (positions no later query of any layer reads):
    /// their table entries become -1. Returns how many went back.
    @discardableResult
    public func release(unread: Range<Int>) -> Int {
        let p = pool.pageSize
        let lo = (unread.lowerBound + p - 1) / p, hi = min(unread.upperBound / p, pageCount)
        guard lo < hi else { return 0 }
        var back: [Int32] = []
        for i in lo..<hi where table[i] >= 0 {
            back.append(table[i])
            table[i] = -1
        }
        pool.give(back)
        releasedPages += back.count
        return back.count
    }
}
