import Glibc
import SpoutCore

/// `spout check` for an `http://` sink: the receiver answers an `OPTIONS` request for the URL
/// within 5 s. Any HTTP answer counts as reachable (many receivers answer OPTIONS with 404 or
/// 405): whether they take an event shows only when one is POSTed (a refusal is then a poison
/// event). A 401 or 403 is a warning: the credentials or `--http-header` may be wrong.
public enum HTTPProbe {
    static let timeoutMilliseconds: Int32 = 5000

    public static func check(url: String, options: SinkOptions) throws(SpoutError) -> [CheckResult] {
        try HTTPSink.validate(url: url, options: options)
        let endpoint = try HTTPEndpoint(parsing: url)
        let tls = endpoint.tls ? try TLSClient(options.tls) : nil
        switch ask(endpoint, headers: options.httpHeaders, tls: tls) {
        case let .success(response):
            let answer = "the HTTP receiver at \(endpoint.shown) answered OPTIONS with \(response.summary)"
            if response.status == 401 || response.status == 403 {
                return [.pass("sink", answer), .warn("sink_write", "the receiver refuses spout's credentials (\(response.status))",
                                                   fix: "check the user:password in --sink or the --http-header values")]
            }
            return [.pass("sink", answer),
                    .pass("sink_write", "events are POSTed to \(endpoint.shown) (a status other than 2xx, 408, 429 or 5xx is a poison event when it happens)")]
        case let .failure(failure):
            return [.fail("sink", "cannot reach the HTTP receiver at \(endpoint.shown): \(failure.reason)",
                          fix: failure.isCertificateProblem ? "see the reason: --sink-ca-file, --sink-cert-file and --sink-key-file, or the host name in --sink"
                              : "check the host, port and path in --sink and that the receiver is running"),
                    .skip("sink_write", because: "the HTTP receiver is not reachable")]
        }
    }

    /// OPTIONS and its answer, bounded by the timeout as a whole.
    static func ask(_ endpoint: HTTPEndpoint, headers: [(name: String, value: String)], tls: TLSClient?) -> Result<HTTPResponse, TCPSocket.Failure> {
        var elapsed: Int32 = 0
        do throws(TCPSocket.Failure) {
            let socket = try TCPSocket(connectingTo: endpoint.host, port: endpoint.port, tls: tls)
            let started = ContinuousClock.now
            guard try socket.awaitConnected(within: .milliseconds(timeoutMilliseconds)) else { throw TCPSocket.Failure(reason: "no connection within 5 s") }
            elapsed = Int32(clamping: (ContinuousClock.now - started).components.seconds * 1000)
            var head = "OPTIONS \(endpoint.target) HTTP/1.1\r\nHost: \(endpoint.hostHeader)\r\nUser-Agent: spout\r\nContent-Length: 0\r\nConnection: close\r\n"
            if let authorization = endpoint.authorization { head += "Authorization: \(authorization)\r\n" }
            for header in headers { head += "\(header.name): \(header.value)\r\n" }
            let output = Array((head + "\r\n").utf8)
            var written = 0
            while written < output.count {
                written = try socket.write(output, from: written)
                guard written < output.count else { break }
                guard elapsed < timeoutMilliseconds else { throw TCPSocket.Failure(reason: "the receiver does not take the request") }
                _ = try socket.waitFor(Int16(POLLOUT), milliseconds: 100)
                elapsed += 100
            }
            var parser = HTTPResponseParser()
            var chunk = [UInt8](repeating: 0, count: 4096)
            while elapsed < timeoutMilliseconds {
                if try socket.waitFor(Int16(POLLIN), milliseconds: 100) {
                    do {
                        _ = try socket.read(into: &chunk) { parser.append($0) }
                    } catch {
                        if let response = parser.connectionClosed() { return .success(response) }
                        throw error
                    }
                    do {
                        if let response = try parser.next() { return .success(response) }
                    } catch {
                        throw TCPSocket.Failure(reason: "an invalid response: \(error.reason)")
                    }
                } else {
                    elapsed += 100
                }
            }
            throw TCPSocket.Failure(reason: "no answer to OPTIONS within 5 s")
        } catch {
            return .failure(error)
        }
    }
}
