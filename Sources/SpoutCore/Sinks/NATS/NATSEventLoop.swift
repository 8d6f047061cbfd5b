import CNats
import Foundation
import Synchronization

/// What the relay waits on for the NATS sink: an epoll set holding the sink's wakeup and the
/// socket of its publishing connection. libnats runs that connection in external event-loop
/// mode, so none of its threads reads, writes or delivers PubAcks: the sink calls
/// `natsConnection_ProcessReadEvent` / `ProcessWriteEvent` itself, on the relay thread, when
/// this set says so. libnats asks for write polling from its timer thread too (PINGs), so the
/// registration is guarded, and it belongs to one connection (`owner`, its registry key): a
/// late callback of a connection already replaced cannot touch its successor's socket.
final class NATSEventLoop: Sendable {
    private struct Registration {
        var owner = 0
        var socket: Int32 = -1
        var reading = false
        var writing = false
    }

    /// Readable (for poll(2)) when the wakeup fired, PubAcks arrived, or libnats has bytes
    /// to write and the socket takes them.
    let descriptor: Int32
    private let registration = Mutex(Registration())

    init(wakeup: Wakeup) throws(NATSFailure) {
        descriptor = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard descriptor >= 0 else { throw NATSFailure(status: NATS_SYS_ERROR, text: "epoll_create1: \(String(cString: strerror(errno)))") }
        var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: wakeup.descriptor))
        guard epoll_ctl(descriptor, EPOLL_CTL_ADD, wakeup.descriptor, &event) == 0 else {
            let text = String(cString: strerror(errno))
            close(descriptor)
            throw NATSFailure(status: NATS_SYS_ERROR, text: "epoll_ctl: \(text)")
        }
    }

    deinit { close(descriptor) }

    /// Whether libnats holds bytes to write (it asked for write events and has not withdrawn).
    /// `ProcessWriteEvent` must not be called otherwise: an empty write counts as a lost connection.
    var wantsWrite: Bool { registration.withLock { $0.socket >= 0 && $0.writing } }

    func attach(socket: Int32, owner: Int) -> natsStatus {
        registration.withLock { state in
            if state.socket >= 0 { _ = epoll_ctl(descriptor, EPOLL_CTL_DEL, state.socket, nil) }
            let attached = Registration(owner: owner, socket: socket, reading: true, writing: false)
            guard update(attached, operation: EPOLL_CTL_ADD) else {
                state = Registration()
                return NATS_SYS_ERROR
            }
            state = attached
            return NATS_OK
        }
    }

    func setReading(_ on: Bool, owner: Int) -> natsStatus {
        change(owner: owner) { $0.reading = on }
    }

    func setWriting(_ on: Bool, owner: Int) -> natsStatus {
        change(owner: owner) { $0.writing = on }
    }

    func detach(owner: Int) -> natsStatus {
        registration.withLock { state in
            guard state.owner == owner else { return NATS_OK }
            if state.socket >= 0 { _ = epoll_ctl(descriptor, EPOLL_CTL_DEL, state.socket, nil) }
            state = Registration()
            return NATS_OK
        }
    }

    /// Applies `edit` to the owner's registration, keeping the old one if epoll refuses.
    private func change(owner: Int, _ edit: (inout Registration) -> Void) -> natsStatus {
        registration.withLock { state in
            guard state.owner == owner, state.socket >= 0 else { return NATS_OK }
            var changed = state
            edit(&changed)
            guard update(changed, operation: EPOLL_CTL_MOD) else { return NATS_SYS_ERROR }
            state = changed
            return NATS_OK
        }
    }

    private func update(_ state: Registration, operation: Int32) -> Bool {
        var events: UInt32 = 0
        if state.reading { events |= EPOLLIN.rawValue }
        if state.writing { events |= EPOLLOUT.rawValue }
        var event = epoll_event(events: events, data: epoll_data_t(fd: state.socket))
        return epoll_ctl(descriptor, operation, state.socket, &event) == 0
    }
}
