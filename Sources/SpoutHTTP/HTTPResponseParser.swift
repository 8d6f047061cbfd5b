import Foundation

/// An HTTP/1.1 response as the sink needs it: the status, the headers it acts on, and the
/// start of the body for error messages.
struct HTTPResponse: Equatable, Sendable {
    var status: Int
    var reason: String
    /// Whether the connection stays open for the next request (`Connection: close`, HTTP/1.0
    /// without keep-alive and a body that ends with the connection say no).
    var keepAlive: Bool
    /// The `Retry-After` header as sent (seconds or an HTTP-date), if any.
    var retryAfter: String?
    /// The first `HTTPResponseParser.bodyExcerptLimit` bytes of the body.
    var bodyExcerpt: [UInt8]

    /// The status line and the body's start as one log line, escaped and cut short.
    var summary: String {
        var text = "\(status)" + (reason.isEmpty ? "" : " \(reason)")
        let body = String(decoding: bodyExcerpt.prefix(200), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if !body.isEmpty { text += ": " + body }
        return text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? " " : String($0) }.joined()
    }
}

struct HTTPProtocolError: Error, Equatable {
    var reason: String
}

/// Decodes HTTP/1.1 responses from the bytes of one connection as they arrive, in any pieces:
/// bytes in, responses out, no I/O. Bodies by `Content-Length`, `Transfer-Encoding: chunked`
/// (trailers skipped) or, without either, up to the connection's end (`connectionClosed`).
/// 1xx interim responses are skipped; 204 and 304 have no body. Only the body's first bytes
/// are kept, so a large error page costs no memory.
struct HTTPResponseParser {
    static let headLimit = 64 * 1024
    static let bodyExcerptLimit = 512

    private enum State: Equatable {
        case head
        case body(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkEnd
        case trailers
        case untilClose
    }

    private var buffer: [UInt8] = []
    private var offset = 0
    private var state = State.head
    private var current: HTTPResponse?

    /// Whether part of a response has arrived (a connection closed before this lost nothing
    /// of a response).
    var hasPartialResponse: Bool { state != .head || offset < buffer.count }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if offset > 0, offset == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            offset = 0
        } else if offset > 64 * 1024 {
            buffer.removeSubrange(0..<offset)
            offset = 0
        }
        buffer.append(contentsOf: bytes)
    }

    mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    mutating func reset() {
        buffer.removeAll(keepingCapacity: true)
        offset = 0
        state = .head
        current = nil
    }

    /// The next complete response, nil until its last byte arrived.
    mutating func next() throws(HTTPProtocolError) -> HTTPResponse? {
        while true {
            switch state {
            case .head:
                guard let end = find([13, 10, 13, 10], from: offset) else {
                    if buffer.count - offset > Self.headLimit { throw HTTPProtocolError(reason: "a response head longer than 64 KiB") }
                    return nil
                }
                let head = try Self.parseHead(buffer[offset..<end])
                offset = end + 4
                if (100..<200).contains(head.response.status) { continue }
                current = head.response
                if head.response.status == 204 || head.response.status == 304 {
                    return finish()
                } else if head.chunked {
                    state = .chunkSize
                } else if let length = head.contentLength {
                    state = .body(remaining: length)
                } else {
                    current?.keepAlive = false
                    state = .untilClose
                }
            case let .body(remaining):
                let take = min(remaining, buffer.count - offset)
                keep(take)
                if take < remaining {
                    state = .body(remaining: remaining - take)
                    return nil
                }
                return finish()
            case .chunkSize:
                guard let end = find([13, 10], from: offset) else {
                    if buffer.count - offset > 1024 { throw HTTPProtocolError(reason: "a chunk size line longer than 1 KiB") }
                    return nil
                }
                let line = buffer[offset..<end].prefix { $0 != UInt8(ascii: ";") }
                let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespaces)
                guard let size = Int(text, radix: 16), size >= 0, size < 1 << 40 else {
                    throw HTTPProtocolError(reason: "a malformed chunk size \"\(text.prefix(20))\"")
                }
                offset = end + 2
                state = size == 0 ? .trailers : .chunkData(remaining: size)
            case let .chunkData(remaining):
                let take = min(remaining, buffer.count - offset)
                keep(take)
                if take < remaining {
                    state = .chunkData(remaining: remaining - take)
                    return nil
                }
                state = .chunkEnd
            case .chunkEnd:
                guard buffer.count - offset >= 2 else { return nil }
                guard buffer[offset] == 13, buffer[offset + 1] == 10 else { throw HTTPProtocolError(reason: "a chunk without its CRLF") }
                offset += 2
                state = .chunkSize
            case .trailers:
                guard let end = find([13, 10], from: offset) else { return nil }
                let empty = end == offset
                offset = end + 2
                if empty { return finish() }
            case .untilClose:
                keep(buffer.count - offset)
                return nil
            }
        }
    }

    /// The connection ended: a body that runs to the connection's end is complete now.
    mutating func connectionClosed() -> HTTPResponse? {
        guard state == .untilClose else { return nil }
        keep(buffer.count - offset)
        return finish()
    }

    private mutating func keep(_ count: Int) {
        if let kept = current?.bodyExcerpt.count, kept < Self.bodyExcerptLimit {
            current?.bodyExcerpt.append(contentsOf: buffer[offset..<(offset + min(count, Self.bodyExcerptLimit - kept))])
        }
        offset += count
    }

    private mutating func finish() -> HTTPResponse? {
        state = .head
        defer { current = nil }
        return current
    }

    private func find(_ needle: [UInt8], from start: Int) -> Int? {
        guard buffer.count - start >= needle.count else { return nil }
        var index = start
        let last = buffer.count - needle.count
        while index <= last {
            if buffer[index] == needle[0] {
                var match = true
                for k in 1..<needle.count where buffer[index + k] != needle[k] { match = false; break }
                if match { return index }
            }
            index += 1
        }
        return nil
    }

    private static func parseHead(_ bytes: ArraySlice<UInt8>) throws(HTTPProtocolError) -> (response: HTTPResponse, chunked: Bool, contentLength: Int?) {
        let text = String(decoding: bytes, as: UTF8.self)
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)[...]
        guard let statusLine = lines.popFirst() else { throw HTTPProtocolError(reason: "an empty response") }
        // HTTP/1.1 200 OK
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1].count == 3, let status = Int(parts[1]) else {
            throw HTTPProtocolError(reason: "not an HTTP/1.x status line: \"\(statusLine.prefix(40))\"")
        }
        let http10 = parts[0] == "HTTP/1.0"
        var keepAlive = !http10
        var chunked = false
        var contentLength: Int?
        var retryAfter: String?
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { throw HTTPProtocolError(reason: "a header line without a colon") }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            switch name {
            case "content-length":
                guard let length = Int(value), length >= 0 else { throw HTTPProtocolError(reason: "a malformed Content-Length \"\(value.prefix(20))\"") }
                if let contentLength, contentLength != length { throw HTTPProtocolError(reason: "conflicting Content-Length headers") }
                contentLength = length
            case "transfer-encoding":
                chunked = value.lowercased().split(separator: ",").last?.trimmingCharacters(in: .whitespaces) == "chunked"
            case "connection":
                let tokens = value.lowercased().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                if tokens.contains("close") { keepAlive = false }
                if tokens.contains("keep-alive") { keepAlive = true }
            case "retry-after":
                retryAfter = value
            default:
                break
            }
        }
        let reason = parts.count > 2 ? String(parts[2]) : ""
        return (HTTPResponse(status: status, reason: reason, keepAlive: keepAlive, retryAfter: retryAfter, bodyExcerpt: []), chunked, contentLength)
    }
}
