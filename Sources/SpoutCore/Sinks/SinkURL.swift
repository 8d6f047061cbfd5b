/// A sink URL, parsed once the same way for every sink:
/// `scheme://[user[:password]@]host[:port][,host[:port]…][/path][?name=value&…]`.
///
/// What each part means, and which parts a sink accepts, is the sink's business (`RedisURL`
/// reads the path as the database number; Kafka takes no credentials). Here: the syntax, the
/// errors that name the URL without its secrets, and `description`, the URL as it may appear
/// in logs and errors.
///
/// Syntax rules (as the sinks parsed them before they shared this):
/// - user and password are percent-decoded; the userinfo ends at the last `@`, so a password
///   may hold `@`, `/`, `,` or `?` (or %-escape them);
/// - hosts are separated by commas, each `host`, `host:port`, `[IPv6]` or `[IPv6]:port`, a
///   port from 1 to 65535; a later host may repeat the scheme (`nats://a,nats://b`);
/// - a `#fragment` is refused.
///
/// Sinks are named by URL: `stdout://`, `kafka://host:9092[,host:9092]`,
/// `redis://[:password@]host:6379[/db]`, `nats://host:4222`; `SinkRegistry` (target
/// SpoutSinks) builds one.
public struct SinkURL: Sendable, Equatable, CustomStringConvertible {
    public struct Server: Sendable, Equatable {
        /// Without the brackets of an IPv6 address.
        public var host: String
        /// nil: the sink's default port.
        public var port: Int?

        public init(host: String, port: Int?) {
            self.host = host
            self.port = port
        }

        /// `host:port` (`[v6]:port`) as clients connect to it and messages name it.
        public func address(defaultPort: Int) -> String {
            let port = self.port ?? defaultPort
            return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }

    public struct QueryItem: Sendable, Equatable {
        public var name: String
        public var value: String
    }

    /// Lowercased.
    public var scheme: String
    /// Percent-decoded; nil without an `@`, empty for `:password@` or `@`.
    public var user: String?
    /// Percent-decoded; nil when the userinfo has no `:` (a bare user, or a token).
    public var password: String?

    /// `user:password@`, for sinks that log in with both: nil without a user; an error (through
    /// `invalid`) for a user without a password or an empty one.
    public func login(_ invalid: (String) -> SpoutError) throws(SpoutError) -> (user: String, password: String)? {
        guard let user else { return nil }
        guard let password else { throw invalid("the user has no password; write user:password@") }
        guard !user.isEmpty else { throw invalid("the user name is empty") }
        return (user, password)
    }
    public var servers: [Server]
    /// After the `/` that ends the hosts, undecoded; nil without one, empty for a trailing `/`.
    public var path: String?
    public var query: [QueryItem]

    /// Parses `url`. `usage` ends every error message ("expected redis://host:6379").
    public init(_ url: String, usage: String) throws(SpoutError) {
        let shown = Self.redacted(url)
        func invalid(_ problem: String) -> SpoutError {
            .invalidOption("--sink \(shown): \(problem) (expected \(usage))")
        }
        guard let schemeEnd = url.range(of: "://"), schemeEnd.lowerBound != url.startIndex else { throw invalid("not a sink URL") }
        scheme = url[..<schemeEnd.lowerBound].lowercased()
        var rest = url[schemeEnd.upperBound...]

        user = nil
        password = nil
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            let colon = userinfo.firstIndex(of: ":")
            guard let name = String(userinfo[..<(colon ?? userinfo.endIndex)]).removingPercentEncoding else {
                throw invalid("the user or password has a malformed %-escape")
            }
            user = name
            if let colon {
                guard let secret = String(userinfo[userinfo.index(after: colon)...]).removingPercentEncoding else {
                    throw invalid("the user or password has a malformed %-escape")
                }
                password = secret
            }
        }

        if rest.contains("#") { throw invalid("a #fragment is not supported") }
        query = []
        if let mark = rest.firstIndex(of: "?") {
            for item in rest[rest.index(after: mark)...].split(separator: "&") {
                let equals = item.firstIndex(of: "=") ?? item.endIndex
                let name = String(item[..<equals])
                let value = equals == item.endIndex ? "" : String(item[item.index(after: equals)...])
                query.append(QueryItem(name: name.removingPercentEncoding ?? name, value: value.removingPercentEncoding ?? value))
            }
            rest = rest[..<mark]
        }
        path = nil
        servers = []
        let items = rest.split(separator: ",", omittingEmptySubsequences: false)
        for (index, item) in items.enumerated() {
            var item = item.drop(while: \.isWhitespace)
            while item.last?.isWhitespace == true { item = item.dropLast() }
            if let inner = item.range(of: "://") {
                guard item[..<inner.lowerBound].lowercased() == scheme else {
                    throw invalid("\"\(Self.redacted(String(item)))\" is not \(scheme)://")
                }
                item = item[inner.upperBound...]
            }
            // The path follows the last host.
            if index == items.count - 1, let slash = item.firstIndex(of: "/") {
                path = String(item[item.index(after: slash)...])
                item = item[..<slash]
            }
            servers.append(try Self.server(item, invalid: invalid))
        }
    }

    private static func server(_ item: Substring, invalid: (String) -> SpoutError) throws(SpoutError) -> Server {
        var host = item
        var portText: Substring?
        if item.hasPrefix("[") {
            guard let close = item.firstIndex(of: "]") else { throw invalid("the IPv6 address has no closing ]") }
            host = item[item.index(after: item.startIndex)..<close]
            let after = item[item.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw invalid("unexpected text after the IPv6 address") }
                portText = after.dropFirst()
            }
        } else if let colon = item.lastIndex(of: ":") {
            host = item[..<colon]
            portText = item[item.index(after: colon)...]
        }
        guard !host.isEmpty else { throw invalid(item.isEmpty ? "a host is missing" : "the host is missing in \"\(item)\"") }
        guard !host.contains(where: { $0 == "/" || $0 == " " }) else { throw invalid("\"\(item)\" is not host:port") }
        var port: Int?
        if let portText {
            guard portText.allSatisfy(\.isASCII), let number = Int(portText), (1...65535).contains(number) else {
                throw invalid("the port \"\(portText)\" is not a number from 1 to 65535")
            }
            port = number
        }
        return Server(host: String(host), port: port)
    }

    /// The URL without its secrets: the password (`user:***@`), a bare user or token (`***@`),
    /// and the values of secret-looking query items.
    public var description: String {
        var text = scheme + "://"
        if let user {
            text += password == nil ? "***@" : user + ":***@"
        }
        text += servers.map { server in
            let host = server.host.contains(":") ? "[\(server.host)]" : server.host
            return server.port.map { "\(host):\($0)" } ?? host
        }.joined(separator: ",")
        if let path { text += "/" + path }
        if !query.isEmpty {
            text += "?" + query.map { $0.name + "=" + (Redaction.isSecretName($0.name) ? "***" : $0.value) }.joined(separator: "&")
        }
        return text
    }

    /// The URL without a password or token (`redis://:secret@host` → `redis://:***@host`),
    /// for text that may not parse.
    public static func redacted(_ url: String) -> String { Redaction.url(url) }
}
