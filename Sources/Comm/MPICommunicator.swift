import CMPI
import Foundation

/// `Communicator` over MPI_COMM_WORLD. One per process: MPI cannot be initialised twice.
///
/// MPI is owned by the thread that created this (MPI_THREAD_FUNNELED); errors return codes (MPI_ERRORS_RETURN)
/// that are thrown as `MPIError`.
public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    public var counters = CommCounters()
    nonisolated(unsafe) private static var initialised = false
    /// Outgoing all-to-all blocks, reused across calls.
    private var outgoing = RawBuffer()

    /// Initialises MPI; call once, from the thread that will make every MPI call.
    public init() throws {
        precondition(!Self.initialised, "MPI can be initialised once per process")
        Self.initialised = true
        var provided: Int32 = 0
        try Self.check(MPI_Init_thread(nil, nil, Int32(MPI_THREAD_FUNNELED), &provided), "MPI_Init_thread")
        MPI_Comm_set_errhandler(moe_comm_world(), moe_errors_return())
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(moe_comm_world(), &r)
        MPI_Comm_size(moe_comm_world(), &s)
        rank = Int(r)
        size = Int(s)
    }

    /// Finalises MPI (after the last collective).
    public func finalize() { MPI_Finalize() }

    /// Whether this process was started by mpirun (or another launcher): OpenMPI and PMIx set these.
    public static var launchedByMPI: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMIX_RANK"] != nil || env["PMI_RANK"] != nil
    }

    static func check(_ code: Int32, _ call: String) throws {
        guard code != MPI_SUCCESS else { return }
        var buffer = [CChar](repeating: 0, count: Int(MPI_MAX_ERROR_STRING) + 1)
        var length: Int32 = 0
        MPI_Error_string(code, &buffer, &length)
        let text = buffer.prefix(Int(max(0, length))).map { UInt8(bitPattern: $0) }
        throw MPIError(call: call, code: code, message: String(decoding: text, as: UTF8.self))
    }

    public func barrier() throws {
        let t0 = CommCounters.now
        try Self.check(MPI_Barrier(moe_comm_world()), "MPI_Barrier")
        counters.record(.barrier, bytes: 0, since: t0)
    }

    public func allgatherv(_ send: [UInt8]) throws -> [[UInt8]] {
        let t0 = CommCounters.now
        if size <= Self.directCollectiveRanks {
            let others = (0..<size).filter { $0 != rank }
            var received = [[UInt8]](repeating: [], count: size)
            received[rank] = send
            try send.withUnsafeBytes { b in
                let blocks = Dictionary(uniqueKeysWithValues: others.map { ($0, b) })
                for (s, bytes) in try oneRound(send: blocks, from: others, tag: Self.tag(.allgather)) { received[s] = bytes }
            }
            counters.record(.allgather, bytes: send.count * (size - 1), since: t0)
            return received
        }
        var mine = Int32(send.count)
        var counts = [Int32](repeating: 0, count: size)
        try Self.check(MPI_Allgather(&mine, 1, moe_int(), &counts, 1, moe_int(), moe_comm_world()), "MPI_Allgather")
        let displs = Self.displacements(counts)
        var recv = [UInt8](repeating: 0, count: Int(counts.reduce(0, +)))
        try send.withUnsafeBytes { s in
            try recv.withUnsafeMutableBytes { r in
                try Self.check(MPI_Allgatherv(s.baseAddress, mine, moe_byte(), r.baseAddress, counts, displs, moe_byte(),
                                              moe_comm_world()), "MPI_Allgatherv")
            }
        }
        counters.record(.allgather, bytes: send.count * (size - 1), since: t0)
        return Self.split(recv, counts: counts, displs: displs)
    }

    public func broadcast(_ bytes: [UInt8], root: Int) throws -> [UInt8] {
        let t0 = CommCounters.now
        if size <= Self.directCollectiveRanks {
            var result = bytes
            try bytes.withUnsafeBytes { b in
                let blocks = rank == root ? Dictionary(uniqueKeysWithValues: (0..<size).filter { $0 != root }.map { ($0, b) }) : [:]
                let got = try oneRound(send: blocks, from: rank == root ? [] : [root], tag: Self.tag(.broadcast))
                if rank != root { result = got[root]! }
            }
            counters.record(.broadcast, bytes: rank == root ? bytes.count * (size - 1) : 0, since: t0)
            return result
        }
        var n = Int32(bytes.count)
        try Self.check(MPI_Bcast(&n, 1, moe_int(), Int32(root), moe_comm_world()), "MPI_Bcast")
        var buffer = rank == root ? bytes : [UInt8](repeating: 0, count: Int(n))
        try buffer.withUnsafeMutableBytes { b in
            try Self.check(MPI_Bcast(b.baseAddress, n, moe_byte(), Int32(root), moe_comm_world()), "MPI_Bcast")
        }
        counters.record(.broadcast, bytes: rank == root ? Int(n) * (size - 1) : 0, since: t0)
        return buffer
    }

    /// One network round where blocks are small (`oneRound`): no all-to-all of sizes first.
    public func alltoallv(_ send: [[UInt8]], kind: CommCounters.Kind) throws -> [[UInt8]] {
        precondition(send.count == size)
        let t0 = CommCounters.now
        let others = (0..<size).filter { $0 != rank }
        var received = [[UInt8]](repeating: [], count: size)
        received[rank] = send[rank]
        // One copy of the outgoing blocks into a buffer kept across calls: a fresh megabyte each call costs the
        // shared-memory transport several times the copy (measured with `moe comm-bench`).
        let total = others.reduce(0) { $0 + send[$1].count }
        let out = outgoing.reserve(total)
        var blocks: [Int: UnsafeRawBufferPointer] = [:]
        var offset = 0
        for d in others {
            send[d].withUnsafeBytes { if $0.count > 0 { (out + offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            blocks[d] = UnsafeRawBufferPointer(start: out + offset, count: send[d].count)
            offset += send[d].count
        }
        for (s, bytes) in try oneRound(send: blocks, from: others, tag: Self.tag(kind)) { received[s] = bytes }
        counters.record(kind, bytes: total, since: t0)
        return received
    }

    /// Jobs up to this size use `oneRound` for allgathers and broadcasts (one round, each rank sending to every
    /// other); larger ones MPI's own collectives, whose trees and rings take fewer steps there.
    static let directCollectiveRanks = 8

    /// Tags by kind of operation, two apart (`oneRound` uses tag and tag + 1; point-to-point exchanges use 77).
    static func tag(_ kind: CommCounters.Kind) -> Int32 {
        switch kind {
        case .dispatch: return 101
        case .combine: return 103
        case .allgather: return 105
        case .broadcast: return 107
        case .pointToPoint: return 77
        case .barrier: return 109
        case .kvReplication: return postedTag
        }
    }

    public func exchange(send messages: [Int: [UInt8]], receive sizes: [Int: Int]) throws -> [Int: [UInt8]] {
        guard !messages.isEmpty || !sizes.isEmpty else { return [:] }
        let t0 = CommCounters.now
        let tag: Int32 = 77
        let sources = sizes.keys.sorted()
        var buffers = sources.map { [UInt8](repeating: 0, count: sizes[$0]!) }
        let outgoing = messages.keys.sorted().map { ($0, messages[$0]!) }
        var requests: [MPI_Request?] = []
        // Buffers stay alive and unmoved until MPI_Waitall: `buffers` and `outgoing` are not touched meanwhile.
        try withExtendedLifetime(outgoing) {
            for i in buffers.indices {
                var req: MPI_Request? = moe_request_null()
                try buffers[i].withUnsafeMutableBytes { b in
                    try Self.check(MPI_Irecv(b.baseAddress, Int32(b.count), moe_byte(), Int32(sources[i]), tag,
                                             moe_comm_world(), &req), "MPI_Irecv")
                }
                requests.append(req)
            }
            for (dst, bytes) in outgoing {
                var req: MPI_Request? = moe_request_null()
                try bytes.withUnsafeBytes { b in
                    try Self.check(MPI_Isend(b.baseAddress, Int32(b.count), moe_byte(), Int32(dst), tag, moe_comm_world(), &req),
                                   "MPI_Isend")
                }
                requests.append(req)
                counters.record(.pointToPoint, bytes: bytes.count)
            }
            try Self.check(MPI_Waitall(Int32(requests.count), &requests, nil), "MPI_Waitall")
        }
        counters.seconds[.pointToPoint, default: 0] += Double(CommCounters.now - t0) / 1e9
        var received: [Int: [UInt8]] = [:]
        for (i, src) in sources.enumerated() { received[src] = buffers[i] }
        return received
    }

    public func abort(code: Int32) -> Never {
        MPI_Abort(moe_comm_world(), code)
        fatalError("MPI_Abort returned")
    }

    static func displacements(_ counts: [Int32]) -> [Int32] {
        var d = [Int32](repeating: 0, count: counts.count)
        for i in 1..<max(counts.count, 1) where i < counts.count { d[i] = d[i - 1] + counts[i - 1] }
        return d
    }

    static func split(_ flat: [UInt8], counts: [Int32], displs: [Int32]) -> [[UInt8]] {
        counts.indices.map { Array(flat[Int(displs[$0])..<Int(displs[$0] + counts[$0])]) }
    }
}

/// A grow-only raw buffer, freed with its owner.
final class RawBuffer {
    private var pointer: UnsafeMutableRawPointer?
    private var capacity = 0

    /// Room for at least `n` bytes (contents undefined after growing).
    func reserve(_ n: Int) -> UnsafeMutableRawPointer {
        if n > capacity || pointer == nil {
            pointer?.deallocate()
            capacity = max(n, capacity * 3 / 2, 4096)
            pointer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
        }
        return pointer!
    }

    deinit { pointer?.deallocate() }
}
