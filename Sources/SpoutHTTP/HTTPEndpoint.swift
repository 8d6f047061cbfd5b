import Foundation
import SpoutCore

/// `http://[user:password@]host[:port][/path][?query]`: where the HTTP sink POSTs. With a
/// user and password every request carries `Authorization: Basic …`. `https://` is the same
/// over TLS (port 443 by default). The syntax is `SinkURL`'s.
package struct HTTPEndpoint: Equatable, Sendable {
    var host: String
    var port: Int
    /// The request target: the path and query as given, `/` without one.
    var target: String
    /// `Basic base64(user:password)`, nil without credentials.
    var authorization: String?
    /// `https://` (issue 15).
    var tls = false

    static let defaultPort = 80
    static let defaultTLSPort = 443
    static let usage = "http[s]://host[:port]/path, e.g. http://127.0.0.1:8080/webhooks"

    /// `host:port` as messages name it (no credentials, no path).
    var address: String { SinkURL.Server(host: host, port: port).address(defaultPort: tls ? Self.defaultTLSPort : Self.defaultPort) }

    /// The `Host` header: the port only when it is not the default.
    var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == (tls ? Self.defaultTLSPort : Self.defaultPort) ? name : "\(name):\(port)"
    }

    /// Where requests go, as logs may show it: `http://host:port/path` (no credentials).
    var shown: String { (tls ? "https://" : "http://") + address + target }

    package init(parsing text: String) throws(SpoutError) {
        let url = try SinkURL(text, usage: Self.usage)
        func invalid(_ problem: String) -> SpoutError {
            .invalidOption("--sink \(url): \(problem) (expected \(Self.usage))")
        }
        switch url.scheme {
        case "http": break
        case "https": tls = true
        default: throw invalid("not an http:// or https:// URL")
        }
        guard url.servers.count == 1, let server = url.servers.first else { throw invalid("name one server") }
        host = server.host
        port = server.port ?? (tls ? Self.defaultTLSPort : Self.defaultPort)
        var target = "/" + (url.path ?? "")
        if !url.query.isEmpty {
            target += "?" + url.query.map { $0.value.isEmpty ? $0.name : "\($0.name)=\($0.value)" }.joined(separator: "&")
        }
        // The request line is `POST <target> HTTP/1.1`: a space or control character would break it.
        guard !target.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7F }) else {
            throw invalid("the path has a space or control character; percent-encode it")
        }
        self.target = target
        if let user = url.user {
            let credentials = user + ":" + (url.password ?? "")
            authorization = "Basic " + Data(credentials.utf8).base64EncodedString()
        }
    }
}
