import Foundation
@testable import Kernels
import Synchronization
import Testing

/// The spinning kernel threads (`WorkerPool`) behind `Parallel.run`: every index runs once, jobs from inside jobs
/// and from several threads at once finish, and the threads wake from sleep and end when retired.
@Suite struct ParallelTests {
    /// Runs one job of `count` indices and returns how many times each index ran (nil when `run` refused it).
    private func tally(_ count: Int, run: (Int, (Int) -> Void) -> Bool) -> [Int]? {
        let hits = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: count)
        for i in 0..<count { (hits + i).initialize(to: Atomic(0)) }
        defer { hits.deinitialize(count: count); hits.deallocate() }
        nonisolated(unsafe) let h = hits
        guard run(count, { i in h[i].add(1, ordering: .relaxed) }) else { return nil }
        return (0..<count).map { hits[$0].load(ordering: .relaxed) }
    }

    private func once(_ count: Int) -> [Int] { Array(repeating: 1, count: count) }

    /// Thousands of back-to-back jobs of 2 to 67 indices on a pool of three threads: an index lost or run twice (a
    /// thread reading the previous job's counter, or the caller returning before a thread finished) shows as a count
    /// other than one.
    @Test func everyIndexRunsOnceInEveryJob() throws {
        let pool = try #require(WorkerPool(threads: 3))
        defer { pool.retire() }
        for round in 0..<3000 {
            let count = 2 + round % 66
            let hits = tally(count) { pool.run($0, $1) }
            #expect(hits == once(count), "round \(round), \(count) indices")
            if hits != once(count) { return }
        }
    }

    /// The caller waits for every index: each one sleeps a little, so an early return would see unwritten slots.
    @Test func runReturnsAfterTheSlowestIndex() throws {
        let pool = try #require(WorkerPool(threads: 1))
        defer { pool.retire() }
        var out = [Int](repeating: 0, count: 4)
        let ran = out.withUnsafeMutableBufferPointer { buffer in
            nonisolated(unsafe) let b = buffer
            return pool.run(4) { i in usleep(2000); b[i] = i + 1 }
        }
        #expect(ran && out == [1, 2, 3, 4])
    }

    /// After a quiet spell longer than the spin the threads sleep; the next job must wake them, not hang.
    @Test func threadsWakeAfterSleeping() throws {
        let pool = try #require(WorkerPool(threads: 2))
        defer { pool.retire() }
        for _ in 0..<5 {
            usleep(useconds_t(3 * WorkerPool.spinNanoseconds / 1000))
            #expect(tally(9) { pool.run($0, $1) } == once(9))
        }
    }

    /// A job started from inside a job finds the pool taken: the pool says so, and `Parallel.run` still runs it.
    @Test func aJobInsideAJobRunsElsewhere() throws {
        let pool = try #require(WorkerPool(threads: 1))
        defer { pool.retire() }
        let inner = Atomic<Int>(0)
        let refused = Atomic<Int>(0)
        let ran = pool.run(2) { _ in
            if !pool.run(3, { _ in }) { refused.add(1, ordering: .relaxed) }
            Parallel.run(5) { _ in inner.add(1, ordering: .relaxed) }
        }
        #expect(ran)
        #expect(refused.load(ordering: .relaxed) == 2)
        #expect(inner.load(ordering: .relaxed) == 10)
    }

    /// Four threads calling `Parallel.run` at once: one holds the pool, the rest go to Dispatch; all finish, every
    /// index once.
    @Test func callersOnSeveralThreadsAllFinish() {
        let bad = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { caller in
            for round in 0..<500 {
                let count = 2 + (round + caller) % 9
                if tally(count, run: { Parallel.run($0, $1); return true }) != once(count) {
                    bad.add(1, ordering: .relaxed)
                }
            }
        }
        #expect(bad.load(ordering: .relaxed) == 0)
    }

    /// With one kernel thread (an MPI rank given one core) a job of several indices runs on the calling thread, in
    /// order; with two again, on the pool. (Other tests running meanwhile only see their products split differently.)
    @Test func oneWorkerRunsEveryIndexOnTheCaller() {
        let before = Parallel.workers
        defer { Parallel.configure(workers: before) }
        Parallel.configure(workers: 1)
        let caller = pthread_self()
        var order: [Int] = []
        var elsewhere = 0
        Parallel.run(6) { i in
            order.append(i)
            if pthread_equal(pthread_self(), caller) == 0 { elsewhere += 1 }
        }
        #expect(order == Array(0..<6) && elsewhere == 0)
        Parallel.configure(workers: 2)
        #expect(tally(7) { Parallel.run($0, $1); return true } == once(7))
    }

    /// A retired pool takes no more jobs (its threads have left).
    @Test func aRetiredPoolRefusesJobs() throws {
        let pool = try #require(WorkerPool(threads: 2))
        #expect(tally(4) { pool.run($0, $1) } == once(4))
        pool.retire()
        let ran = pool.run(2) { _ in }
        #expect(!ran)
    }
}
