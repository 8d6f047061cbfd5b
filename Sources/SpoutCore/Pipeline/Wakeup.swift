import Foundation

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
