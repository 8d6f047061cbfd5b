import CNats
import Foundation
import Synchronization

/// Where one connection's publish acknowledgements land. libnats calls the ack handler on
/// its own threads; the handler records the outcome here and signals the wakeup, and the
/// sink takes the outcomes on the relay thread.
final class NATSAckInbox: Sendable {
    struct Completion: Sendable {
        var ticket: UInt64
        /// nil: the stream stored the message (a PubAck, possibly flagged duplicate).
        var failure: NATSFailure?
    }

    private struct State {
        var completions: [Completion] = []
        var closedReason: String?
        var asyncError: String?
    }

    private let state: Mutex<State>
    private let wakeup: Wakeup

    init(wakeup: Wakeup, capacity: Int) {
        var initial = State()
        initial.completions.reserveCapacity(capacity)
        state = Mutex(initial)
        self.wakeup = wakeup
    }

    /// Called by libnats threads with a PubAck (or its failure) for `ticket`.
    func complete(ticket: UInt64, failure: NATSFailure?) {
        let signal = state.withLock { state -> Bool in
            state.completions.append(Completion(ticket: ticket, failure: failure))
            // One wakeup per batch: the sink takes all completions at once.
            return state.completions.count == 1
        }
        if signal { wakeup.signal() }
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

    /// Moves the completions into `spare` (which must be empty; the buffers swap, so neither
    /// side allocates) and returns why the connection closed, if it did.
    func take(into spare: inout [Completion]) -> (closedReason: String?, asyncError: String?) {
        state.withLock { state in
            swap(&state.completions, &spare)
            return (state.closedReason, state.asyncError)
        }
    }
}

/// Lets libnats callbacks find their connection's inbox by a number rather than by a pointer
/// to a Swift object: libnats does not join its subscription threads when a connection is
/// destroyed, so a callback may still run after `NATSConnection.close()`. It then finds no
/// entry and only frees the message.
enum NATSCallbackRegistry {
    private struct Entries {
        var next = 1
        var inboxes: [Int: NATSAckInbox] = [:]
    }

    private static let entries = Mutex(Entries())

    static func register(_ inbox: NATSAckInbox) -> UnsafeMutableRawPointer? {
        let key = entries.withLock { entries -> Int in
            let key = entries.next
            entries.next += 1
            entries.inboxes[key] = inbox
            return key
        }
        return UnsafeMutableRawPointer(bitPattern: key)
    }

    static func remove(_ closure: UnsafeMutableRawPointer?) {
        let key = Int(bitPattern: closure)
        _ = entries.withLock { $0.inboxes.removeValue(forKey: key) }
    }

    static func inbox(_ closure: UnsafeMutableRawPointer?) -> NATSAckInbox? {
        let key = Int(bitPattern: closure)
        return entries.withLock { $0.inboxes[key] }
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

    private static func find(_ needle: [UInt8], in bytes: [UInt8], from start: Int) -> Int? {
        guard bytes.count >= needle.count, start <= bytes.count - needle.count else { return nil }
        for index in start...(bytes.count - needle.count) where bytes[index] == needle[0] {
            if bytes[index..<index + needle.count].elementsEqual(needle) { return index }
        }
        return nil
    }
}

/// The C callbacks libnats calls on its threads; their closure argument is a registry key.
enum NATSCallbacks {
    /// A message on the PubAck inbox: `<prefix>.<ticket>` carrying the stream's PubAck, or a
    /// "no responders" status when no stream captures the subject.
    static let pubAck: natsMsgHandler = { _, _, message, closure in
        defer { natsMsg_Destroy(message) }
        guard let inbox = NATSCallbackRegistry.inbox(closure), let subject = natsMsg_GetSubject(message),
              let ticket = PubAck.ticket(subject: subject) else { return }
        if natsMsg_IsNoResponders(message) {
            inbox.complete(ticket: ticket, failure: NATSFailure(status: NATS_NO_RESPONDERS))
            return
        }
        let length = Int(natsMsg_GetDataLength(message))
        let data = natsMsg_GetData(message).map { UnsafeRawBufferPointer(start: $0, count: length) } ?? UnsafeRawBufferPointer(start: nil, count: 0)
        inbox.complete(ticket: ticket, failure: PubAck.failure(data))
    }

    static let closed: natsConnectionHandler = { connection, closure in
        guard let inbox = NATSCallbackRegistry.inbox(closure) else { return }
        var text: UnsafePointer<CChar>?
        let status = natsConnection_GetLastError(connection, &text)
        let detail = status == NATS_OK ? nil : text.map { String(cString: $0) } ?? String(cString: natsStatus_GetText(status))
        inbox.connectionClosed(reason: "the connection was lost" + (detail.map { " (\($0))" } ?? ""))
    }

    static let error: natsErrHandler = { connection, _, status, closure in
        guard let inbox = NATSCallbackRegistry.inbox(closure) else { return }
        var text: UnsafePointer<CChar>?
        _ = natsConnection_GetLastError(connection, &text)
        inbox.asynchronousError(text.map { String(cString: $0) } ?? String(cString: natsStatus_GetText(status)))
    }
}
