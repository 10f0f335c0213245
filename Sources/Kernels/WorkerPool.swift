import CSpin
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Kernel threads that wait for the next product by spinning, and sleep only after a quiet millisecond.
///
/// A decode step hands its threads hundreds of small jobs, tens of microseconds each. `DispatchQueue.concurrentPerform`
/// parks its workers between them, and waking a parked thread took 35-100 us on the development machine (a virtual
/// machine, where a sleeping CPU must be scheduled again by the host): two threads ran a 20 us job pair in 54 us and
/// a 200 us pair in 280-440 us, about what one thread takes for both. Spinning threads pick a job up within a
/// microsecond (the same pairs: 20 and 200 us). OpenMP runtimes and llama.cpp's thread pool wait the same way.
///
/// One caller at a time: `run` returns false, running nothing, while another thread's job holds the pool (a
/// nested call from inside a job, or tests running side by side); the caller then runs its job another way.
final class WorkerPool: @unchecked Sendable {
    // @unchecked: `job` and `jobCount` are written only by the thread holding `busy`, before it publishes a new
    // `generation`, and read by the pool's threads only between that publication and their check-out (`inside`),
    // which the writer waits for before it writes them again. `retired` is written once, under `busy`.

    /// Threads the pool owns (the calling thread works beside them).
    let threads: Int
    /// How long a thread spins for the next job before it sleeps.
    static let spinNanoseconds: UInt64 = 1_000_000

    private let busy = Atomic<Bool>(false)
    private let generation = Atomic<Int>(0)
    private let nextItem = Atomic<Int>(0)
    private let inside = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private nonisolated(unsafe) var job: ((Int) -> Void)?
    private nonisolated(unsafe) var jobCount = 0
    private nonisolated(unsafe) var retired = false
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    /// Starts `threads` threads. Returns nil when the system refuses to start one (the caller falls back to
    /// Dispatch; the threads already started leave).
    init?(threads: Int) {
        self.threads = threads
        pthread_mutex_init(lock, nil)
        pthread_cond_init(wake, nil)
        for _ in 0..<threads {
            // Each thread holds the pool until it leaves its loop (after `retire`).
            let context = Unmanaged.passRetained(self).toOpaque()
            #if canImport(Glibc)
            var thread = pthread_t()
            #else
            var thread: pthread_t?
            #endif
            let started = pthread_create(&thread, nil, { context in
                let pool = Unmanaged<WorkerPool>.fromOpaque(context!).takeRetainedValue()
                pool.serve()
                return nil
            }, context)
            if started != 0 {
                Unmanaged<WorkerPool>.fromOpaque(context).release()
                retire()  // the threads already started leave
                return nil
            }
            pthread_detach(thread)
        }
    }

    /// Runs `body(i)` for every `i` in `0..<count`, on the calling thread and the pool's threads, each index once,
    /// and returns after all of them have finished. Returns false, having run nothing, when the pool is taken.
    func run(_ count: Int, _ body: (Int) -> Void) -> Bool {
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return false }
        withoutActuallyEscaping(body) { body in
            job = body
            jobCount = count
            nextItem.store(0, ordering: .relaxed)
            inside.store(threads, ordering: .relaxed)
            // Publishes the job; sequentially consistent with the sleepers' count, so a thread about to sleep
            // either sees this generation or is counted below and woken.
            generation.add(1, ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                pthread_mutex_lock(lock)
                pthread_cond_broadcast(wake)
                pthread_mutex_unlock(lock)
            }
            claim(body, count)
            // Every thread checks out of every job, so none still reads `job` when the next one is written.
            while inside.load(ordering: .acquiring) > 0 { moe_spin_pause() }
            job = nil
        }
        busy.store(false, ordering: .releasing)
        return true
    }

    /// Ends the pool's threads (after any job in flight); the pool takes no more jobs.
    func retire() {
        while !busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged { sched_yield() }
        retired = true
        generation.add(1, ordering: .sequentiallyConsistent)
        pthread_mutex_lock(lock)
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(lock)
    }

    deinit {
        pthread_cond_destroy(wake)
        pthread_mutex_destroy(lock)
        wake.deallocate()
        lock.deallocate()
    }

    /// Takes indices until none is left.
    private func claim(_ body: (Int) -> Void, _ count: Int) {
        while true {
            let i = nextItem.wrappingAdd(1, ordering: .relaxed).oldValue
            if i >= count { return }
            body(i)
        }
    }

    /// A pool thread's loop: wait for a new generation (spinning, then sleeping), work on it, check out.
    private func serve() {
        // Generation 0 is the pool's start, so a thread that starts late still sees the first job as new.
        var seen = 0
        while true {
            var current = generation.load(ordering: .acquiring)
            if current == seen {
                let start = DispatchTime.now().uptimeNanoseconds
                var spins = 0
                while current == seen {
                    moe_spin_pause()
                    spins &+= 1
                    if spins & 63 == 0 && DispatchTime.now().uptimeNanoseconds &- start > Self.spinNanoseconds {
                        pthread_mutex_lock(lock)
                        sleepers.add(1, ordering: .sequentiallyConsistent)
                        while generation.load(ordering: .sequentiallyConsistent) == seen { pthread_cond_wait(wake, lock) }
                        sleepers.subtract(1, ordering: .sequentiallyConsistent)
                        pthread_mutex_unlock(lock)
                    }
                    current = generation.load(ordering: .acquiring)
                }
            }
            seen = current
            if retired { return }
            work()
            inside.subtract(1, ordering: .releasing)
        }
    }

    /// A pool thread's share of the current job. Not inlined, so that the thread's reference to the job is released
    /// before it checks out (`run` checks, through `withoutActuallyEscaping`, that no reference outlives it).
    @inline(never)
    private func work() {
        if let body = job { claim(body, jobCount) }
    }
}
