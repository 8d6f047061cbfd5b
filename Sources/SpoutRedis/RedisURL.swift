import SpoutCore
/// `redis://[[user]:password@]host[:port][/db]`: where the Redis sink connects and how it
/// logs in; `rediss://` is the same over TLS (issue 15; the same default port, 6379). `user:password` logs in as an ACL user (`AUTH user password`), `:password`
/// as the default user (`AUTH password`); user and password may be percent-encoded. The
/// syntax is `SinkURL`'s; this reads what its parts mean to Redis.
package struct RedisURL: Equatable, Sendable {
    var host: String
    var port: Int32
    var user: String?
    var password: String?
    var database: Int
    /// `rediss://`: TLS, verified with the `--sink-ca-file` … options.
    var tls: Bool

    /// `host:port` as `connect` wants it, for messages (no credentials).
    var address: String { SinkURL.Server(host: host, port: Int(port)).address(defaultPort: Int(Self.defaultPort)) }

    static let defaultPort: Int32 = 6379

    init(host: String, port: Int32 = defaultPort, user: String? = nil, password: String? = nil, database: Int = 0, tls: Bool = false) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.tls = tls
    }

    package init(parsing text: String) throws(SpoutError) {
        let usage = "redis[s]://[[user]:password@]host[:port][/db], e.g. redis://127.0.0.1:6379/0"
        let url = try SinkURL(text, usage: usage)
        func invalid(_ problem: String) -> SpoutError {
            .invalidOption("--sink \(url): \(problem) (expected \(usage))")
        }
        switch url.scheme {
        case "redis": tls = false
        case "rediss": tls = true
        default: throw invalid("not a redis:// or rediss:// URL")
        }
        if !url.query.isEmpty { throw invalid("query parameters are not supported") }
        guard url.servers.count == 1, let server = url.servers.first else {
            throw invalid("name one server (Redis Cluster and Sentinel are not supported)")
        }
        host = server.host
        port = server.port.map { Int32($0) } ?? Self.defaultPort

        if let user = url.user {
            guard let password = url.password else { throw invalid("the user has no password; write user:password@ or :password@") }
            if password.isEmpty { throw invalid("the password is empty") }
            self.user = user.isEmpty ? nil : user
            self.password = password
        }

        database = 0
        if let path = url.path, !path.isEmpty {
            guard path.allSatisfy(\.isASCII), let number = Int(path), number >= 0 else {
                throw invalid("the database \"\(path)\" is not a number")
            }
            database = number
        }
    }
}
