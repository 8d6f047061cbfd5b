import SpoutCore
@testable import SpoutSTOMP
import XCTest

/// The STOMP frame encoder and decoder (pure), the URL and the destination template.
final class STOMPFrameTests: XCTestCase {
    private func event(headers: [OutboxEvent.Header] = [], payload: [UInt8] = Array("{\"n\":1}".utf8),
                       format: OutboxEvent.PayloadFormat = .json, key: String? = "k:1", source: OutboxEvent.Source = .stream) -> OutboxEvent {
        OutboxEvent(id: "e-1", topic: "orders", key: key, type: "Created", payload: payload, payloadFormat: format,
                    headers: headers, lsn: .zero, committedAt: PostgresTimestamp(rawValue: 0), source: source)
    }

    private func decodeAll(_ bytes: [UInt8], pieces: Int) throws -> [STOMPInbound] {
        var decoder = STOMPFrameDecoder()
        var out: [STOMPInbound] = []
        var index = 0
        let step = max(1, bytes.count / pieces)
        while index < bytes.count {
            let end = min(bytes.count, index + step)
            decoder.append(Array(bytes[index..<end]))
            while let frame = try decoder.next() { out.append(frame) }
            index = end
        }
        XCTAssertEqual(decoder.bufferedCount, 0)
        return out
    }

    /// A SEND as spout writes it decodes back (as the server would read it) with every header
    /// unescaped, in any split of the bytes, with heart-beat EOLs between frames.
    func testSendRoundTripsWithEscapingAndSplitReads() throws {
        let destination = try STOMPDestination("/queue/{topic}.{h:x}")
        let headers = [OutboxEvent.Header(name: "h:x", value: "a\\b\nc\rd:e"), OutboxEvent.Header(name: "plain", value: "v"),
                       OutboxEvent.Header(name: "receipt", value: "steal"), OutboxEvent.Header(name: "spout-key", value: "forged")]
        // A binary payload with NULs: content-length carries it.
        let payload: [UInt8] = [0, 1, 0, 255, 10, 0]
        var bytes: [UInt8] = Array("\n\r\n".utf8)
        let (rendered, dropped) = STOMPFrameEncoder.appendSend(event(headers: headers, payload: payload, format: .binary, source: .backfill),
                                                               receipt: 42, to: &bytes) { destination.append($0, to: &$1) }
        XCTAssertTrue(rendered)
        XCTAssertEqual(dropped, "receipt")
        bytes += Array("\n\n".utf8)
        let copy = bytes
        for pieces in [1, 2, 3, 7, copy.count] {
            let frames = try decodeAll(copy, pieces: pieces)
            XCTAssertEqual(frames.count, 1, "split into \(pieces)")
            guard case let .frame(frame) = frames.first else { return XCTFail("not a frame") }
            XCTAssertEqual(frame.command, "SEND")
            XCTAssertEqual(frame.header("destination"), "/queue/orders.a\\b\nc\rd:e")
            XCTAssertEqual(frame.header("receipt"), "42")
            XCTAssertEqual(frame.header("persistent"), "true")
            XCTAssertEqual(frame.header("content-type"), "application/octet-stream")
            XCTAssertEqual(frame.header("content-length"), "6")
            XCTAssertEqual(frame.header("spout-event-id"), "e-1")
            XCTAssertEqual(frame.header("spout-key"), "k:1")
            XCTAssertEqual(frame.header("spout-event-type"), "Created")
            XCTAssertEqual(frame.header("spout-source"), "backfill")
            XCTAssertEqual(frame.header("h:x"), "a\\b\nc\rd:e")
            XCTAssertEqual(frame.header("plain"), "v")
            XCTAssertEqual(frame.headers.filter { $0.name == "receipt" }.count, 1, "a row cannot add a receipt header")
            XCTAssertEqual(frame.headers.filter { $0.name == "spout-key" }.count, 1, "nor a spout- header")
            XCTAssertEqual(frame.body, payload)
        }
    }

    /// RECEIPTs (the per-event acknowledgement) decode without a frame value; ERROR, CONNECTED
    /// and frames without content-length decode whole; CR LF line ends are accepted.
    func testServerFramesInPieces() throws {
        let text = "CONNECTED\r\nversion:1.2\r\nheart-beat:0,5000\r\nodd:a\\cb\r\n\r\n\u{0}\n"
            + "RECEIPT\nreceipt-id:7\n\n\u{0}\n\nRECEIPT\nreceipt-id:18446744073709551615\n\n\u{0}"
            + "RECEIPT\nreceipt-id:abc\n\n\u{0}"
            + "ERROR\nmessage:not_found\ncontent-type:text/plain\ncontent-length:4\n\nno\u{0}x\u{0}\n"
            + "ERROR\nmessage:a\\cb\\\\c\n\nbody\u{0}"
        let bytes = Array(text.utf8)
        for pieces in [1, 5, bytes.count] {
            let frames = try decodeAll(bytes, pieces: pieces)
            XCTAssertEqual(frames.count, 6)
            guard frames.count == 6 else { return }
            guard case let .frame(connected) = frames[0] else { return XCTFail() }
            XCTAssertEqual(connected.command, "CONNECTED")
            XCTAssertEqual(connected.header("heart-beat"), "0,5000")
            XCTAssertEqual(connected.header("odd"), "a\\cb", "CONNECTED headers are not unescaped")
            XCTAssertEqual(frames[1], .receipt(7))
            XCTAssertEqual(frames[2], .receipt(nil), "beyond Int: not a ticket")
            XCTAssertEqual(frames[3], .receipt(nil))
            guard case let .frame(error) = frames[4], case let .frame(second) = frames[5] else { return XCTFail() }
            XCTAssertEqual(error.command, "ERROR")
            XCTAssertEqual(error.body, Array("no\u{0}x".utf8), "content-length covers NULs")
            XCTAssertEqual(second.header("message"), "a:b\\c")
            XCTAssertEqual(second.body, Array("body".utf8))
        }
    }

    func testMalformedFramesAreProtocolErrors() {
        var decoder = STOMPFrameDecoder()
        decoder.append(Array("RECEIPT\ncontent-length:x\n\n\u{0}".utf8))
        XCTAssertThrowsError(try decoder.next())
        decoder = STOMPFrameDecoder()
        decoder.append(Array("ERROR\ncontent-length:1\n\nab\u{0}".utf8))
        XCTAssertThrowsError(try decoder.next(), "a body longer than content-length")
        decoder = STOMPFrameDecoder()
        decoder.append([UInt8](repeating: UInt8(ascii: "A"), count: STOMPFrameDecoder.maxHeaderBytes + 10))
        XCTAssertThrowsError(try decoder.next(), "headers without end")
    }

    func testConnectFrame() {
        var bytes: [UInt8] = []
        STOMPFrameEncoder.appendConnect(host: "/", login: "u", passcode: "p:w", heartBeat: (10_000, 5_000), to: &bytes)
        XCTAssertEqual(String(decoding: bytes, as: UTF8.self),
                       "CONNECT\naccept-version:1.2\nhost:/\nlogin:u\npasscode:p:w\nheart-beat:10000,5000\n\n\u{0}")
    }

    func testDestinationTemplate() throws {
        let template = try STOMPDestination("/exchange/{type}/{key}")
        var bytes: [UInt8] = []
        XCTAssertTrue(template.append(event(), to: &bytes))
        XCTAssertEqual(String(decoding: bytes, as: UTF8.self), "/exchange/Created/k\\c1")
        bytes = []
        XCTAssertFalse(template.append(event(key: nil), to: &bytes))
        XCTAssertEqual(template.missing(event(key: nil)), "the event has no key for {key}")
        XCTAssertThrowsError(try STOMPDestination("/topic/{topic")) { error in
            XCTAssertTrue("\(error)".contains("--stomp-destination"), "\(error)")
        }
        var sendBytes: [UInt8] = []
        let (rendered, _) = STOMPFrameEncoder.appendSend(event(key: nil), receipt: 1, to: &sendBytes) { template.append($0, to: &$1) }
        XCTAssertFalse(rendered)
        XCTAssertTrue(sendBytes.isEmpty, "nothing of a frame that cannot be rendered")
    }

    func testEndpoint() throws {
        let plain = try STOMPEndpoint(parsing: "stomp://guest:gu%40est@broker.example")
        XCTAssertEqual(plain.host, "broker.example")
        XCTAssertEqual(plain.port, 61613)
        XCTAssertEqual(plain.user, "guest")
        XCTAssertEqual(plain.password, "gu@est")
        XCTAssertEqual(plain.virtualHost, "/")
        XCTAssertEqual(try STOMPEndpoint(parsing: "stomp://h:1234/prod").virtualHost, "prod")
        XCTAssertEqual(try STOMPEndpoint(parsing: "stomp://h/%2F").virtualHost, "/")
        XCTAssertNil(try STOMPEndpoint(parsing: "stomp://h").user)
        // issue 15: stomp+ssl:// (and its aliases) is TLS, port 61614 by default.
        for scheme in ["stomp+ssl", "stomp+tls", "stomps"] {
            let secure = try STOMPEndpoint(parsing: "\(scheme)://u:p@h")
            XCTAssertTrue(secure.tls, scheme)
            XCTAssertEqual(secure.port, 61614, scheme)
        }
        XCTAssertFalse(plain.tls)
        for (url, words) in [("stomp+tcp://u:secret@h:61614", "not a stomp://"), ("stomp://u@h", "no password"),
                             ("stomp://a,b", "one server"), ("stomp://u:secret@h?x=1", "query"),
                             ("stomp://u:se%0Acret@h", "line break")] {
            XCTAssertThrowsError(try STOMPEndpoint(parsing: url), url) { error in
                XCTAssertTrue("\(error)".contains(words), "\(error)")
                XCTAssertFalse("\(error)".contains("secret"), "\(error)")
            }
        }
    }
}
