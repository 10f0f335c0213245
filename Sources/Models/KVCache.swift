import Kernels

/// Keys and values of one sequence, every layer: `[positions, kvHeads * headDim]` per layer, grown by doubling.
public final class KVCache {
    public let layers: Int
    public let kvDim: Int
    /// Positions whose keys and values are stored (the next token's position).
    public private(set) var length = 0
    public private(set) var capacity = 0
    private var keys: [UnsafeMutablePointer<Float>] = []
    private var values: [UnsafeMutablePointer<Float>] = []

    public init(layers: Int, kvDim: Int, capacity: Int = 64) {
        self.layers = layers
        self.kvDim = kvDim
        reserve(max(capacity, 1))
    }

    deinit {
        for p in keys { p.deallocate() }
        for p in values { p.deallocate() }
    }

    /// Makes room for `positions` positions in total, keeping what is stored.
    public func reserve(_ positions: Int) {
        guard positions > capacity else { return }
        let grown = max(positions, capacity * 2)
        func grow(_ old: [UnsafeMutablePointer<Float>]) -> [UnsafeMutablePointer<Float>] {
            (0..<layers).map { l in
                let p = UnsafeMutablePointer<Float>.allocate(capacity: grown * kvDim)
                if l < old.count {
                    p.update(from: old[l], count: length * kvDim)
                    old[l].deallocate()
                }
                return p
            }
        }
        keys = grow(keys)
        values = grow(values)
        capacity = grown
    }

    /// Keys of `layer`, `[capacity, kvDim]`.
    public func keys(_ layer: Int) -> UnsafeMutablePointer<Float> { keys[layer] }
    /// Values of `layer`, `[capacity, kvDim]`.
    public func values(_ layer: Int) -> UnsafeMutablePointer<Float> { values[layer] }

    /// Marks `count` more positions as stored, once every layer has written them.
    public func commit(_ count: Int) {
        precondition(length + count <= capacity)
        length += count
    }
}
