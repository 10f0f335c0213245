import Kernels

/// One sequence's keys and values for every layer, `[capacity, kvDim]` per layer, in f32 or bf16.
public final class KVCache {
    public let layers: Int
    public let kvDim: Int
    public let dtype: KVDType
    /// Positions whose keys and values are stored (the next token's position).
    public private(set) var length = 0
    public private(set) var capacity = 0
    /// Per layer, whether layer-routed attention sent this sequence to sparse attention (`--attention routed`):
    /// nil until its first prefill pass decides; then kept for every later pass and decode step.
    public var routedSparse: [Bool?]
    /// The sequence's prompt length, as the router's `min-prompt` rule reads it; nil: its first pass's tokens.
    public var promptLength: Int?
    private var keys: [UnsafeMutableRawPointer] = []
    private var values: [UnsafeMutableRawPointer] = []

    public init(layers: Int, kvDim: Int, dtype: KVDType = .f32, capacity: Int = 64) {
        self.layers = layers
        self.kvDim = kvDim
        self.dtype = dtype
        routedSparse = Array(repeating: nil, count: layers)
        reserve(max(capacity, 1))
    }

    deinit {
        for p in keys { p.deallocate() }
        for p in values { p.deallocate() }
    }

    /// Bytes of one position's keys (or values) at one layer.
    public var rowBytes: Int { kvDim * dtype.byteSize }

    /// Makes room for `positions` positions in total, keeping what is stored.
    public func reserve(_ positions: Int) {
        guard positions > capacity else { return }
        let grown = max(positions, capacity * 2), row = rowBytes
        func grow(_ old: [UnsafeMutableRawPointer]) -> [UnsafeMutableRawPointer] {
            (0..<layers).map { l in
                let p = UnsafeMutableRawPointer.allocate(byteCount: grown * row, alignment: 64)
                if l < old.count {
                    p.copyMemory(from: old[l], byteCount: length * row)
                    old[l].deallocate()
                }
                return p
            }
        }
        keys = grow(keys)
        values = grow(values)
        capacity = grown
    }

    /// The keys and values of `layer`, as attention reads them.
    public func rows(_ layer: Int) -> Attention.Rows { Attention.Rows(keys: keys[layer], values: values[layer], dtype: dtype) }

    /// Raw bytes of positions `first ..< first + count` of `layer` (keys, then the same span of values), as they
    /// travel between ranks.
    public func keyBytes(_ layer: Int, first: Int) -> UnsafeMutableRawPointer { keys[layer] + first * rowBytes }
    public func valueBytes(_ layer: Int, first: Int) -> UnsafeMutableRawPointer { values[layer] + first * rowBytes }

    /// Stores `count` positions' keys and values (f32 `[count, kvDim]`) at `first ..< first + count` of `layer`,
    /// rounded to bf16 when the cache holds bf16.
    public func write(layer: Int, first: Int, count: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>) {
        precondition(first + count <= capacity)
        let n = count * kvDim
        switch dtype {
        case .f32:
            (keys[layer] + first * rowBytes).assumingMemoryBound(to: Float.self).update(from: k, count: n)
            (values[layer] + first * rowBytes).assumingMemoryBound(to: Float.self).update(from: v, count: n)
        case .bf16:
            let kd = (keys[layer] + first * rowBytes).assumingMemoryBound(to: UInt16.self)
            let vd = (values[layer] + first * rowBytes).assumingMemoryBound(to: UInt16.self)
            for i in 0..<n {
                kd[i] = Widen.toBF16(k[i])
                vd[i] = Widen.toBF16(v[i])
            }
        }
    }

    /// Marks `count` more positions as stored, once every layer has written them.
    public func commit(_ count: Int) {
        precondition(length + count <= capacity)
        length += count
    }
}
