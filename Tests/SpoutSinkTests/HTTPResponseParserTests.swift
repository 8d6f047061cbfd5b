import Foundation
@testable import SpoutHTTP
import XCTest

/// The HTTP response parser (pure: bytes in, responses out), fed whole and byte by byte; the
/// URL, Retry-After and the Standard Webhooks signature.
final class HTTPResponseParserTests: XCTestCase {
    /// Every response of `text`, fed in pieces of `piece` bytes.
    private func responses(_ text: String, piece: Int, closeAtEnd: Bool = false) throws -> [HTTPResponse] {
        var parser = HTTPResponseParser()
        var found: [HTTPResponse] = []
        let bytes = Array(text.utf8)
        var index = 0
        while index < bytes.count {
            parser.append(Array(bytes[index..<min(index + piece, bytes.count)]))
            index += piece
            while let response = try parser.next() { found.append(response) }
        }
        if closeAtEnd, let last = parser.connectionClosed() { found.append(last) }
        return found
    }

    private let stream = "HTTP/1.1 100 Continue\r\n\r\n"
        + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        + "HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nbusy\r\n3\r\n!!!\r\n0\r\nX-Trailer: t\r\n\r\n"
        + "HTTP/1.1 204 No Content\r\n\r\n"
        + "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad"

    func testResponsesInAnyPieces() throws {
        for piece in [1, 2, 3, 7, 64, 4096] {
            let found = try responses(stream, piece: piece)
            XCTAssertEqual(found.map(\.status), [200, 503, 204, 400], "pieces of \(piece)")
            XCTAssertEqual(found.map { String(decoding: $0.bodyExcerpt, as: UTF8.self) }, ["hello", "busy!!!", "", "bad"])
            XCTAssertEqual(found.map(\.keepAlive), [true, true, true, false])
            XCTAssertEqual(found[1].retryAfter, "7")
            XCTAssertEqual(found[3].summary, "400 Bad Request: bad")
        }
    }

    func testBodyUntilCloseAndHTTP10() throws {
        let found = try responses("HTTP/1.0 500 Oops\r\n\r\nsomething broke", piece: 4, closeAtEnd: true)
        XCTAssertEqual(found.map(\.status), [500])
        XCTAssertEqual(found.first?.keepAlive, false)
        XCTAssertEqual(found.first.map { String(decoding: $0.bodyExcerpt, as: UTF8.self) }, "something broke")
        let keepAlive = try responses("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", piece: 3)
        XCTAssertEqual(keepAlive.first?.keepAlive, true)
    }

    func testLargeBodyKeepsOnlyAnExcerpt() throws {
        let body = String(repeating: "x", count: 100_000)
        let found = try responses("HTTP/1.1 502 Bad Gateway\r\nContent-Length: \(body.count)\r\n\r\n\(body)HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", piece: 1000)
        XCTAssertEqual(found.map(\.status), [502, 200])
        XCTAssertEqual(found[0].bodyExcerpt.count, HTTPResponseParser.bodyExcerptLimit)
    }

    func testMalformedResponsesAreErrors() {
        for text in ["SMTP 220 hello\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"] {
            XCTAssertThrowsError(try responses(text, piece: 5), text)
        }
        var parser = HTTPResponseParser()
        parser.append(Array(repeating: UInt8(ascii: "a"), count: HTTPResponseParser.headLimit + 10))
        XCTAssertThrowsError(try parser.next())
    }

    func testRetryAfter() {
        let now = Date(timeIntervalSince1970: 784_111_777) // Sun, 06 Nov 1994 08:49:37 GMT
        XCTAssertEqual(HTTPAdapter.retryAfter("120", now: now), .seconds(120))
        XCTAssertEqual(HTTPAdapter.retryAfter("Sun, 06 Nov 1994 08:49:47 GMT", now: now), .seconds(10))
        XCTAssertEqual(HTTPAdapter.retryAfter("Sun, 06 Nov 1994 08:49:00 GMT", now: now), .zero)
        XCTAssertNil(HTTPAdapter.retryAfter("soon", now: now))
        XCTAssertNil(HTTPAdapter.retryAfter("-3", now: now))
    }

    func testEndpoint() throws {
        let endpoint = try HTTPEndpoint(parsing: "http://user:pa%3Ass@example.com:8080/hooks/in?x=1")
        XCTAssertEqual(endpoint.target, "/hooks/in?x=1")
        XCTAssertEqual(endpoint.hostHeader, "example.com:8080")
        XCTAssertEqual(endpoint.authorization, "Basic " + Data("user:pa:ss".utf8).base64EncodedString())
        XCTAssertEqual(try HTTPEndpoint(parsing: "http://localhost").target, "/")
        // issue 15: https:// is TLS, port 443 by default, Host without it.
        let secure = try HTTPEndpoint(parsing: "https://example.com/in")
        XCTAssertTrue(secure.tls)
        XCTAssertEqual(secure.port, 443)
        XCTAssertEqual(secure.hostHeader, "example.com")
        XCTAssertEqual(secure.shown, "https://example.com:443/in")
        XCTAssertFalse(try HTTPEndpoint(parsing: "http://example.com/").tls)
        XCTAssertThrowsError(try HTTPEndpoint(parsing: "ftp://example.com/")) { error in
            XCTAssertTrue("\(error)".contains("not an http:// or https:// URL"), "\(error)")
        }
    }

    /// The Standard Webhooks specification's own example (its test vectors).
    func testSignatureMatchesTheSpecExample() throws {
        let signer = try WebhookSigner(secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        let body = Array(#"{"test": 2432232314}"#.utf8)
        XCTAssertEqual(signer.signature(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1614265330, body: body),
                       "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        XCTAssertThrowsError(try WebhookSigner(secret: "whsec_not base64!"))
    }
}

/// The request head's pieces, written without allocating.
final class HTTPRequestEncodingTests: XCTestCase {
    func testDecimalAndHead() throws {
        for value in [0, 7, 10, 99, 100, 12_345, 1_000_000] {
            var bytes: [UInt8] = []
            HTTPAdapter.appendDecimal(value, to: &bytes)
            XCTAssertEqual(String(decoding: bytes, as: UTF8.self), String(value))
        }
        let endpoint = try HTTPEndpoint(parsing: "http://u:p@[::1]:8080/in")
        let head = String(decoding: HTTPAdapter.headPrefix(endpoint, headers: [("X-Token", "t 1")]), as: UTF8.self)
        XCTAssertEqual(head, "POST /in HTTP/1.1\r\nHost: [::1]:8080\r\nUser-Agent: spout\r\nAuthorization: Basic dTpw\r\nX-Token: t 1\r\n")
    }
}
