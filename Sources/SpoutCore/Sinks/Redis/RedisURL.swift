import Foundation

/// `redis://[[user]:password@]host[:port][/db]`: where the Redis sink connects and how it
/// logs in. `user:password` logs in as an ACL user (`AUTH user password`), `:password`
/// as the default user (`AUTH password`); user and password may be percent-encoded.
struct RedisURL: Equatable, Sendable {
    var host: String
    var port: Int32
    var user: String?
    var password: String?
    var database: Int

    /// `host:port` as `connect` wants it, for messages (no credentials).
    var address: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    static let defaultPort: Int32 = 6379

    init(host: String, port: Int32 = defaultPort, user: String? = nil, password: String? = nil, database: Int = 0) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
    }

    init(parsing url: String) throws(SpoutError) {
        let shown = SinkURL.redacted(url)
        func invalid(_ problem: String) -> SpoutError {
            .invalidOption("--sink \(shown): \(problem) (expected redis://[[user]:password@]host[:port][/db], e.g. redis://127.0.0.1:6379/0)")
        }
        guard let schemeEnd = url.range(of: "://") else { throw invalid("not a URL") }
        switch url[..<schemeEnd.lowerBound].lowercased() {
        case "redis": break
        case "rediss": throw invalid("TLS (rediss://) is not supported; use redis:// on a trusted network or a TLS tunnel")
        default: throw invalid("not a redis:// URL")
        }
        var rest = url[schemeEnd.upperBound...]
        if rest.contains("?") || rest.contains("#") { throw invalid("query parameters are not supported") }

        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            guard let colon = credentials.firstIndex(of: ":") else {
                throw invalid("the user has no password; write user:password@ or :password@")
            }
            guard let user = String(credentials[..<colon]).removingPercentEncoding,
                  let password = String(credentials[credentials.index(after: colon)...]).removingPercentEncoding else {
                throw invalid("the user or password has a malformed %-escape")
            }
            if password.isEmpty { throw invalid("the password is empty") }
            self.user = user.isEmpty ? nil : user
            self.password = password
        }

        var authority = rest
        database = 0
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            let path = rest[rest.index(after: slash)...]
            if !path.isEmpty {
                guard path.allSatisfy(\.isASCII), let number = Int(path), number >= 0 else {
                    throw invalid("the database \"\(path)\" is not a number")
                }
                database = number
            }
        }

        var hostPart = authority
        var portPart: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw invalid("the IPv6 address has no closing ]") }
            hostPart = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw invalid("unexpected text after the IPv6 address") }
                portPart = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            hostPart = authority[..<colon]
            portPart = authority[authority.index(after: colon)...]
        }
        guard !hostPart.isEmpty else { throw invalid("the host is missing") }
        host = String(hostPart)
        if let portPart {
            guard portPart.allSatisfy(\.isASCII), let number = Int32(portPart), (1...65535).contains(number) else {
                throw invalid("the port \"\(portPart)\" is not a number from 1 to 65535")
            }
            port = number
        } else {
            port = Self.defaultPort
        }
    }
}
