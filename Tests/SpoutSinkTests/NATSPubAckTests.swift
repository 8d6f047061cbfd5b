import CNats
@testable import SpoutCore
@testable import SpoutNATS
import XCTest

/// The PubAck inbox's wire format: the ticket in the subject, the outcome in the JSON body
/// (shapes as nats-server 2.9 sends them).
final class NATSPubAckTests: XCTestCase {
    private func failure(_ json: String) -> NATSFailure? {
        Array(json.utf8).withUnsafeBytes { PubAck.failure($0) }
    }

    func testTicketIsTheSubjectsLastToken() {
        XCTAssertEqual(PubAck.ticket(subject: "_INBOX.abc123.42"), 42)
        XCTAssertEqual(PubAck.ticket(subject: "_INBOX.abc.0"), 0)
        XCTAssertEqual(PubAck.ticket(subject: "_INBOX.abc.18446744073709551615"), UInt64.max)
        XCTAssertNil(PubAck.ticket(subject: "_INBOX.abc.18446744073709551616"), "overflow")
        XCTAssertNil(PubAck.ticket(subject: "_INBOX.abc.4x"))
        XCTAssertNil(PubAck.ticket(subject: "_INBOX.abc."))
        XCTAssertNil(PubAck.ticket(subject: ""))
    }

    /// The ticket written into a reply subject (`JSONWriter.appendDecimal`) reads back.
    func testTicketRoundTripsThroughTheReplySubject() {
        for ticket: UInt64 in [0, 7, 10, 99, 100, 4_096, 1_234_567_890, UInt64.max] {
            var subject = Array("_INBOX.x1.".utf8)
            JSONWriter.appendDecimal(ticket, to: &subject)
            XCTAssertEqual(String(decoding: subject, as: UTF8.self), "_INBOX.x1.\(ticket)")
            subject.append(0)
            let parsed = subject.withUnsafeBytes { PubAck.ticket(subject: $0.baseAddress!.assumingMemoryBound(to: CChar.self)) }
            XCTAssertEqual(parsed, ticket)
        }
    }

    func testStoredAndDuplicateAreDelivered() {
        XCTAssertNil(failure(#"{"stream":"OUTBOX","seq":17}"#))
        XCTAssertNil(failure(#"{"stream":"OUTBOX","seq":17,"duplicate":true}"#))
        XCTAssertNil(failure(#"{"stream":"OUTBOX", "domain":"hub", "seq": 3}"#))
        XCTAssertNil(failure(#"{"stream":"error","seq":5}"#), "a stream named error")
        XCTAssertNil(failure(#"{"stream":"S","domain":"error","seq":5,"duplicate":true}"#), "a domain named error")
    }

    func testErrorsCarryCodeAndDescription() throws {
        let tooBig = try XCTUnwrap(failure(#"{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"},"stream":"OUTBOX","seq":0}"#))
        XCTAssertEqual(tooBig.status, NATS_ERR)
        XCTAssertEqual(tooBig.errorCode, 10054)
        XCTAssertEqual(tooBig.text, "message size exceeds maximum allowed")
        let quoted = try XCTUnwrap(failure(#"{"error":{"code":503,"err_code":10077,"description":"say \"no\""}}"#))
        XCTAssertEqual(quoted.errorCode, 10077)
        XCTAssertEqual(quoted.text, #"say \"no\""#)
    }

    func testHeaderValuesStayOnOneLine() {
        XCTAssertEqual(NATSWireRules.headerValue("8d0e-42"), "8d0e-42")
        XCTAssertEqual(NATSWireRules.headerValue("a\nb\r\nc\rd"), "a b c d")
        XCTAssertEqual(NATSWireRules.headerValue(""), "")
        XCTAssertEqual(NATSWireRules.headerValue(String(repeating: "é", count: 40) + "\n"), String(repeating: "é", count: 40) + " ")
    }

    /// Row content reaches NATS headers: no control character gets onto the wire raw.
    func testHeaderValuesCarryNoControlCharacters() {
        XCTAssertEqual(NATSWireRules.headerValue("a\u{1B}[31mred\u{1B}[0m"), "a [31mred [0m", "ESC")
        XCTAssertEqual(NATSWireRules.headerValue("cut\u{0}here"), "cut here", "NUL would end the C string")
        XCTAssertEqual(NATSWireRules.headerValue("tab\tdel\u{7F}bell\u{7}"), "tab del bell ")
        XCTAssertEqual(NATSWireRules.headerValue("c1\u{85}\u{9B}end"), "c1  end", "C1 controls (NEL, CSI)")
        XCTAssertEqual(NATSWireRules.headerValue("\r\n\r\n"), "  ", "one space per CR LF")
        for text in ["é©ü€ 日本", "\u{A0}nbsp\u{BF}", "plain ascii ~!"] {
            XCTAssertEqual(NATSWireRules.headerValue(text), text, "no controls: unchanged")
        }
        for scalar in (0...0x10FF).compactMap(Unicode.Scalar.init) {
            let cleaned = NATSWireRules.headerValue("a\(Character(scalar))b")
            XCTAssertFalse(cleaned.unicodeScalars.contains { $0.properties.generalCategory == .control }, "U+\(String(scalar.value, radix: 16))")
        }
    }

    /// Header names keep printable ASCII except ':'; control bytes (and everything else) become '_'.
    func testHeaderNamesCarryNoControlCharacters() {
        XCTAssertEqual(NATSWireRules.headerName("trace\u{1B}id"), "trace_id")
        XCTAssertEqual(NATSWireRules.headerName("a\u{0}b\u{7F}c\u{85}d"), "a_b_c_d")
        XCTAssertEqual(NATSWireRules.headerName("x\r\ny: z"), "x__y__z")
        XCTAssertEqual(NATSWireRules.headerName("traceparent"), "traceparent")
    }

    func testGarbageIsAFailureNotACrash() throws {
        for body in ["", "{", "not json", #"{"error""#, #"{"error":{"err_code":"#, #"{"error":{"description":"#] {
            let result = try XCTUnwrap(failure(body), body)
            XCTAssertEqual(result.status, NATS_ERR, body)
        }
    }
}
