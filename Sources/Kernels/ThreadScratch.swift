#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Per-thread scratch buffers for kernels that need a temporary tile (widened weights, attention scores).
///
/// Each thread owns its buffers, so concurrent kernels (worker threads, parallel tests) never share one, and no
/// kernel allocates on the hot path once its thread's buffer has grown to the largest size it needs.
public enum ThreadScratch {
    /// Scratch slots a thread has; a kernel uses its own slot so nested kernels do not overwrite each other.
    public enum Slot: Int, CaseIterable, Sendable {
        case weightTile = 0
        case attentionScores = 1
        case activations = 2
        case attentionRows = 3
    }

    final class Buffers {
        var pointers: [UnsafeMutablePointer<Float>?] = Array(repeating: nil, count: Slot.allCases.count)
        var counts: [Int] = Array(repeating: 0, count: Slot.allCases.count)
        deinit { for p in pointers { p?.deallocate() } }
    }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { raw in
            guard let raw else { return }
            Unmanaged<Buffers>.fromOpaque(raw).release()
        }
        return key
    }()

    /// A buffer of at least `count` floats owned by the calling thread; contents are undefined.
    @inlinable
    public static func buffer(_ slot: Slot, count: Int) -> UnsafeMutablePointer<Float> {
        buffers().take(slot.rawValue, count)
    }

    @usableFromInline
    static func buffers() -> BuffersHandle {
        if let raw = pthread_getspecific(key) {
            return BuffersHandle(Unmanaged<Buffers>.fromOpaque(raw).takeUnretainedValue())
        }
        let b = Buffers()
        pthread_setspecific(key, Unmanaged.passRetained(b).toOpaque())
        return BuffersHandle(b)
    }

    @usableFromInline
    struct BuffersHandle {
        let buffers: Buffers
        init(_ b: Buffers) { buffers = b }
        @usableFromInline
        func take(_ slot: Int, _ count: Int) -> UnsafeMutablePointer<Float> {
            if buffers.counts[slot] < count {
                buffers.pointers[slot]?.deallocate()
                let grown = max(count, buffers.counts[slot] * 2)
                buffers.pointers[slot] = .allocate(capacity: grown)
                buffers.counts[slot] = grown
            }
            return buffers.pointers[slot]!
        }
    }
}
