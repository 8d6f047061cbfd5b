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

/// What libnats reports about one connection from its own threads (the connection closed,
/// an error outside any call) and the event loop the connection's socket belongs to.
final class NATSConnectionEvents: Sendable {
    private struct State {
        var closedReason: String?
        var asyncError: String?
    }

    let loop: NATSEventLoop
    private let state = Mutex(State())
    private let wakeup: Wakeup

    init(loop: NATSEventLoop, wakeup: Wakeup) {
        self.loop = loop
        self.wakeup = wakeup
    }

    /// Called by libnats threads when the connection closed on its own (server gone).
    func connectionClosed(reason: String) {
        state.withLock { $0.closedReason = $0.closedReason ?? reason }
        wakeup.signal()
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

/// Lets libnats callbacks find their connection by a number rather than by a pointer to a
/// Swift object: a callback may still run on a libnats thread after
/// `NATSConnection.close()`. It then finds no entry and does nothing.
enum NATSCallbackRegistry {
    private struct Entries {
        var next = 1
        var connections: [Int: NATSConnectionEvents] = [:]
    }

    private static let entries = Mutex(Entries())

    static func register(_ events: NATSConnectionEvents) -> UnsafeMutableRawPointer? {
        let key = entries.withLock { entries -> Int in
            let key = entries.next
            entries.next += 1
            entries.connections[key] = events
            return key
        }
        return UnsafeMutableRawPointer(bitPattern: key)
    }

    static func remove(_ closure: UnsafeMutableRawPointer?) {
        let key = Int(bitPattern: closure)
        _ = entries.withLock { $0.connections.removeValue(forKey: key) }
    }

    static func events(_ closure: UnsafeMutableRawPointer?) -> NATSConnectionEvents? {
        let key = Int(bitPattern: closure)
        return entries.withLock { $0.connections[key] }
    }
}

/// The PubAck inbox's wire format.
enum PubAck {
    /// The ticket in a PubAck subject's last token; nil when it is not a number.
    static func ticket(subject: UnsafePointer<CChar>) -> UInt64? {
        let length = strlen(subject)
        let bytes = UnsafeRawBufferPointer(start: subject, count: length)
        let start = (bytes.lastIndex(of: UInt8(ascii: ".")) ?? -1) + 1
        guard start < length else { return nil }
        var value: UInt64 = 0
        for byte in bytes[start...] {
            let digit = byte &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(UInt64(digit))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
        }
        return value
    }

    /// nil for a PubAck that stored the message (`{"stream":…,"seq":…}`, possibly
    /// `"duplicate":true`); the JetStream error otherwise
    /// (`{"error":{"code":…,"err_code":…,"description":"…"}}`).
    static func failure(_ data: UnsafeRawBufferPointer) -> NATSFailure? {
        // The common case, a stored message, without copying the bytes: no "error" at all.
        if !contains(data, #""error""#), contains(data, #""seq""#) { return nil }
        let bytes = Array(data)
        // The key with an object value: a stream or domain named "error" is not an error.
        guard let error = find(Array(#""error":{"#.utf8), in: bytes, from: 0) ?? find(Array(#""error": {"#.utf8), in: bytes, from: 0) else {
            if find(Array(#""seq""#.utf8), in: bytes, from: 0) != nil { return nil }
            return NATSFailure(status: NATS_ERR, text: "unexpected PubAck: \(String(decoding: bytes.prefix(200), as: UTF8.self))")
        }
        var code = 0
        if let start = find(Array(#""err_code""#.utf8), in: bytes, from: error) {
            var cursor = start + 10
            while cursor < bytes.count, bytes[cursor] == UInt8(ascii: ":") || bytes[cursor] == UInt8(ascii: " ") { cursor += 1 }
            while cursor < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[cursor]), code < 1_000_000 {
                code = code * 10 + Int(bytes[cursor] - UInt8(ascii: "0"))
                cursor += 1
            }
        }
        var text = "JetStream error"
        if let start = find(Array(#""description""#.utf8), in: bytes, from: error),
           let open = bytes[(start + 13)...].firstIndex(of: UInt8(ascii: "\"")) {
            var close = open + 1
            while close < bytes.count, bytes[close] != UInt8(ascii: "\"") || bytes[close - 1] == UInt8(ascii: "\\") { close += 1 }
            text = String(decoding: bytes[(open + 1)..<min(close, bytes.count)], as: UTF8.self)
        }
        return NATSFailure(status: NATS_ERR, errorCode: code, text: text)
    }

    private static func contains(_ data: UnsafeRawBufferPointer, _ needle: StaticString) -> Bool {
        let pattern = UnsafeBufferPointer(start: needle.utf8Start, count: needle.utf8CodeUnitCount)
        guard let first = pattern.first, let base = data.baseAddress, data.count >= pattern.count else { return false }
        var index = 0
        while index <= data.count - pattern.count {
            if data[index] == first, memcmp(base + index, needle.utf8Start, pattern.count) == 0 { return true }
            index += 1
        }
        return false
    }

    private static func find(_ needle: [UInt8], in bytes: [UInt8], from start: Int) -> Int? {
        guard bytes.count >= needle.count, start <= bytes.count - needle.count else { return nil }
        for index in start...(bytes.count - needle.count) where bytes[index] == needle[0] {
            if bytes[index..<index + needle.count].elementsEqual(needle) { return index }
        }
        return nil
    }
}

/// The C callbacks libnats calls; their closure (and event-loop) argument is a registry key.
enum NATSCallbacks {
    static let closed: natsConnectionHandler = { connection, closure in
        guard let events = NATSCallbackRegistry.events(closure), let connection else { return }
        events.connectionClosed(reason: NATSConnection.lostText(connection))
    }

    static let error: natsErrHandler = { connection, _, status, closure in
        guard let events = NATSCallbackRegistry.events(closure) else { return }
        var text: UnsafePointer<CChar>?
        _ = natsConnection_GetLastError(connection, &text)
        events.asynchronousError(text.map { String(cString: $0) } ?? String(cString: natsStatus_GetText(status)))
    }

    // The external event loop: `loop` is the registry key, kept as the user data.
    static let attach: natsEvLoop_Attach = { userData, loop, _, socket in
        userData?.pointee = loop
        return NATSCallbackRegistry.events(loop)?.loop.attach(socket: Int32(socket), owner: Int(bitPattern: loop)) ?? NATS_OK
    }

    static let read: natsEvLoop_ReadAddRemove = { userData, add in
        NATSCallbackRegistry.events(userData)?.loop.setReading(add, owner: Int(bitPattern: userData)) ?? NATS_OK
    }

    static let write: natsEvLoop_WriteAddRemove = { userData, add in
        NATSCallbackRegistry.events(userData)?.loop.setWriting(add, owner: Int(bitPattern: userData)) ?? NATS_OK
    }

    static let detach: natsEvLoop_Detach = { userData in
        NATSCallbackRegistry.events(userData)?.loop.detach(owner: Int(bitPattern: userData)) ?? NATS_OK
    }
}
