import SpoutCore

/// `stomp://[user:password@]host[:port][/vhost]`: where the STOMP sink connects and how it
/// logs in. The path is the virtual host (the CONNECT frame's `host` header, percent-decoded,
/// `/%2F` for `/`); without one spout sends `host:/`, RabbitMQ's default virtual host
/// (ActiveMQ and Artemis ignore the header). `stomp+ssl://` (also `stomp+tls://`, `stomps://`)
/// is the same over TLS, port 61614 by default. The syntax is `SinkURL`'s.
package struct STOMPEndpoint: Equatable, Sendable {
    var host: String
    var port: Int
    var user: String?
    var password: String?
    var virtualHost: String
    /// `stomp+ssl://`: TLS (issue 15).
    var tls = false

    static let defaultPort = 61613
    static let defaultTLSPort = 61614
    static let usage = "stomp[+ssl]://user:password@host:61613[/vhost], e.g. stomp://guest:guest@127.0.0.1:61613"

    /// `host:port` as messages name it (no credentials).
    var address: String { SinkURL.Server(host: host, port: port).address(defaultPort: tls ? Self.defaultTLSPort : Self.defaultPort) }

    package init(parsing text: String) throws(SpoutError) {
        let url = try SinkURL(text, usage: Self.usage)
        func invalid(_ problem: String) -> SpoutError {
            .invalidOption("--sink \(url): \(problem) (expected \(Self.usage))")
        }
        switch url.scheme {
        case "stomp": break
        case "stomp+ssl", "stomp+tls", "stomps": tls = true
        default: throw invalid("not a stomp:// or stomp+ssl:// URL")
        }
        if !url.query.isEmpty { throw invalid("query parameters are not supported (the virtual host is the path: stomp://host:61613/vhost)") }
        guard url.servers.count == 1, let server = url.servers.first else { throw invalid("name one server") }
        host = server.host
        port = server.port ?? (tls ? Self.defaultTLSPort : Self.defaultPort)
        if let login = try url.login(invalid) { (user, password) = (login.user, login.password) }
        virtualHost = "/"
        if let path = url.path, !path.isEmpty {
            guard let decoded = path.removingPercentEncoding else { throw invalid("the virtual host has a malformed %-escape") }
            virtualHost = decoded
        }
        // CONNECT headers are not escaped (STOMP 1.2), so an EOL or NUL cannot be sent.
        for (part, value) in [("user", user), ("password", password), ("virtual host", virtualHost)] {
            if let value, value.utf8.contains(where: { $0 == 10 || $0 == 13 || $0 == 0 }) {
                throw invalid("the \(part) holds a line break or NUL, which a STOMP CONNECT frame cannot carry")
            }
        }
    }
}

/// `--stomp-destination`: the destination of each SEND, a template with `--topic`'s
/// placeholder syntax over the event: `{topic}`, `{key}`, `{type}`, `{id}`, and any other
/// name for the event header of that name. Default `/topic/{topic}`. An event for which a
/// placeholder has no value (no key, no such header) cannot be sent: it is a poison event.
package struct STOMPDestination: Sendable {
    enum Part: Sendable {
        case literal([UInt8])
        case topic, key, type, id
        case header(String)
    }

    static let defaultTemplate = "/topic/{topic}"

    let parts: [Part]
    let text: String

    package init(_ template: String) throws(SpoutError) {
        let parsed: TopicTemplate
        do { parsed = try TopicTemplate(template) } catch {
            let reason = if case let .invalidTopicTemplate(_, reason) = error { reason } else { error.description }
            throw .invalidOption("--stomp-destination \(template): \(reason); use text with {topic}, {key}, {type}, {id} or {header name} placeholders, e.g. /queue/{topic}")
        }
        parts = parsed.segments.map { segment in
            switch segment {
            case let .literal(text): .literal(Self.escaped(text))
            case .column("topic"): .topic
            case .column("key"): .key
            case .column("type"): .type
            case .column("id"): .id
            case let .column(name): .header(name)
            }
        }
        text = template
    }

    /// A literal part, escaped once (it may hold a colon).
    private static func escaped(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        STOMPFrameEncoder.appendEscaped(text, to: &bytes)
        return bytes
    }

    /// Writes the escaped destination; false when a placeholder has no value for `event`.
    func append(_ event: OutboxEvent, to bytes: inout [UInt8]) -> Bool {
        for part in parts {
            let value: String?
            switch part {
            case let .literal(escaped):
                bytes.append(contentsOf: escaped)
                continue
            case .topic: value = event.topic
            case .key: value = event.key
            case .type: value = event.type
            case .id: value = event.id
            case let .header(name): value = event.headers.first { $0.name == name }?.value
            }
            guard let value, !value.isEmpty else { return false }
            STOMPFrameEncoder.appendEscaped(value, to: &bytes)
        }
        return true
    }

    /// Why `append` failed for `event`, for its error.
    func missing(_ event: OutboxEvent) -> String {
        for part in parts {
            switch part {
            case .key where event.key?.isEmpty ?? true: return "the event has no key for {key}"
            case .type where event.type?.isEmpty ?? true: return "the event has no type for {type}"
            case let .header(name) where (event.headers.first { $0.name == name }?.value.isEmpty ?? true):
                return "the event has no header \"\(Log.escaped(name))\" for {\(Log.escaped(name))}"
            default: continue
            }
        }
        return "a placeholder is empty"
    }
}
