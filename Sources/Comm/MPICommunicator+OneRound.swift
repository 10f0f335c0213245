import CMPI

extension MPICommunicator {
    /// Bytes of a block that travel in its first message (with its 8-byte length); more follow in a second.
    static let firstMessageBytes = 32 * 1024

    /// Sends `blocks[d]` to each rank d named and receives one block from each rank in `sources`, in one network
    /// round where the blocks are small: every receive is posted before any send with room for a first message of
    /// `firstMessageBytes` (a block's length, then its first bytes), so no rank needs the sizes beforehand (the
    /// usual all-to-all of sizes first costs a second round, a link latency across hosts). The rest of a larger
    /// block goes at once as a second message, which its receiver takes as soon as the first has told it the
    /// length. Tag `tag` and `tag + 1`; MPI keeps the order of messages between two ranks under one tag, so
    /// successive calls cannot mix.
    func oneRound(send blocks: [Int: UnsafeRawBufferPointer], from sources: [Int], tag: Int32) throws -> [Int: [UInt8]] {
        let first = Self.firstMessageBytes
        // Receives first: one first-message buffer per source.
        let inbox = UnsafeMutableRawPointer.allocate(byteCount: max(sources.count, 1) * (first + 8), alignment: 16)
        defer { inbox.deallocate() }
        var receives = [MPI_Request?](repeating: moe_request_null(), count: sources.count)
        for (i, s) in sources.enumerated() {
            try Self.check(MPI_Irecv(inbox + i * (first + 8), Int32(first + 8), moe_byte(), Int32(s), tag, moe_comm_world(), &receives[i]),
                           "MPI_Irecv")
        }
        // Sends: each block's length and head in one buffer; the rest straight from the caller's bytes.
        let destinations = blocks.keys.sorted()
        let outbox = UnsafeMutableRawPointer.allocate(byteCount: max(destinations.count, 1) * (first + 8), alignment: 16)
        defer { outbox.deallocate() }
        var sends = [MPI_Request?]()
        for (i, d) in destinations.enumerated() {
            let block = blocks[d]!, head = min(block.count, first)
            let slot = outbox + i * (first + 8)
            slot.storeBytes(of: UInt64(block.count).littleEndian, as: UInt64.self)
            if head > 0 { (slot + 8).copyMemory(from: block.baseAddress!, byteCount: head) }
            var r: MPI_Request? = moe_request_null()
            try Self.check(MPI_Isend(slot, Int32(8 + head), moe_byte(), Int32(d), tag, moe_comm_world(), &r), "MPI_Isend")
            sends.append(r)
            if block.count > first {
                var rest: MPI_Request? = moe_request_null()
                try Self.check(MPI_Isend(block.baseAddress! + first, Int32(block.count - first), moe_byte(), Int32(d), tag + 1,
                                         moe_comm_world(), &rest), "MPI_Isend")
                sends.append(rest)
            }
        }
        try Self.check(MPI_Waitall(Int32(receives.count), &receives, nil), "MPI_Waitall")
        var arrays: [[UInt8]] = []
        var tails = [MPI_Request?]()
        for (i, _) in sources.enumerated() {
            let slot = inbox + i * (first + 8)
            let length = Int(UInt64(littleEndian: slot.loadUnaligned(as: UInt64.self)))
            var bytes = [UInt8](repeating: 0, count: length)
            bytes.withUnsafeMutableBytes { $0.baseAddress.map { $0.copyMemory(from: slot + 8, byteCount: min(length, first)) } }
            arrays.append(bytes)
        }
        // Second messages straight into their arrays, which are not touched again until the wait below (as in
        // `exchange`, the arrays' storage stays where it is).
        for (i, s) in sources.enumerated() where arrays[i].count > first {
            var r: MPI_Request? = moe_request_null()
            try arrays[i].withUnsafeMutableBytes { b in
                try Self.check(MPI_Irecv(b.baseAddress! + first, Int32(b.count - first), moe_byte(), Int32(s), tag + 1, moe_comm_world(), &r),
                               "MPI_Irecv")
            }
            tails.append(r)
        }
        try Self.check(MPI_Waitall(Int32(tails.count), &tails, nil), "MPI_Waitall")
        var received: [Int: [UInt8]] = [:]
        for (i, s) in sources.enumerated() { received[s] = arrays[i] }
        try Self.check(MPI_Waitall(Int32(sends.count), &sends, nil), "MPI_Waitall")
        return received
    }
}
