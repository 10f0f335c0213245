import Dispatch

/// Collective and point-to-point operations among the ranks of a job, over raw bytes.
///
/// Typed helpers (`Communicator+Typed.swift`) build on these; counters record every call and byte, so benchmarks
/// and tests can see how many collectives a layer made and how much crossed ranks.
public protocol Communicator: AnyObject {
    /// This process's rank, `0 ..< size`.
    var rank: Int { get }
    /// Ranks in the job.
    var size: Int { get }
    /// Calls and bytes so far, by kind.
    var counters: CommCounters { get set }

    func barrier() throws
    /// Every rank's `send` bytes (lengths may differ), concatenated in rank order on every rank.
    func allgatherv(_ send: [UInt8]) throws -> [[UInt8]]
    /// `root`'s bytes on every rank.
    func broadcast(_ bytes: [UInt8], root: Int) throws -> [UInt8]
    /// `broadcast` for messages that may be long in coming: the other ranks wait without spinning.
    func broadcastPatiently(_ bytes: [UInt8], root: Int) throws -> [UInt8]
    /// `send[r]` goes to rank r; returns what each rank sent here, by source rank. One logical all-to-all
    /// (MPI_Alltoall of the sizes, then MPI_Alltoallv of the bytes), counted under `kind`.
    func alltoallv(_ send: [[UInt8]], kind: CommCounters.Kind) throws -> [[UInt8]]
    /// Point-to-point: sends `messages[r]` to each rank r named and receives `sizes[s]` bytes from each rank s
    /// named; ranks not named exchange nothing, and no call is made when both are empty. Returns received bytes
    /// by source rank.
    func exchange(send messages: [Int: [UInt8]], receive sizes: [Int: Int]) throws -> [Int: [UInt8]]
    /// Starts an allgather of `send` (at most `capacity` bytes on every rank) and returns at once, counted
    /// under `kvReplication`; `wait` on the result completes it.
    func postAllgather(_ send: [UInt8], capacity: Int) throws -> PostedAllgather
    /// Ends the whole job with `code` (MPI_Abort): for a rank that cannot go on while others wait.
    func abort(code: Int32) -> Never
}

/// What a communicator has done: calls and bytes sent to other ranks, by kind of operation.
public struct CommCounters: Sendable, Equatable {
    public enum Kind: String, CaseIterable, Sendable {
        /// The all-to-all that sends tokens to their experts, and the one that brings results back (`ep2` only).
        case dispatch, combine
        case allgather, broadcast, pointToPoint = "point_to_point", barrier
        /// K/V rows replicated to every rank as each layer makes them (posted allgathers).
        case kvReplication = "kv_replication"
    }

    public var calls: [Kind: Int] = [:]
    /// Bytes this rank sent to other ranks (its own share is not counted).
    public var bytes: [Kind: Int] = [:]
    /// Seconds this rank spent inside the calls: moving bytes, and waiting for ranks that arrive later.
    public var seconds: [Kind: Double] = [:]

    public init() {}

    public mutating func record(_ kind: Kind, bytes: Int, since start: UInt64? = nil) {
        calls[kind, default: 0] += 1
        self.bytes[kind, default: 0] += bytes
        if let start { seconds[kind, default: 0] += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
    }

    /// The moment a call starts, for `record(_:bytes:since:)`.
    public static var now: UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// Counters accumulated since `earlier`.
    public func since(_ earlier: CommCounters) -> CommCounters {
        var d = CommCounters()
        for k in Kind.allCases {
            d.calls[k] = (calls[k] ?? 0) - (earlier.calls[k] ?? 0)
            d.bytes[k] = (bytes[k] ?? 0) - (earlier.bytes[k] ?? 0)
            d.seconds[k] = (seconds[k] ?? 0) - (earlier.seconds[k] ?? 0)
        }
        return d
    }
}

/// An MPI call that failed, with its return code and MPI's text for it.
public struct MPIError: Error, CustomStringConvertible, Equatable {
    public let call: String
    public let code: Int32
    public let message: String
    public var description: String { "\(call) failed (MPI error \(code): \(message))" }
}
