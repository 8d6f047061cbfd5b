import Glibc

/// The two questions a sink that owns a non-blocking socket asks of it (Redis's through
/// hiredis, STOMP's): is it ready, and did the connect finish. Failures are the reason as text;
/// each sink wraps it in its own error.
public enum SocketStatus {
    /// Waits up to `milliseconds` until `descriptor` is ready for `events`: true when it is (or
    /// has an error or hang-up, which the next read or write reports); false on timeout or EINTR.
    public static func wait(_ descriptor: Int32, for events: Int16, milliseconds: Int32) -> Result<Bool, Reason> {
        var entry = pollfd(fd: descriptor, events: events, revents: 0)
        let ready = poll(&entry, 1, milliseconds)
        if ready < 0 { return errno == EINTR ? .success(false) : .failure(Reason(errno: errno)) }
        return .success(ready > 0)
    }

    /// Whether a non-blocking connect has completed: false while it runs, the reason when it
    /// failed (refused, unreachable).
    public static func connectFinished(_ descriptor: Int32) -> Result<Bool, Reason> {
        switch wait(descriptor, for: Int16(POLLOUT), milliseconds: 0) {
        case let .failure(reason): return .failure(reason)
        case .success(false): return .success(false)
        case .success(true):
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            if getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &error, &length) != 0 { error = errno }
            return error == 0 ? .success(true) : .failure(Reason(errno: error))
        }
    }

    public struct Reason: Error, CustomStringConvertible {
        public var description: String
        init(errno: Int32) { description = String(cString: strerror(errno)) }
    }
}
