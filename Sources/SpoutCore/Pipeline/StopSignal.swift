import Foundation
import Synchronization

/// SIGINT/SIGTERM received so far, and the pipe that wakes the relay: what the signal handler
/// touches (an atomic and write(2), both async-signal-safe).
private let processStopSignals = Atomic<Int>(0)
nonisolated(unsafe) private var processStopWakeDescriptor: Int32 = -1

/// The line the second signal writes: in the log format of the process, rendered before the
/// handler is installed (a handler may not allocate). JSON lines get their time from
/// `writeSecondSignalLine`, which formats it with arithmetic alone.
nonisolated(unsafe) private var secondSignalFormat: Log.Format = .text
private let secondSignalMessage: StaticString = "second signal: exiting without waiting for acknowledgements"

private func handleStopSignal(_ number: Int32) {
    guard processStopSignals.wrappingAdd(1, ordering: .acquiringAndReleasing).oldValue == 0 else {
        writeSecondSignalLine()
        _exit(130)
    }
    var byte: UInt8 = 1
    _ = write(processStopWakeDescriptor, &byte, 1)
}

/// Async-signal-safe: clock_gettime(2), a stack buffer and write(2).
private func writeSecondSignalLine() {
    withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 256) { buffer in
        var length = 0
        func append(_ text: StaticString) {
            for index in 0..<text.utf8CodeUnitCount where length < buffer.count {
                buffer[length] = text.utf8Start[index]
                length += 1
            }
        }
        func append(_ value: Int, digits: Int) {
            var divisor = 1
            for _ in 1..<digits { divisor *= 10 }
            var rest = value
            while divisor > 0, length < buffer.count {
                buffer[length] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: (rest / divisor) % 10)
                rest %= divisor
                divisor /= 10
                length += 1
            }
        }
        if secondSignalFormat == .json {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            let days = Int64(now.tv_sec) / 86_400, secondOfDay = now.tv_sec % 86_400
            // Integer arithmetic only, no allocation: safe in a signal handler.
            let (year, month, day) = PostgresTimestamp.civilDate(daysSinceUnixEpoch: days)
            append("{\"time\":\"")
            append(Int(year), digits: 4); append("-"); append(Int(month), digits: 2); append("-"); append(Int(day), digits: 2)
            append("T"); append(Int(secondOfDay / 3600), digits: 2); append(":"); append(Int(secondOfDay / 60 % 60), digits: 2)
            append(":"); append(Int(secondOfDay % 60), digits: 2); append("."); append(Int(now.tv_nsec / 1_000_000), digits: 3)
            append("Z\",\"level\":\"warning\",\"message\":\""); append(secondSignalMessage); append("\"}\n")
        } else {
            append("spout: warning: "); append(secondSignalMessage); append("\n")
        }
        _ = write(STDERR_FILENO, buffer.baseAddress, length)
    }
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
    /// `log` gives the format of the line a second signal writes.
    public static func forProcessSignals(log: Log = Log()) -> StopSignal {
        let stop = StopSignal(followingProcessSignals: true)
        secondSignalFormat = log.format
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
