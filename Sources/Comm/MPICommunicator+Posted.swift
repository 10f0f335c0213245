import CMPI
import Foundation

/// An allgather started with `MPICommunicator.postAllgather` and not yet complete: one block from this rank to
/// every other, one from each other rank here. Its messages move while this rank makes other MPI calls (MPI has
/// no progress thread here); `test` lets them move without waiting, `wait` completes them.
public final class PostedAllgather {
    let sources: [Int]
    let capacity: Int
    private let inbox: UnsafeMutableRawPointer
    private let outbox: UnsafeMutableRawPointer
    private var requests: [MPI_Request?]
    private var statuses: [MPI_Status]
    private var lengths: [Int]?
    /// Seconds `wait` spent blocked (what the overlap did not hide).
    public private(set) var waitedSeconds = 0.0

    init(send: [UInt8], sources: [Int], capacity: Int, tag: Int32) throws {
        self.sources = sources
        self.capacity = capacity
        inbox = .allocate(byteCount: max(sources.count * capacity, 1), alignment: 16)
        let outbox = UnsafeMutableRawPointer.allocate(byteCount: max(send.count, 1), alignment: 16)
        send.withUnsafeBytes { if $0.count > 0 { outbox.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        self.outbox = outbox
        requests = []
        statuses = Array(repeating: MPI_Status(), count: 2 * sources.count)
        for (i, s) in sources.enumerated() {
            var r: MPI_Request? = moe_request_null()
            try MPICommunicator.check(MPI_Irecv(inbox + i * capacity, Int32(capacity), moe_byte(), Int32(s), tag, moe_comm_world(), &r),
                                      "MPI_Irecv")
            requests.append(r)
        }
        for d in sources {
            var r: MPI_Request? = moe_request_null()
            try MPICommunicator.check(MPI_Isend(outbox, Int32(send.count), moe_byte(), Int32(d), tag, moe_comm_world(), &r), "MPI_Isend")
            requests.append(r)
        }
    }

    deinit {
        // Buffers MPI may still write are never freed: every posted allgather is waited for on the normal path
        // (the engine completes each before it returns); one left behind by an error is leaked, not waited for,
        // because its peer may be gone and the job is ending.
        guard lengths != nil else { return }
        inbox.deallocate()
        outbox.deallocate()
    }

    /// Lets the messages progress; true once every one has completed.
    public func test() throws -> Bool {
        if lengths != nil { return true }
        var flag: Int32 = 0
        try MPICommunicator.check(MPI_Testall(Int32(requests.count), &requests, &flag, &statuses), "MPI_Testall")
        if flag != 0 { try finish() }
        return flag != 0
    }

    /// Completes every message and calls `body` with each source's block, in rank order.
    public func wait(_ body: (_ source: Int, _ bytes: UnsafeRawBufferPointer) throws -> Void) throws {
        if lengths == nil {
            let start = DispatchTime.now().uptimeNanoseconds
            let code = MPI_Waitall(Int32(requests.count), &requests, &statuses)
            waitedSeconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            if code != MPI_SUCCESS {
                // A block larger than the receive buffer: say so, rather than MPI's bare "message truncated".
                if statuses.prefix(sources.count).contains(where: { $0.MPI_ERROR == MPI_ERR_TRUNCATE }) {
                    throw MPIError(call: "MPI_Waitall", code: code,
                                   message: "a posted allgather block exceeds its \(capacity)-byte receive buffer")
                }
                try MPICommunicator.check(code, "MPI_Waitall")
            }
            try finish()
        }
        for (i, s) in sources.enumerated() { try body(s, UnsafeRawBufferPointer(start: inbox + i * capacity, count: lengths![i])) }
    }

    private func finish() throws {
        lengths = try (0..<sources.count).map { i in
            var count: Int32 = 0
            try MPICommunicator.check(MPI_Get_count(&statuses[i], moe_byte(), &count), "MPI_Get_count")
            return Int(count)
        }
    }
}

extension MPICommunicator {
    /// Starts an allgather of `send` (at most `capacity` bytes on every rank) and returns at once; complete it
    /// with `wait` before using what it brings. Posted allgathers complete in the order they were posted
    /// between any two ranks (one tag, MPI's non-overtaking rule), so every rank must post the same sequence.
    public func postAllgather(_ send: [UInt8], capacity: Int) throws -> PostedAllgather {
        precondition(send.count <= capacity, "a posted allgather block is larger than its stated capacity")
        let others = (0..<size).filter { $0 != rank }
        counters.record(.kvReplication, bytes: send.count * others.count)
        return try PostedAllgather(send: send, sources: others, capacity: capacity, tag: Self.postedTag)
    }

    /// The tag of posted allgathers (`tag(_:)` holds the others).
    static let postedTag: Int32 = 111
}
