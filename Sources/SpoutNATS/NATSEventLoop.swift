import SpoutCore
import CNats
import Foundation
import Synchronization

/// libnats' external event loop for the NATS sink's publishing connection, on the delivery
/// engine's wakeup. libnats runs that connection in external event-loop mode, so none of its
/// threads reads, writes or delivers PubAcks: the sink calls `natsConnection_ProcessReadEvent`
/// / `ProcessWriteEvent` itself, on the relay thread, when the wakeup says so. Here libnats'
/// requests (attach, read on/off, write on/off, detach) become what the wakeup watches of the
/// socket. libnats asks for write polling from its timer thread too (PINGs), so the
/// registration is guarded, and it belongs to one connection (`owner`, its registry key): a
/// late callback of a connection already replaced cannot touch its successor's socket.
final class NATSEventLoop: Sendable {
    private struct Registration {
        var owner = 0
        var socket: Int32 = -1
        var reading = false
        var writing = false
    }

    let wakeup: DeliveryWakeup
    private let registration = Mutex(Registration())

    init(wakeup: DeliveryWakeup) {
        self.wakeup = wakeup
    }

    /// Whether libnats holds bytes to write (it asked for write events and has not withdrawn).
    /// `ProcessWriteEvent` must not be called otherwise: an empty write counts as a lost connection.
    var wantsWrite: Bool { registration.withLock { $0.socket >= 0 && $0.writing } }

    /// The watched socket (-1: none).
    var socket: Int32 { registration.withLock { $0.socket } }

    func attach(socket: Int32, owner: Int) -> natsStatus {
        registration.withLock { state in
            // A descriptor that is not open cannot be watched: libnats fails the connect.
            guard fcntl(socket, F_GETFD) >= 0 else {
                state = Registration()
                watch(state)
                return NATS_SYS_ERROR
            }
            state = Registration(owner: owner, socket: socket, reading: true, writing: false)
            watch(state)
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
            state = Registration()
            watch(state)
            return NATS_OK
        }
    }

    /// Applies `edit` to the owner's registration; another connection's request is ignored.
    private func change(owner: Int, _ edit: (inout Registration) -> Void) -> natsStatus {
        registration.withLock { state in
            guard state.owner == owner, state.socket >= 0 else { return NATS_OK }
            edit(&state)
            watch(state)
            return NATS_OK
        }
    }

    private func watch(_ state: Registration) {
        wakeup.watch(socket: state.socket >= 0 ? state.socket : nil, connection: state.owner,
                     reading: state.reading, writing: state.writing)
    }
}
