import CMPI
import Foundation

extension MPICommunicator {
    /// `broadcast`, but ranks other than `root` wait for the message by polling and sleeping (from 50 µs, doubling
    /// to 2 ms) instead of spinning in MPI: what the step loop uses for its plan, so that ranks of an idle server
    /// leave the cores to the HTTP threads and to clients. While steps run back to back the plan arrives within
    /// the first polls, before any sleep.
    public func broadcastPatiently(_ bytes: [UInt8], root: Int) throws -> [UInt8] {
        let t0 = CommCounters.now
        var n = Int64(bytes.count)
        var request: MPI_Request? = moe_request_null()
        try Self.check(MPI_Ibcast(&n, 1, moe_long_long(), Int32(root), moe_comm_world(), &request), "MPI_Ibcast")
        var done: Int32 = 0
        var polls = 0
        var pause: useconds_t = 50
        while true {
            try Self.check(MPI_Test(&request, &done, moe_status_ignore()), "MPI_Test")
            if done != 0 { break }
            polls += 1
            if rank != root, polls > 200 {
                usleep(pause)
                pause = min(pause * 2, 2_000)
            }
        }
        var buffer = rank == root ? bytes : [UInt8](repeating: 0, count: Int(n))
        if n > 0 {
            try buffer.withUnsafeMutableBytes { b in
                try Self.check(MPI_Bcast(b.baseAddress, Int32(n), moe_byte(), Int32(root), moe_comm_world()), "MPI_Bcast")
            }
        }
        counters.record(.broadcast, bytes: rank == root ? Int(n) * (size - 1) : 0, since: t0)
        return buffer
    }
}
