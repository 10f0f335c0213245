import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// SIGTERM on the head of `moe serve`, told apart by who sent it.
///
/// OpenMPI's `mpirun` (or its daemon on the node) sends SIGTERM to every rank when it ends the job: a rank exited
/// or was killed, or `mpirun` itself was signalled; one second later it sends SIGKILL (`odls_base_sigkill_timeout`).
/// Draining cannot finish then, so the head fails every request in flight with an error (a stream event or a
/// 500) at once and exits 1. A SIGTERM from anyone else (a user's `kill`, a process manager without the launch
/// wrapper) drains as SIGUSR1 does. The sender comes from `siginfo_t.si_pid`: the handler stores it and wakes a
/// thread through a pipe (the only work a signal handler may do).
enum TermSignal {
    nonisolated(unsafe) private static var pipeFDs: [Int32] = [-1, -1]
    nonisolated(unsafe) private static var writeFD: Int32 = -1
    nonisolated(unsafe) private static var sender: pid_t = 0

    /// Whether a SIGTERM from `sender` is this process's launcher ending the job.
    static func isLauncher(_ sender: pid_t, underMPI: Bool) -> Bool { underMPI && sender == getppid() }

    /// Installs the handler; `handle` runs on a thread of its own with the sender's pid, for each SIGTERM.
    static func install(_ handle: @escaping @Sendable (pid_t) -> Void) {
        guard pipe(&pipeFDs) == 0 else { return }
        writeFD = pipeFDs[1]
        let readFD = pipeFDs[0]
        var action = sigaction()
        action.__sigaction_handler.sa_sigaction = { _, info, _ in
            TermSignal.sender = info?.pointee._sifields._kill.si_pid ?? 0
            var byte: UInt8 = 1
            _ = write(TermSignal.writeFD, &byte, 1)
        }
        action.sa_flags = SA_SIGINFO | SA_RESTART
        sigemptyset(&action.sa_mask)
        sigaction(SIGTERM, &action, nil)
        Thread.detachNewThread {
            var byte: UInt8 = 0
            while read(readFD, &byte, 1) == 1 { handle(TermSignal.sender) }
        }
    }
}
