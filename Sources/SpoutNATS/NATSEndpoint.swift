import SpoutCore
/// A `nats://` sink URL: `nats://[user:password@|token@]host[:port][,host[:port]…]`. The
/// syntax is `SinkURL`'s; this reads what its parts mean to NATS. `tls://` (or `nats+tls://`)
/// is the same over TLS, verified with `tls` (`--sink-ca-file`, …; issue 15).
///
/// Credentials apply to every server (libnats takes them as connection options, not per
/// URL). Every string derived from the URL for logs and errors comes from `redacted`, which
/// never contains the password or token.
package struct NATSEndpoint: Equatable, Sendable {
    enum Credentials: Equatable, Sendable {
        case none
        case user(String, password: String)
        case token(String)
    }

    static let defaultPort = 4222

    /// `nats://host:port`, in the order given (the client tries them in that order).
    var servers: [String]
    var credentials: Credentials
    /// `tls://` or `nats+tls://`: TLS to every server (issue 15).
    var secure: Bool
    /// The URL's scheme as written, for `redacted`.
    private var scheme: String
    /// The hosts, for the certificate's host name check.
    var hosts: [String]
    /// `--sink-ca-file` and the rest (set by the sink and the probe from `SinkOptions.tls`).
    var tls = SinkTLS()

    package init(_ text: String) throws(SpoutError) {
        let usage = "nats://host:4222, nats://user:password@host:4222, nats://host1:4222,host2:4222 or tls://host:4222 (TLS)"
        let url = try SinkURL(text, usage: usage)
        func invalid(_ problem: String) -> SpoutError {
            .invalidOption("--sink \(url): \(problem) (expected \(usage))")
        }
        guard ["nats", "tls", "nats+tls"].contains(url.scheme) else { throw invalid("not a nats:// or tls:// URL") }
        scheme = url.scheme
        secure = url.scheme != "nats"
        hosts = url.servers.map(\.host)
        // A trailing / is harmless; anything after it is not a server.
        if let path = url.path, !path.isEmpty { throw invalid("\"/\(path)\" follows the servers; a NATS URL names servers only") }
        if !url.query.isEmpty { throw invalid("query parameters are not supported") }
        servers = url.servers.map { "nats://" + $0.address(defaultPort: Self.defaultPort) }
        switch (url.user, url.password) {
        case (nil, _):
            credentials = .none
        case let (user?, nil):
            guard !user.isEmpty else { throw invalid("empty credentials before @") }
            credentials = .token(user)
        case let (user?, password?):
            guard !user.isEmpty else { throw invalid("the user name is empty; NATS tokens are written nats://token@host") }
            credentials = .user(user, password: password)
        }
    }

    /// The URL as it may appear in logs and errors.
    var redacted: String {
        let hosts = servers.map { $0.dropFirst("nats://".count) }.joined(separator: ",")
        switch credentials {
        case .none: return "\(scheme)://" + hosts
        case let .user(user, _): return "\(scheme)://\(user):***@" + hosts
        case .token: return "\(scheme)://***@" + hosts
        }
    }
}
