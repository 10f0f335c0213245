import COpenBLAS
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The worker threads that split large kernels, and the OpenBLAS threading they replace.
///
/// Every GEMM is split by output rows into `workers` chunks, each run by one thread calling single-threaded
/// OpenBLAS. Owning the threads here (rather than letting OpenBLAS spawn its own) lets bf16/f16 weights be
/// widened tile by tile on the same threads that multiply them, and lets an MPI rank run on one core.
public enum Parallel {
    /// Threads the kernels may use. Set once at start-up with `configure(workers:)`; default: all cores.
    public private(set) nonisolated(unsafe) static var workers: Int = {
        openblas_set_num_threads(1)
        return max(1, min(System.coreCount, 64))
    }()

    /// Chooses how many threads kernels use (1 for a rank that shares the machine with other ranks).
    public static func configure(workers: Int) {
        openblas_set_num_threads(1)
        self.workers = max(1, workers)
        // Retired outside the lock: a job in flight may itself call `run`, which takes the lock.
        let old = pool.withLock { pool -> WorkerPool? in
            defer { pool = nil }
            return pool
        }
        old?.retire()
    }

    /// The spinning threads beside the caller (`workers - 1` of them), started at the first job that needs them.
    private static let pool = Mutex<WorkerPool?>(nil)

    /// Runs `body(i)` for `i` in `0..<count`, spread over the worker threads; runs inline, in order, when
    /// `count == 1` or the kernels have one thread (an MPI rank given one core).
    ///
    /// Jobs go to `WorkerPool`'s spinning threads; a job that finds them taken (a call from inside a job, or from a
    /// second thread at the same time) goes to Dispatch instead. Either way every index runs once, and the call
    /// returns after all have finished.
    public static func run(_ count: Int, _ body: (Int) -> Void) {
        let threads = workers - 1
        if count <= 1 || threads < 1 {
            for i in 0..<max(count, 0) { body(i) }
            return
        }
        let current = pool.withLock { pool -> WorkerPool? in
            if pool == nil { pool = WorkerPool(threads: threads) }
            return pool
        }
        if let current, current.run(count, body) { return }
        withoutActuallyEscaping(body) { escapable in
            // The closure only touches disjoint output ranges chosen by the caller; concurrentPerform returns
            // after every iteration has finished, so nothing outlives this call.
            nonisolated(unsafe) let task = escapable
            DispatchQueue.concurrentPerform(iterations: count) { task($0) }
        }
    }

    /// Splits `0..<total` into at most `parts` contiguous ranges whose bounds are multiples of `align`.
    @inlinable
    public static func ranges(_ total: Int, parts: Int, align: Int = 16) -> [Range<Int>] {
        let parts = max(1, min(parts, (total + align - 1) / align))
        var out: [Range<Int>] = []
        out.reserveCapacity(parts)
        var start = 0
        for p in 0..<parts {
            var end = (total * (p + 1)) / parts
            end = p == parts - 1 ? total : min(total, ((end + align - 1) / align) * align)
            if end > start { out.append(start..<end) }
            start = end
        }
        return out
    }
}

/// Facts about the machine the kernels need.
public enum System {
    /// Logical cores this process may run on: OpenBLAS counts them from the CPU affinity (`taskset`, a cpuset of a
    /// container or of Slurm), so a rank bound to one core of a two-core machine gets one worker, not two.
    public static var coreCount: Int {
        let online = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        let allowed = Int(openblas_get_num_procs())
        return allowed > 0 ? min(allowed, online) : online
    }
}
