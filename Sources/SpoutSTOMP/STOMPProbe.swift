import Glibc
import SpoutCore

/// `spout check` for a `stomp://` sink: the server answers the CONNECT (user, password,
/// virtual host) with CONNECTED within 5 s. It sends nothing else: whether a destination takes
/// SENDs shows only when one is sent (a refusal is then a poison event).
public enum STOMPProbe {
    static let timeoutMilliseconds = 5000

    public static func check(url: String, options: SinkOptions) throws(SpoutError) -> [CheckResult] {
        try STOMPSink.validate(url: url, options: options)
        let endpoint = try STOMPEndpoint(parsing: url)
        let who = "\(endpoint.user ?? "no user") at \(endpoint.address), virtual host \"\(Log.escaped(endpoint.virtualHost))\""
        let unreachable = CheckResult.skip("sink_write", because: "the STOMP server is not reachable")
        let tls = endpoint.tls ? try TLSClient(options.tls) : nil
        switch connect(endpoint, tls: tls) {
        case .success:
            return [.pass("sink", "the STOMP server accepted the CONNECT of \(who)"),
                    .pass("sink_write", "destinations from --stomp-destination \(options.stompDestination) (a destination the server refuses is a poison event when it happens)")]
        case let .failure(.refused(detail)):
            return [.fail("sink", "the STOMP server refused the CONNECT of \(who): \(detail)",
                          fix: "fix the user, password or virtual host in --sink (stomp://user:password@host:61613/vhost)"), unreachable]
        case let .failure(.certificate(detail)): // issue 15: TLS
            return [.fail("sink", "cannot connect to the STOMP server at \(endpoint.address): \(detail)",
                          fix: "see the reason: --sink-ca-file, --sink-cert-file and --sink-key-file, or the host name in --sink"), unreachable]
        case let .failure(.unreachable(detail)):
            return [.fail("sink", "cannot reach the STOMP server at \(endpoint.address): \(detail)",
                          fix: "check the host and port in --sink and that the server (e.g. RabbitMQ's rabbitmq_stomp plugin) is running"), unreachable]
        }
    }

    enum Failure: Error {
        case unreachable(String)
        case refused(String)
        case certificate(String)
    }

    /// CONNECT and the reply, bounded by the timeout as a whole.
    static func connect(_ endpoint: STOMPEndpoint, tls: TLSClient?) -> Result<Void, Failure> {
        var elapsed: Int32 = 0
        func remaining() -> Int32 { max(0, Int32(timeoutMilliseconds) - elapsed) }
        do throws(TCPSocket.Failure) {
            let socket = try TCPSocket(connectingTo: endpoint.host, port: endpoint.port, tls: tls)
            let started = ContinuousClock.now
            guard try socket.awaitConnected(within: .milliseconds(timeoutMilliseconds)) else {
                return .failure(.unreachable("no connection within 5 s"))
            }
            elapsed = Int32(clamping: (ContinuousClock.now - started).components.seconds * 1000)
            var output: [UInt8] = []
            STOMPFrameEncoder.appendConnect(host: endpoint.virtualHost, login: endpoint.user, passcode: endpoint.password,
                                            heartBeat: (0, 0), to: &output)
            var written = 0
            while written < output.count {
                written = try socket.write(output, from: written)
                if written < output.count {
                    guard remaining() > 0 else { return .failure(.unreachable("the server does not take the CONNECT frame")) }
                    _ = try socket.waitFor(Int16(POLLOUT), milliseconds: 100)
                    elapsed += 100
                }
            }
            var decoder = STOMPFrameDecoder()
            var chunk = [UInt8](repeating: 0, count: 4096)
            while remaining() > 0 {
                if try socket.waitFor(Int16(POLLIN), milliseconds: 100) {
                    _ = try socket.read(into: &chunk) { decoder.append($0) }
                    if let reply = try? decoder.next(), case let .frame(frame) = reply {
                        if frame.command == "CONNECTED" { return .success(()) }
                        let body = String(decoding: frame.body.prefix(200), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                        let message = frame.header("message") ?? frame.command
                        return .failure(.refused(Log.escaped(body.isEmpty ? message : message + ": " + body)))
                    }
                } else {
                    elapsed += 100
                }
            }
            return .failure(.unreachable("no answer to CONNECT within 5 s"))
        } catch {
            return .failure(error.isCertificateProblem ? .certificate(error.reason) : .unreachable(error.reason))
        }
    }
}
