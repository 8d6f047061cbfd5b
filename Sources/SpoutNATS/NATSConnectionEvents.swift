import SpoutCore
import Synchronization

/// What libnats reports about one connection from its own threads (the connection closed,
/// an error outside any call) and the event loop the connection's socket belongs to.
final class NATSConnectionEvents: Sendable {
    private struct State {
        var closedReason: String?
        var asyncError: String?
    }

    let loop: NATSEventLoop
    private let state = Mutex(State())

    init(loop: NATSEventLoop) {
        self.loop = loop
    }

    /// Called by libnats threads when the connection closed on its own (server gone).
    func connectionClosed(reason: String) {
        state.withLock { $0.closedReason = $0.closedReason ?? reason }
        loop.wakeup.signal()
    }

    /// Called by libnats threads for errors not tied to a call (e.g. a permissions violation).
    func asynchronousError(_ text: String) {
        state.withLock { $0.asyncError = text }
    }

    /// Why the connection closed, if it did, and the last asynchronous error.
    func take() -> (closedReason: String?, asyncError: String?) {
        state.withLock { ($0.closedReason, $0.asyncError) }
    }
}
