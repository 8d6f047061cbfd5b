import Foundation
import SpoutCore

/// `amqp://[user:password@]host[:port][/vhost]`: where the AMQP sink connects and how it logs
/// in. The syntax is `SinkURL`'s; this reads what its parts mean to an AMQP 0-9-1 broker.
///
/// - user and password are percent-decoded; without them spout logs in as `guest:guest`,
///   RabbitMQ's default account (which RabbitMQ only lets in over loopback);
/// - the vhost is the percent-decoded path: none or empty is `/`, `%2F` is `/` too, and a
///   vhost that holds a `/` is written with `%2F` (`amqp://host/prod%2Forders`);
/// - `amqps://` (TLS) is recognised and refused for now: TLS comes with the other sinks' TLS.
package struct AMQPURL: Equatable, Sendable {
    var host: String
    var port: Int
    var user: String
    var password: String
    var vhost: String

    static let defaultPort = 5672
    static let defaultTLSPort = 5671
    static let usage = "amqp://user:password@host:5672/vhost, e.g. amqp://guest:guest@127.0.0.1:5672/"

    /// `host:port` as messages name it (no credentials).
    var address: String { SinkURL.Server(host: host, port: port).address(defaultPort: Self.defaultPort) }

    /// The broker as log lines name it: `user@host:port` and the vhost, without the password.
    var described: String { "\(user)@\(address), vhost \"\(vhost)\"" }

    package init(parsing text: String) throws(SpoutError) {
        let url = try SinkURL(text, usage: Self.usage)
        func invalid(_ problem: String) -> SpoutError {
            .invalidOption("--sink \(url): \(problem) (expected \(Self.usage))")
        }
        switch url.scheme {
        case "amqp": break
        case "amqps":
            throw invalid("TLS (amqps://) is not supported yet; use amqp:// on a trusted network or a TLS tunnel (stunnel, a sidecar) to port 5671")
        default: throw invalid("not an amqp:// URL")
        }
        if !url.query.isEmpty { throw invalid("query parameters are not supported") }
        guard url.servers.count == 1, let server = url.servers.first else {
            throw invalid("name one broker (a cluster is reached through one address or a load balancer)")
        }
        host = server.host
        port = server.port ?? Self.defaultPort

        (user, password) = try url.login(invalid) ?? ("guest", "guest")

        vhost = "/"
        if let path = url.path, !path.isEmpty {
            guard !path.contains("/") else { throw invalid("the vhost \"\(path)\" holds a /: write it as %2F") }
            guard let decoded = path.removingPercentEncoding else { throw invalid("the vhost \"\(path)\" has a malformed %-escape") }
            vhost = decoded
        }
    }
}
