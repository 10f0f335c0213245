@testable import Comm
import Testing

/// The MPI calls themselves run under mpirun in the multi-rank tests (`moeTests/ClusterTests`); MPI can be
/// initialised once per process, so these cover the bookkeeping around them.
@Suite struct CommTests {
    @Test func countersAccumulateAndSubtractByKind() {
        var c = CommCounters()
        c.record(.dispatch, bytes: 100)
        let before = c
        c.record(.dispatch, bytes: 40)
        c.record(.pointToPoint, bytes: 8)
        c.record(.pointToPoint, bytes: 0)
        let d = c.since(before)
        #expect(d.calls[.dispatch] == 1 && d.bytes[.dispatch] == 40)
        #expect(d.calls[.pointToPoint] == 2 && d.bytes[.pointToPoint] == 8)
        #expect(d.calls[.combine] == 0)
        #expect(c.calls[.dispatch] == 2 && c.bytes[.dispatch] == 140)
        #expect(d.seconds[.dispatch] == 0, "a call recorded without a start adds no time")
    }

    @Test func countersTimeTheCallsThatGiveAStart() throws {
        var c = CommCounters()
        c.record(.combine, bytes: 1, since: CommCounters.now - 30_000_000)  // began 30 ms ago
        let before = c
        c.record(.combine, bytes: 1, since: CommCounters.now - 5_000_000)
        let d = c.since(before)
        #expect((0.005..<0.05).contains(d.seconds[.combine] ?? 0), "\(d.seconds)")
        #expect((0.035..<0.5).contains(c.seconds[.combine] ?? 0), "\(c.seconds)")
    }

    @Test func displacementsAndSplitInvertConcatenation() {
        let parts: [[UInt8]] = [[1, 2], [], [3], [4, 5, 6]]
        let counts = parts.map { Int32($0.count) }
        let displs = MPICommunicator.displacements(counts)
        #expect(displs == [0, 2, 2, 3])
        #expect(MPICommunicator.split(parts.flatMap { $0 }, counts: counts, displs: displs) == parts)
        #expect(MPICommunicator.displacements([7]) == [0])
    }

    @Test func mpiErrorsNameTheCall() {
        #expect(MPIError(call: "MPI_Alltoallv", code: 15, message: "MPI_ERR_PENDING").description
            == "MPI_Alltoallv failed (MPI error 15: MPI_ERR_PENDING)")
    }
}
