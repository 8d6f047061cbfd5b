import Foundation

/// Writes one event per line to a file descriptor (stdout by default) and acknowledges
/// each event once its line has been written. Lines are batched into one `write(2)` per
/// poll, not one per event.
public final class StdoutSink: Sink, PreCommitEncoding {
    public enum Format: String, Sendable, CaseIterable {
        /// One JSON object per line: id, topic, key, type, payload, headers, committed_at, lsn
        /// (and `source` for snapshot and backfill events).
        case json
        /// Human-readable, colored when `color` is set (for `spout tail` on a terminal).
        case pretty
    }

    private let descriptor: Int32
    /// Where dead-letter records go (`--on-poison dead-letter`): one JSON line each, on stderr.
    private let deadLetterDescriptor: Int32
    private let format: Format
    private let color: Bool
    /// `--envelope cloudevents`: json lines are structured CloudEvents instead.
    private let cloudEvents: CloudEventEnvelope?
    private var buffer: [UInt8] = []
    /// Bytes of `buffer` already written.
    private var written = 0
    /// Each ticket with the buffer offset its line ends at; acknowledged once written past it.
    private var pending: [(ticket: UInt64, end: Int)] = []
    private var pendingHead = 0

    public init(descriptor: Int32 = STDOUT_FILENO, format: Format = .json, color: Bool = false,
                deadLetterDescriptor: Int32 = STDERR_FILENO, cloudEvents: CloudEventEnvelope? = nil) {
        self.descriptor = descriptor
        self.deadLetterDescriptor = deadLetterDescriptor
        self.format = format
        self.color = color
        self.cloudEvents = cloudEvents
        buffer.reserveCapacity(1 << 16)
        // A pipe or socket whose reader stalls must not block the relay (status updates keep
        // the walsender from timing out): write what fits, keep the rest. Terminals and files
        // keep blocking writes.
        var status = stat()
        if fstat(descriptor, &status) == 0 {
            let type = status.st_mode & S_IFMT
            if type == S_IFIFO || type == S_IFSOCK {
                _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            }
        }
    }

    public var wakeupDescriptor: Int32? { nil }

    public var metricsName: String { "stdout" }

    public func send(_ event: OutboxEvent, ticket: UInt64) throws(SinkError) {
        if event.source == .deadLetter { return try sendDeadLetter(event.payload[...], ticket: ticket) }
        switch format {
        case .json:
            if let cloudEvents { cloudEvents.appendStructured(event, to: &buffer) } else { Self.appendJSONLine(event, to: &buffer) }
        case .pretty: appendPretty(event)
        }
        try lineAppended(ticket: ticket)
    }

    public func encode(_ event: OutboxEvent, into record: inout [UInt8]) {
        if event.source == .deadLetter, format == .json {
            // Marked by a byte no JSON line starts with (not UTF-8): the record follows.
            record.append(Self.deadLetterMark)
            record.append(contentsOf: event.payload)
            return
        }
        switch format {
        // The line up to its LSN, which comes last: sending it later is a copy.
        case .json:
            if let cloudEvents { cloudEvents.appendStructuredHead(event, to: &record) } else { Self.appendJSONLineHead(event, to: &record) }
        case .pretty: SpooledEvent.encode(event, into: &record)
        }
    }

    public func send(encoded record: UnsafeRawBufferPointer, commitLSN: LSN, ticket: UInt64) throws(SinkError) {
        switch format {
        case .json:
            if record.first == Self.deadLetterMark {
                return try sendDeadLetter(UnsafeRawBufferPointer(rebasing: record.dropFirst()), ticket: ticket)
            }
            buffer.append(contentsOf: record)
            Self.appendJSONLineTail(lsn: commitLSN, to: &buffer)
            try lineAppended(ticket: ticket)
        case .pretty:
            guard let event = SpooledEvent.decode(record, lsn: commitLSN) else {
                throw SinkError(.permanent, "the event spool is damaged (a record of \(record.count) bytes does not decode)")
            }
            try send(event, ticket: ticket)
        }
    }

    private static let deadLetterMark: UInt8 = 0xFF

    /// A dead-letter record: written to stderr at once (a blocking write, on a rare path) and
    /// acknowledged with the lines before it.
    private func sendDeadLetter(_ record: some Collection<UInt8>, ticket: UInt64) throws(SinkError) {
        var line = Array(record)
        line.append(UInt8(ascii: "\n"))
        var offset = 0
        while offset < line.count {
            let result = line.withUnsafeBytes { Glibc.write(deadLetterDescriptor, $0.baseAddress! + offset, $0.count - offset) }
            if result < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    var descriptor = pollfd(fd: deadLetterDescriptor, events: Int16(POLLOUT), revents: 0)
                    _ = Glibc.poll(&descriptor, 1, 100)
                    continue
                }
                throw SinkError(.permanent, "cannot write a dead-letter record to stderr: \(String(cString: strerror(errno)))")
            }
            offset += result
        }
        try lineAppended(ticket: ticket)
    }

    /// The line for `ticket` ends at the buffer's end; write once 64 KiB are waiting.
    private func lineAppended(ticket: UInt64) throws(SinkError) {
        pending.append((ticket, buffer.count))
        if buffer.count - written >= 1 << 16 { try flush() }
    }

    public func poll(_ report: (SinkCompletion) -> Void) throws(SinkError) {
        try flush()
        while pendingHead < pending.count, pending[pendingHead].end <= written {
            report(.delivered(ticket: pending[pendingHead].ticket))
            pendingHead += 1
        }
        if written == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 1 << 22)
            written = 0
            pending.removeAll(keepingCapacity: true)
            pendingHead = 0
        }
    }

    public func close() {
        // Bounded: a reader that never reads again does not keep spout from exiting.
        let deadline = ContinuousClock.now + .seconds(5)
        while written < buffer.count, ContinuousClock.now < deadline {
            guard (try? flush()) != nil else { return }
            if written < buffer.count {
                var descriptor = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                _ = Glibc.poll(&descriptor, 1, 100)
            }
        }
    }

    /// Writes as much of the buffer as the descriptor takes now.
    private func flush() throws(SinkError) {
        while written < buffer.count {
            let result = buffer.withUnsafeBytes { write(descriptor, $0.baseAddress! + written, $0.count - written) }
            if result < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                throw SinkError(.permanent, "cannot write to stdout: \(String(cString: strerror(errno)))")
            }
            written += result
        }
    }

    /// The JSON line of DESIGN.md §3. json/jsonb payloads are embedded as JSON (a `json`
    /// column's own line breaks removed), text as a string, bytea as base64 with
    /// `"payload_encoding":"base64"`.
    public static func appendJSONLine(_ event: OutboxEvent, to output: inout [UInt8]) {
        appendJSONLineHead(event, to: &output)
        appendJSONLineTail(lsn: event.lsn, to: &output)
    }

    /// The JSON line up to the value of its last field, the LSN.
    static func appendJSONLineHead(_ event: OutboxEvent, to output: inout [UInt8]) {
        func key(_ name: StaticString) {
            output.append(contentsOf: UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        }
        key("{\"id\":")
        JSONWriter.appendString(event.id, to: &output)
        key(",\"topic\":")
        JSONWriter.appendString(event.topic, to: &output)
        key(",\"key\":")
        if let value = event.key { JSONWriter.appendString(value, to: &output) } else { key("null") }
        key(",\"type\":")
        if let value = event.type { JSONWriter.appendString(value, to: &output) } else { key("null") }
        key(",\"payload\":")
        switch event.payloadFormat {
        case .json:
            if event.payload.contains(where: { $0 == 0x0A || $0 == 0x0D }) {
                JSONScanner.compact(event.payload[...], into: &output)
            } else {
                output.append(contentsOf: event.payload)
            }
        case .text:
            JSONWriter.appendString(utf8: event.payload, to: &output)
        case .binary:
            JSONWriter.appendBase64(event.payload, to: &output)
            key(",\"payload_encoding\":\"base64\"")
        }
        key(",\"headers\":{")
        for (index, header) in event.headers.enumerated() {
            if index > 0 { output.append(UInt8(ascii: ",")) }
            JSONWriter.appendString(header.name, to: &output)
            output.append(UInt8(ascii: ":"))
            JSONWriter.appendString(header.value, to: &output)
        }
        key("}")
        // Only re-published rows are marked: streamed lines stay as they always were.
        if let source = event.source.marker {
            key(",\"source\":")
            JSONWriter.appendString(source, to: &output)
        }
        key(",\"committed_at\":\"")
        event.committedAt.appendISO8601(to: &output)
        key("\",\"lsn\":\"")
    }

    static func appendJSONLineTail(lsn: LSN, to output: inout [UInt8]) {
        lsn.appendText(to: &output)
        output.append(UInt8(ascii: "\""))
        output.append(UInt8(ascii: "}"))
        output.append(UInt8(ascii: "\n"))
    }

    private func appendPretty(_ event: OutboxEvent) {
        // Row content is escaped: on a terminal its control characters would be commands.
        func styled(_ text: String, _ code: String) -> String {
            let safe = Log.escaped(text)
            return color ? "\u{1B}[\(code)m\(safe)\u{1B}[0m" : safe
        }
        var line = styled(event.committedAt.iso8601, "2") + " " + styled(event.lsn.description, "2") + " "
            + styled(event.topic, "1;36")
        if let key = event.key { line += " key=" + styled(key, "33") }
        if let type = event.type { line += " type=" + styled(type, "35") }
        line += " id=" + Log.escaped(event.id)
        if let source = event.source.marker { line += " source=" + source }
        for header in event.headers { line += " " + styled(header.name, "2") + "=" + Log.escaped(header.value) }
        line += "\n  "
        buffer.append(contentsOf: line.utf8)
        switch event.payloadFormat {
        case .json:
            // JSON strings may hold C1 controls and bidirectional overrides unescaped.
            var compacted: [UInt8] = []
            JSONScanner.compact(event.payload[...], into: &compacted)
            buffer.append(contentsOf: Log.escaped(String(decoding: compacted, as: UTF8.self)).utf8)
        case .text: buffer.append(contentsOf: Log.escaped(String(decoding: event.payload, as: UTF8.self)).utf8)
        case .binary: JSONWriter.appendBase64(event.payload, to: &buffer)
        }
        buffer.append(UInt8(ascii: "\n"))
    }
}
