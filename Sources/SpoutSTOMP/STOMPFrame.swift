import SpoutCore

/// A frame from the server, other than a RECEIPT (which `STOMPFrameDecoder` hands out without
/// allocating, one per event): CONNECTED, ERROR, or anything else the sink ignores.
public struct STOMPFrame: Equatable, Sendable {
    public typealias Header = OutboxEvent.Header

    public var command: String
    /// In frame order, unescaped (except in CONNECTED, which STOMP 1.2 does not escape).
    public var headers: [Header]
    public var body: [UInt8]

    public init(command: String, headers: [Header], body: [UInt8]) {
        self.command = command
        self.headers = headers
        self.body = body
    }

    /// STOMP 1.2: when a header is repeated, the first one counts.
    public func header(_ name: String) -> String? { headers.first { $0.name == name }?.value }
}

/// What the decoder read: a RECEIPT's id (nil when it is not a number, which spout never
/// sends), or another frame.
public enum STOMPInbound: Equatable, Sendable {
    case receipt(UInt64?)
    case frame(STOMPFrame)
}

/// The server broke the protocol: the connection cannot be used any more.
public struct STOMPProtocolError: Error, Equatable, Sendable {
    public var reason: String
}

/// Decodes the frames a STOMP 1.2 server sends, from bytes that arrive in pieces of any size:
/// `append` what the socket gave, then take frames with `next` until it returns nil. EOLs
/// between frames (the server's heart-beats) are skipped; a body is `content-length` bytes
/// when that header is there (so it may hold NULs), else it ends at the first NUL. Pure: no IO.
public struct STOMPFrameDecoder: Sendable {
    /// A frame's command and headers larger than this are not STOMP from a sane server.
    public static let maxHeaderBytes = 64 * 1024
    public static let maxBodyBytes = 16 << 20

    private var buffer: [UInt8] = []
    /// The first byte not consumed yet.
    private var head = 0

    public init() {
        buffer.reserveCapacity(64 * 1024)
    }

    /// Bytes received and not yet taken as frames.
    public var bufferedCount: Int { buffer.count - head }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        buffer.append(contentsOf: bytes)
    }

    public mutating func append(_ bytes: [UInt8]) {
        buffer.append(contentsOf: bytes)
    }

    public mutating func reset() {
        buffer.removeAll(keepingCapacity: true)
        head = 0
    }

    /// The next complete frame; nil when more bytes are needed.
    public mutating func next() throws(STOMPProtocolError) -> STOMPInbound? {
        let result = try decode()
        if head == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 64 * 1024, head * 2 >= buffer.count {
            buffer.removeSubrange(0..<head)
            head = 0
        }
        return result
    }

    private static let lf = UInt8(ascii: "\n"), cr = UInt8(ascii: "\r"), colon = UInt8(ascii: ":"), nul: UInt8 = 0

    private mutating func decode() throws(STOMPProtocolError) -> STOMPInbound? {
        let count = buffer.count
        // Heart-beats: EOL is LF or CR LF.
        while head < count {
            if buffer[head] == Self.lf {
                head += 1
            } else if buffer[head] == Self.cr {
                guard head + 1 < count else { return nil }
                guard buffer[head + 1] == Self.lf else { throw STOMPProtocolError(reason: "a CR not followed by LF between frames") }
                head += 2
            } else {
                break
            }
        }
        guard head < count else { return nil }

        // The command line, then header lines up to an empty line; nothing is copied yet.
        var lineStart = head
        var commandEnd = -1
        var contentLength: Int?
        var receiptID: UInt64?? = nil
        var isReceipt = false
        var bodyStart = -1
        var index = head
        while index < count {
            guard buffer[index] == Self.lf else { index += 1; continue }
            let lineEnd = index > lineStart && buffer[index - 1] == Self.cr ? index - 1 : index
            if commandEnd < 0 {
                commandEnd = lineEnd
                isReceipt = matches(lineStart, lineEnd, "RECEIPT")
            } else if lineEnd == lineStart {
                bodyStart = index + 1
                break
            } else if contentLength == nil, matchesPrefix(lineStart, lineEnd, "content-length:") {
                contentLength = try decimal(lineStart + 15, lineEnd, "content-length")
            } else if isReceipt, receiptID == nil, matchesPrefix(lineStart, lineEnd, "receipt-id:") {
                receiptID = .some((try? decimal(lineStart + 11, lineEnd, "receipt-id")).flatMap { UInt64(exactly: $0) })
            }
            index += 1
            lineStart = index
        }
        guard bodyStart >= 0 else {
            if count - head > Self.maxHeaderBytes { throw STOMPProtocolError(reason: "a frame's headers exceed \(Self.maxHeaderBytes) bytes") }
            return nil
        }
        guard commandEnd > head else { throw STOMPProtocolError(reason: "a frame without a command") }

        let bodyEnd: Int
        if let contentLength {
            guard contentLength <= Self.maxBodyBytes else { throw STOMPProtocolError(reason: "a frame body of \(contentLength) bytes") }
            guard count - bodyStart > contentLength else { return nil }
            bodyEnd = bodyStart + contentLength
            guard buffer[bodyEnd] == Self.nul else { throw STOMPProtocolError(reason: "a frame body longer than its content-length") }
        } else {
            guard let nul = buffer[bodyStart...].firstIndex(of: Self.nul) else {
                if count - bodyStart > Self.maxBodyBytes { throw STOMPProtocolError(reason: "a frame body without its ending NUL") }
                return nil
            }
            bodyEnd = nul
        }
        defer { head = bodyEnd + 1 }
        if isReceipt { return .receipt(receiptID ?? nil) }

        let command = String(decoding: buffer[head..<commandEnd], as: UTF8.self)
        // STOMP 1.2: CONNECTED (and CONNECT) headers are not escaped.
        let escaped = command != "CONNECTED"
        var headers: [STOMPFrame.Header] = []
        var start = commandEnd
        while buffer[start] != Self.lf { start += 1 }
        start += 1
        while start < bodyStart - 1 {
            var end = start
            while buffer[end] != Self.lf { end += 1 }
            let lineEnd = end > start && buffer[end - 1] == Self.cr ? end - 1 : end
            if lineEnd > start {
                let line = buffer[start..<lineEnd]
                // A header line without a colon is a malformed header; keep it whole as the name.
                let colon = line.firstIndex(of: Self.colon) ?? lineEnd
                let name = Self.text(line[line.startIndex..<colon], unescaping: escaped)
                let value = colon < lineEnd ? Self.text(line[(colon + 1)..<lineEnd], unescaping: escaped) : ""
                headers.append(STOMPFrame.Header(name: name, value: value))
            }
            start = end + 1
        }
        return .frame(STOMPFrame(command: command, headers: headers, body: Array(buffer[bodyStart..<bodyEnd])))
    }

    private func matches(_ start: Int, _ end: Int, _ text: StaticString) -> Bool {
        end - start == text.utf8CodeUnitCount && matchesPrefix(start, end, text)
    }

    private func matchesPrefix(_ start: Int, _ end: Int, _ text: StaticString) -> Bool {
        let length = text.utf8CodeUnitCount
        guard end - start >= length else { return false }
        let pointer = text.utf8Start
        for offset in 0..<length where buffer[start + offset] != pointer[offset] { return false }
        return true
    }

    private func decimal(_ start: Int, _ end: Int, _ name: String) throws(STOMPProtocolError) -> Int {
        guard start < end, end - start <= 18 else { throw STOMPProtocolError(reason: "\(name) is not a number") }
        var value = 0
        for index in start..<end {
            let digit = buffer[index] &- UInt8(ascii: "0")
            guard digit < 10 else { throw STOMPProtocolError(reason: "\(name) is not a number") }
            value = value * 10 + Int(digit)
        }
        return value
    }

    /// STOMP 1.2 escapes: `\\` `\n` `\r` `\c`. An undefined escape is kept as it came (the
    /// spec calls it fatal; the sink only reads servers' error texts and would rather show them).
    private static func text(_ bytes: ArraySlice<UInt8>, unescaping: Bool) -> String {
        guard unescaping, bytes.contains(UInt8(ascii: "\\")) else { return String(decoding: bytes, as: UTF8.self) }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\\"), index + 1 < bytes.endIndex {
                switch bytes[index + 1] {
                case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
                case UInt8(ascii: "n"): out.append(lf)
                case UInt8(ascii: "r"): out.append(cr)
                case UInt8(ascii: "c"): out.append(colon)
                default: out.append(byte); out.append(bytes[index + 1])
                }
                index += 2
            } else {
                out.append(byte)
                index += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Writes the frames spout sends into a reusable byte buffer: CONNECT, SEND, and the EOL
/// heart-beat. Header names and values of SEND are escaped per STOMP 1.2 (`\\`, `\n`, `\r`,
/// `\c` for a colon); CONNECT's are not (the spec says so), so its values must hold no EOL.
public enum STOMPFrameEncoder {
    /// Headers spout sets on every SEND: an event header by one of these names (or starting
    /// with `spout-`) is left out, so a row cannot steer the frame. The server reads only the
    /// first of repeated headers anyway; `transaction` would name a transaction never begun.
    public static let reservedHeaders: Set<String> = ["destination", "receipt", "content-length", "content-type", "persistent", "transaction"]

    public static let eventIDHeader = "spout-event-id"
    public static let keyHeader = "spout-key"
    public static let typeHeader = "spout-event-type"
    public static let sourceHeader = "spout-source"

    public static func isReserved(_ name: String) -> Bool {
        name.utf8.starts(with: "spout-".utf8) || reservedHeaders.contains(name)
    }

    /// CONNECT with accept-version 1.2. `heartBeat`: what spout can send and wants to receive, in ms.
    public static func appendConnect(host: String, login: String?, passcode: String?, heartBeat: (send: Int, receive: Int), to bytes: inout [UInt8]) {
        bytes.append(contentsOf: "CONNECT\naccept-version:1.2\nhost:".utf8)
        bytes.append(contentsOf: host.utf8)
        if let login {
            bytes.append(contentsOf: "\nlogin:".utf8)
            bytes.append(contentsOf: login.utf8)
        }
        if let passcode {
            bytes.append(contentsOf: "\npasscode:".utf8)
            bytes.append(contentsOf: passcode.utf8)
        }
        bytes.append(contentsOf: "\nheart-beat:\(heartBeat.send),\(heartBeat.receive)\n\n\u{0}".utf8)
    }

    /// One SEND for `event` with `receipt` = its ticket. `destination` writes the (escaped)
    /// destination and returns false when the template cannot be rendered for this event;
    /// then nothing is appended. Returns the first event header left out as reserved, if any.
    ///
    /// With `cloudEvents` (`--envelope cloudevents`): binary mode, the attributes as `ce-`
    /// headers (as the CloudEvents RabbitMQ binding has them; there is no STOMP binding) in
    /// place of `spout-key`, `spout-event-type`, `spout-source` and the row's headers, and
    /// `content-type` = `datacontenttype`. Dead letters are never enveloped.
    public static func appendSend(_ event: OutboxEvent, receipt: UInt64, to bytes: inout [UInt8], cloudEvents: CloudEventEnvelope? = nil,
                                  destination: (OutboxEvent, inout [UInt8]) -> Bool) -> (rendered: Bool, droppedHeader: String?) {
        let start = bytes.count
        bytes.append(contentsOf: "SEND\ndestination:".utf8)
        guard destination(event, &bytes) else {
            bytes.removeSubrange(start...)
            return (false, nil)
        }
        bytes.append(contentsOf: "\nreceipt:".utf8)
        JSONWriter.appendDecimal(receipt, to: &bytes)
        bytes.append(contentsOf: "\npersistent:true\ncontent-type:".utf8)
        let envelope = event.source == .deadLetter ? nil : cloudEvents
        if envelope != nil {
            appendEscaped(CloudEventEnvelope.contentType(of: event), to: &bytes)
        } else {
            switch event.payloadFormat {
            case .json: bytes.append(contentsOf: "application/json".utf8)
            case .text: bytes.append(contentsOf: "text/plain;charset=utf-8".utf8)
            case .binary: bytes.append(contentsOf: "application/octet-stream".utf8)
            }
        }
        bytes.append(contentsOf: "\ncontent-length:".utf8)
        JSONWriter.appendDecimal(UInt64(event.payload.count), to: &bytes)
        bytes.append(contentsOf: "\nspout-event-id:".utf8)
        appendEscaped(event.id, to: &bytes)
        if let envelope {
            envelope.forEachAttribute(of: event) { name, value in
                bytes.append(contentsOf: "\nce-".utf8)
                appendEscaped(name, to: &bytes)
                bytes.append(UInt8(ascii: ":"))
                appendEscaped(value, to: &bytes)
            }
            bytes.append(contentsOf: "\n\n".utf8)
            bytes.append(contentsOf: event.payload)
            bytes.append(0)
            return (true, nil)
        }
        if let key = event.key {
            bytes.append(contentsOf: "\nspout-key:".utf8)
            appendEscaped(key, to: &bytes)
        }
        if let type = event.type {
            bytes.append(contentsOf: "\nspout-event-type:".utf8)
            appendEscaped(type, to: &bytes)
        }
        if let source = event.source.marker {
            bytes.append(contentsOf: "\nspout-source:".utf8)
            bytes.append(contentsOf: source.utf8)
        }
        var dropped: String?
        for header in event.headers {
            if isReserved(header.name) {
                if dropped == nil { dropped = header.name }
                continue
            }
            bytes.append(Self.lf)
            appendEscaped(header.name, to: &bytes)
            bytes.append(UInt8(ascii: ":"))
            appendEscaped(header.value, to: &bytes)
        }
        bytes.append(contentsOf: "\n\n".utf8)
        bytes.append(contentsOf: event.payload)
        bytes.append(0)
        return (true, dropped)
    }

    private static let lf = UInt8(ascii: "\n")

    /// STOMP 1.2 header escaping. A NUL (which PostgreSQL text and jsonb cannot hold anyway)
    /// becomes a space: brokers end frames at NULs.
    public static func appendEscaped(_ text: String, to bytes: inout [UInt8]) {
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\\"): bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "\\"))
            case UInt8(ascii: "\n"): bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "n"))
            case UInt8(ascii: "\r"): bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "r"))
            case UInt8(ascii: ":"): bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "c"))
            case 0: bytes.append(UInt8(ascii: " "))
            default: bytes.append(byte)
            }
        }
    }

    /// A heart-beat: one EOL.
    public static func appendHeartBeat(to bytes: inout [UInt8]) { bytes.append(lf) }
}
