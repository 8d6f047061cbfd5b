import Foundation
import Synchronization

/// SIGINT/SIGTERM received so far, and the pipe that wakes the relay: what the signal handler
/// touches (an atomic and write(2), both async-signal-safe).
private let processStopSignals = Atomic<Int>(0)
nonisolated(unsafe) private var processStopWakeDescriptor: Int32 = -1

private func handleStopSignal(_ number: Int32) {
    guard processStopSignals.wrappingAdd(1, ordering: .acquiringAndReleasing).oldValue == 0 else {
        let message: StaticString = "spout: warning: second signal: exiting without waiting for acknowledgements\n"
        _ = write(STDERR_FILENO, message.utf8Start, message.utf8CodeUnitCount)
        _exit(130)
    }
    var byte: UInt8 = 1
    _ = write(processStopWakeDescriptor, &byte, 1)
}

/// A stop request that wakes the relay's wait: SIGINT/SIGTERM (`forProcessSignals`) or tests
/// call `request()`; the relay polls `descriptor` beside the database socket.
public final class StopSignal: Sendable {
    private let requested = Atomic<Bool>(false)
    private let wakeup = Wakeup()
    private let followsProcessSignals: Bool

    public init() { followsProcessSignals = false }

    private init(followingProcessSignals: Bool) { followsProcessSignals = followingProcessSignals }

    /// SIGINT and SIGTERM request the stop; a second one exits at once (nothing more is
    /// confirmed, so nothing is lost either). The handlers are in place when this returns:
    /// a dispatch signal source is set up later, on another thread, after the default action
    /// was switched off — a signal in between was lost, and spout ran on.
    public static func forProcessSignals() -> StopSignal {
        let stop = StopSignal(followingProcessSignals: true)
        _ = processStopSignals.load(ordering: .relaxed)
        processStopWakeDescriptor = stop.wakeup.signalDescriptor
        signal(SIGPIPE, SIG_IGN)
        var action = sigaction()
        action.__sigaction_handler.sa_handler = handleStopSignal
        sigemptyset(&action.sa_mask)
        action.sa_flags = SA_RESTART
        sigaction(SIGINT, &action, nil)
        sigaction(SIGTERM, &action, nil)
        return stop
    }

    public var isRequested: Bool {
        requested.load(ordering: .acquiring) || (followsProcessSignals && processStopSignals.load(ordering: .acquiring) > 0)
    }

    /// Readable once a stop was requested.
    public var descriptor: Int32 { wakeup.descriptor }

    public func request() {
        requested.store(true, ordering: .releasing)
        wakeup.signal()
    }
}

/// A wakeup for sinks whose deliveries complete on other threads: `signal()` makes
/// `descriptor` readable. The sink owns it: its `poll` calls `drain()` before it reports,
/// or the relay's wait would return at once forever.
public final class Wakeup: Sendable {
    private let pipe: (read: Int32, write: Int32)

    public init() {
        var fds: [Int32] = [-1, -1]
        if Glibc.pipe(&fds) == 0 {
            for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        }
        pipe = (fds[0], fds[1])
    }

    deinit {
        close(pipe.read)
        close(pipe.write)
    }

    public var descriptor: Int32 { pipe.read }

    /// The end `signal()` writes to (for a signal handler, which may only call write(2)).
    var signalDescriptor: Int32 { pipe.write }

    public func signal() {
        var byte: UInt8 = 1
        _ = write(pipe.write, &byte, 1)
    }

    public func drain() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while read(pipe.read, &buffer, buffer.count) > 0 {}
    }
}
