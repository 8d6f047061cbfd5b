// epoll and timerfd: Swift's Glibc module exposes neither.
import CLinux
import Foundation
import Synchronization

/// The one descriptor the relay waits on for a sink: an epoll set holding
/// - a timerfd armed for the engine's next deadline (a retry after backoff, the adapter's
///   connect or reply timeout),
/// - a pipe that broker callbacks on other threads write to when they completed something
///   (`signal()`; librdkafka writes to `signalDescriptor` itself),
/// - the adapter's socket, for the events it waits for (`watch`), and any descriptor an adapter
///   adds for good (`include`).
///
/// The relay polls descriptors for POLLIN only; the set is readable as soon as one member is
/// ready for what it is registered for, so a connecting socket's POLLOUT and the timer's expiry
/// reach the relay too. Without it the relay would poll the sink every millisecond while the
/// broker is down.
public final class DeliveryWakeup: Sendable {
    public let descriptor: Int32
    private let timer: Int32
    private let pipe: (read: Int32, write: Int32)

    private struct State {
        /// When the timer fires; nil while disarmed.
        var armedFor: ContinuousClock.Instant?
        /// The socket in the set: which connection (by the adapter's count), and its events.
        var watched: (descriptor: Int32, connection: Int, events: UInt32)?
    }

    private let state = Mutex(State())

    public init() throws(SinkError) {
        descriptor = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard descriptor >= 0 else { throw Self.failure("epoll_create1") }
        timer = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC))
        guard timer >= 0 else {
            let error = Self.failure("timerfd_create")
            Glibc.close(descriptor)
            throw error
        }
        var fds: [Int32] = [-1, -1]
        guard Glibc.pipe(&fds) == 0 else {
            let error = Self.failure("pipe")
            Glibc.close(timer)
            Glibc.close(descriptor)
            throw error
        }
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        pipe = (fds[0], fds[1])
        for member in [timer, pipe.read] {
            var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: member))
            guard epoll_ctl(descriptor, EPOLL_CTL_ADD, member, &event) == 0 else {
                let error = Self.failure("epoll_ctl")
                for fd in [pipe.read, pipe.write, timer, descriptor] { Glibc.close(fd) }
                throw error
            }
        }
    }

    deinit {
        for fd in [pipe.read, pipe.write, timer, descriptor] { Glibc.close(fd) }
    }

    // MARK: Signals from other threads

    /// Makes the set readable; safe from any thread.
    public func signal() {
        var byte: UInt8 = 1
        _ = write(pipe.write, &byte, 1)
    }

    /// The pipe's write end, for a C library that signals by writing to a descriptor
    /// (librdkafka's `rd_kafka_queue_io_event_enable`).
    public var signalDescriptor: Int32 { pipe.write }

    /// Empties the pipe; the engine calls it before each poll of the adapter, so a signal after
    /// it wakes the relay again.
    public func drain() {
        var buffer: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
        while withUnsafeMutableBytes(of: &buffer, { read(pipe.read, $0.baseAddress, $0.count) }) > 0 {}
    }

    // MARK: Descriptors

    /// Makes the set readable when `socket` of connection number `connection` is readable
    /// (`reading`) or writable (`writing`); neither (or no socket): no socket in the set.
    /// The number tells a new connection from an old one whose descriptor number it reuses.
    public func watch(socket: Int32?, connection: Int, reading: Bool, writing: Bool) {
        var events: UInt32 = 0
        if reading { events |= EPOLLIN.rawValue }
        if writing { events |= EPOLLOUT.rawValue }
        state.withLock { state in
            guard let socket, events != 0 else {
                if let watched = state.watched {
                    // Gone already when its connection closed; then this finds nothing.
                    _ = epoll_ctl(descriptor, EPOLL_CTL_DEL, watched.descriptor, nil)
                    state.watched = nil
                }
                return
            }
            if let watched = state.watched, watched.descriptor == socket, watched.connection == connection, watched.events == events {
                return
            }
            var event = epoll_event(events: events, data: epoll_data_t(fd: socket))
            // A closed socket left the set by itself, and a new one may have its number.
            let same = state.watched.map { $0.descriptor == socket && $0.connection == connection } ?? false
            if let watched = state.watched, !same { _ = epoll_ctl(descriptor, EPOLL_CTL_DEL, watched.descriptor, nil) }
            if epoll_ctl(descriptor, same ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, socket, &event) != 0, errno == EEXIST {
                _ = epoll_ctl(descriptor, EPOLL_CTL_MOD, socket, &event)
            }
            state.watched = (socket, connection, events)
        }
    }

    /// Adds a descriptor for good (readable: the set is readable), e.g. a library's own
    /// notification descriptor. The caller keeps it open while the wakeup lives.
    public func include(_ member: Int32) throws(SinkError) {
        var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: member))
        guard epoll_ctl(descriptor, EPOLL_CTL_ADD, member, &event) == 0 else { throw Self.failure("epoll_ctl") }
    }

    // MARK: Timer

    /// Makes the set readable at `deadline` (nil: never). A timer that fires early only costs
    /// the relay a look at the sink, so a later deadline leaves it as it is: one syscall per
    /// expiry, not one per batch. An expired timer is disarmed or re-armed here, or the set
    /// would stay readable.
    public func arm(_ deadline: ContinuousClock.Instant?, now: ContinuousClock.Instant) {
        state.withLock { state in
            let expired = state.armedFor.map { $0 <= now } ?? false
            switch (deadline, state.armedFor) {
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
            state.armedFor = deadline
        }
    }

    private static func failure(_ call: String) -> SinkError {
        SinkError(.permanent, "cannot set up a sink's wakeup (\(call): \(String(cString: strerror(errno)))): raise the open-files limit (ulimit -n)")
    }
}
