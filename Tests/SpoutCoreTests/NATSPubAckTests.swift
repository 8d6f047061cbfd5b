import CNats
@testable import SpoutCore
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

    func testGarbageIsAFailureNotACrash() throws {
        for body in ["", "{", "not json", #"{"error""#, #"{"error":{"err_code":"#, #"{"error":{"description":"#] {
            let result = try XCTUnwrap(failure(body), body)
            XCTAssertEqual(result.status, NATS_ERR, body)
        }
    }
}
