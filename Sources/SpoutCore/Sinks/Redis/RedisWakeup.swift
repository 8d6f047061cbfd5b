import CHiredis
// epoll, which Swift's Glibc module does not expose, comes with the NATS shim.
import CNats
import Foundation

/// What the relay waits on for the Redis sink: an epoll set holding a timerfd armed for the
/// sink's next deadline (reconnect backoff, connect or reply timeout, a refused batch's
/// retry) and the connection's socket. The relay polls descriptors for POLLIN only; the set
/// is readable as soon as one member is ready for what it is registered for, so a connecting
/// socket's POLLOUT and the timer's expiry reach the relay too. Without it the relay would
/// poll the sink every millisecond while Redis is down.
final class RedisWakeup {
    let descriptor: Int32
    private let timer: Int32
    /// When the timer fires; nil while disarmed.
    private var armedFor: ContinuousClock.Instant?
    /// The socket in the set: which connection (by `RedisStreamSink`'s count), and its events.
    private var watched: (descriptor: Int32, connection: Int, events: UInt32)?

    init() throws(SpoutError) {
        descriptor = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard descriptor >= 0 else { throw .sink(Self.failure("epoll_create1")) }
        timer = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC))
        guard timer >= 0 else {
            let error = Self.failure("timerfd_create")
            Glibc.close(descriptor)
            throw .sink(error)
        }
        var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: timer))
        guard epoll_ctl(descriptor, EPOLL_CTL_ADD, timer, &event) == 0 else {
            let error = Self.failure("epoll_ctl")
            Glibc.close(timer)
            Glibc.close(descriptor)
            throw .sink(error)
        }
    }

    deinit {
        Glibc.close(timer)
        Glibc.close(descriptor)
    }

    /// Makes the set readable at `deadline` (nil: never) and when `socket` of connection
    /// number `connection` is readable (`reading`) or writable (`writing`).
    func watch(socket: Int32?, connection: Int, reading: Bool, writing: Bool, until deadline: ContinuousClock.Instant?,
               now: ContinuousClock.Instant) {
        arm(deadline, now: now)
        var events: UInt32 = 0
        if reading { events |= EPOLLIN.rawValue }
        if writing { events |= EPOLLOUT.rawValue }
        guard let socket, events != 0 else {
            if let watched {
                // Gone already when its connection closed; then this finds nothing.
                _ = epoll_ctl(descriptor, EPOLL_CTL_DEL, watched.descriptor, nil)
                self.watched = nil
            }
            return
        }
        if let watched, watched.descriptor == socket, watched.connection == connection, watched.events == events { return }
        var event = epoll_event(events: events, data: epoll_data_t(fd: socket))
        // A closed socket left the set by itself, and a new one may have its number.
        let same = watched.map { $0.descriptor == socket && $0.connection == connection } ?? false
        if let watched, !same { _ = epoll_ctl(descriptor, EPOLL_CTL_DEL, watched.descriptor, nil) }
        if epoll_ctl(descriptor, same ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, socket, &event) != 0 {
            if errno == EEXIST { _ = epoll_ctl(descriptor, EPOLL_CTL_MOD, socket, &event) }
        }
        watched = (socket, connection, events)
    }

    /// A timer that fires early only costs the relay a look at the sink, so a later deadline
    /// leaves it as it is: one syscall per expiry, not one per batch.
    private func arm(_ deadline: ContinuousClock.Instant?, now: ContinuousClock.Instant) {
        let expired = armedFor.map { $0 <= now } ?? false
        switch (deadline, armedFor) {
        case (nil, nil):
            return
        case (nil, .some):
            guard expired else { return }
        case let (.some(wanted), .some(current)):
            guard expired || wanted < current else { return }
        case (.some, nil):
            break
        }
        var setting = itimerspec()
        if let deadline {
            // Relative: ContinuousClock need not be CLOCK_MONOTONIC. Zero would disarm.
            let delay = max(deadline - now, .nanoseconds(1)).components
            setting.it_value.tv_sec = Int(delay.seconds)
            setting.it_value.tv_nsec = max(1, Int(delay.attoseconds / 1_000_000_000))
        }
        // Setting the timer also resets its expiry count, which makes it unreadable again.
        guard timerfd_settime(timer, 0, &setting, nil) == 0 else { return }
        armedFor = deadline
    }

    private static func failure(_ call: String) -> SinkError {
        SinkError(.permanent, "cannot set up the Redis sink's wakeup (\(call): \(String(cString: strerror(errno)))): raise the open-files limit (ulimit -n)")
    }
}
