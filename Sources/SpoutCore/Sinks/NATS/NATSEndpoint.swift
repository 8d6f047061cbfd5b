import Foundation

/// A parsed `nats://` sink URL: `nats://[user:password@|token@]host[:port][,host[:port]…]`.
///
/// Credentials go on the first server and apply to all (libnats takes them as connection
/// options, not per URL). Every string derived from the URL for logs and errors comes from
/// `redacted`, which never contains the password or token.
struct NATSEndpoint: Equatable, Sendable {
    enum Credentials: Equatable, Sendable {
        case none
        case user(String, password: String)
        case token(String)
    }

    static let defaultPort = 4222

    /// `nats://host:port`, in the order given (the client tries them in that order).
    var servers: [String]
    var credentials: Credentials

    init(_ url: String) throws(SpoutError) {
        let usage = "use nats://host:4222, nats://user:password@host:4222 or nats://host1:4222,host2:4222"
        let display = Self.redact(url)
        guard let schemeEnd = url.range(of: "://"), url[..<schemeEnd.lowerBound].lowercased() == "nats" else {
            throw .invalidOption("--sink \(display) is not a NATS URL: \(usage)")
        }
        var parsedServers: [String] = []
        var parsedCredentials = Credentials.none
        let items = url[schemeEnd.upperBound...].split(separator: ",", omittingEmptySubsequences: false)
        for (position, rawItem) in items.enumerated() {
            var item = Substring(rawItem.trimmingWhitespace)
            if let innerScheme = item.range(of: "://") {
                guard item[..<innerScheme.lowerBound].lowercased() == "nats" else {
                    throw .invalidOption("--sink \(display): server \"\(Self.redact(String(item)))\" is not nats:// (\(usage))")
                }
                item = item[innerScheme.upperBound...]
            }
            if let at = item.lastIndex(of: "@") {
                guard position == 0 else {
                    throw .invalidOption("--sink \(display): put the credentials on the first server only; they apply to all")
                }
                parsedCredentials = try Self.credentials(item[..<at], display: display)
                item = item[item.index(after: at)...]
            }
            if item.hasSuffix("/") { item = item.dropLast() }
            guard !item.isEmpty else {
                throw .invalidOption("--sink \(display): a server is missing its host (\(usage))")
            }
            guard !item.contains(where: { $0 == "/" || $0 == "?" || $0 == "#" || $0 == " " }) else {
                throw .invalidOption("--sink \(display): \"\(item)\" is not host:port (\(usage))")
            }
            parsedServers.append(try Self.hostAndPort(item, display: display, usage: usage))
        }
        servers = parsedServers
        credentials = parsedCredentials
    }

    /// The URL as it may appear in logs and errors.
    var redacted: String {
        let hosts = servers.map { $0.dropFirst("nats://".count) }.joined(separator: ",")
        switch credentials {
        case .none: return "nats://" + hosts
        case let .user(user, _): return "nats://\(user):***@" + hosts
        case .token: return "nats://***@" + hosts
        }
    }

    /// Redacts before parsing succeeded: the user name stays, a password or token does not.
    static func redact(_ url: String) -> String { Redaction.url(url) }

    private static func credentials(_ text: Substring, display: String) throws(SpoutError) -> Credentials {
        guard let colon = text.firstIndex(of: ":") else {
            guard !text.isEmpty else { throw .invalidOption("--sink \(display): empty credentials before @") }
            return .token(try percentDecoded(text, display: display))
        }
        let user = try percentDecoded(text[..<colon], display: display)
        guard !user.isEmpty else {
            throw .invalidOption("--sink \(display): the user name is empty; NATS tokens are written nats://token@host")
        }
        return .user(user, password: try percentDecoded(text[text.index(after: colon)...], display: display))
    }

    private static func hostAndPort(_ item: Substring, display: String, usage: String) throws(SpoutError) -> String {
        var host = item
        var port = defaultPort
        if item.hasPrefix("[") {
            // [IPv6]:port
            guard let close = item.firstIndex(of: "]") else { throw .invalidOption("--sink \(display): \"\(item)\" has no closing ]") }
            host = item[...close]
            let rest = item[item.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let number = Int(rest.dropFirst()) else {
                    throw .invalidOption("--sink \(display): \"\(item)\" is not [address]:port")
                }
                port = number
            }
        } else if let colon = item.lastIndex(of: ":") {
            host = item[..<colon]
            guard let number = Int(item[item.index(after: colon)...]) else {
                throw .invalidOption("--sink \(display): the port in \"\(item)\" is not a number (\(usage))")
            }
            port = number
        }
        guard !host.isEmpty, host != "[]" else { throw .invalidOption("--sink \(display): \"\(item)\" has no host (\(usage))") }
        guard (1...65535).contains(port) else {
            throw .invalidOption("--sink \(display): port \(port) is not between 1 and 65535")
        }
        return "nats://\(host):\(port)"
    }

    /// Same decoding as the Redis URL's credentials (Foundation's), with this sink's message.
    private static func percentDecoded(_ text: Substring, display: String) throws(SpoutError) -> String {
        guard let decoded = String(text).removingPercentEncoding else {
            throw .invalidOption("--sink \(display): a %-escape in the credentials is not two hex digits")
        }
        return decoded
    }
}

private extension Substring {
    var trimmingWhitespace: Substring {
        var result = self
        while result.first?.isWhitespace == true { result = result.dropFirst() }
        while result.last?.isWhitespace == true { result = result.dropLast() }
        return result
    }
}
