import Foundation
import SpoutCore

/// `amqp://[user:password@]host[:port][/vhost]`: where the AMQP sink connects and how it logs
/// in. The syntax is `SinkURL`'s; this reads what its parts mean to an AMQP 0-9-1 broker.
///
/// - user and password are percent-decoded; without them spout logs in as `guest:guest`,
///   RabbitMQ's default account (which RabbitMQ only lets in over loopback);
/// - the vhost is the percent-decoded path: none or empty is `/`, `%2F` is `/` too, and a
///   vhost that holds a `/` is written with `%2F` (`amqp://host/prod%2Forders`);
/// - `amqps://` is AMQP over TLS (default port 5671), verified with `--sink-ca-file` and the
///   rest (issue 15).
package struct AMQPURL: Equatable, Sendable {
    var host: String
    var port: Int
    var user: String
    var password: String
    var vhost: String
    /// `amqps://`: TLS (issue 15).
    var tls: Bool

    static let defaultPort = 5672
    static let defaultTLSPort = 5671
    static let usage = "amqp://user:password@host:5672/vhost or amqps://user:password@host:5671/vhost (TLS), e.g. amqp://guest:guest@127.0.0.1:5672/"

    /// `host:port` as messages name it (no credentials).
    var address: String { SinkURL.Server(host: host, port: port).address(defaultPort: tls ? Self.defaultTLSPort : Self.defaultPort) }

    /// The broker as log lines name it: `user@host:port` and the vhost, without the password.
    var described: String { "\(user)@\(address), vhost \"\(vhost)\"" }

    package init(parsing text: String) throws(SpoutError) {
        let url = try SinkURL(text, usage: Self.usage)
        func invalid(_ problem: String) -> SpoutError {
            .invalidOption("--sink \(url): \(problem) (expected \(Self.usage))")
        }
        switch url.scheme {
        case "amqp": tls = false
        case "amqps": tls = true
        default: throw invalid("not an amqp:// or amqps:// URL")
        }
        if !url.query.isEmpty { throw invalid("query parameters are not supported") }
        guard url.servers.count == 1, let server = url.servers.first else {
            throw invalid("name one broker (a cluster is reached through one address or a load balancer)")
        }
        host = server.host
        port = server.port ?? (tls ? Self.defaultTLSPort : Self.defaultPort)

        (user, password) = try url.login(invalid) ?? ("guest", "guest")

        vhost = "/"
        if let path = url.path, !path.isEmpty {
            guard !path.contains("/") else { throw invalid("the vhost \"\(path)\" holds a /: write it as %2F") }
            guard let decoded = path.removingPercentEncoding else { throw invalid("the vhost \"\(path)\" has a malformed %-escape") }
            vhost = decoded
        }
    }
}
