import Foundation
import XCTest

/// The throwaway certificates of scripts/tls-certs, made once per test process in a temporary
/// directory: a CA, a second CA that signed nothing, and server certificates for localhost and
/// 127.0.0.1 (good, expired, and one for another host), plus a client certificate (CN=spout).
/// Servers started with them (Redis, NATS, RabbitMQ, PostgreSQL, an HTTPS receiver) are the
/// tests' TLS servers; spout is given `ca`, `client` and `clientKey` through --sink-ca-file,
/// --sink-cert-file and --sink-key-file, or `sslrootcert`/`sslcert`/`sslkey` in a database URL.
struct TestCertificates: Sendable {
    let directory: URL

    var ca: String { path("ca.crt") }
    var otherCA: String { path("other-ca.crt") }
    var server: String { path("server.crt") }
    var serverKey: String { path("server.key") }
    /// `server.crt` then `server.key` in one file.
    var serverPEM: String { path("server.pem") }
    var wrongHost: String { path("wronghost.crt") }
    var wrongHostKey: String { path("wronghost.key") }
    var expired: String { path("expired.crt") }
    var expiredKey: String { path("expired.key") }
    var client: String { path("client.crt") }
    var clientKey: String { path("client.key") }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// The process's certificates, made on first use.
    static func shared() throws -> TestCertificates {
        try made.get()
    }

    private static let made: Result<TestCertificates, Error> = Result {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spout-tls-\(getpid())")
        try? FileManager.default.removeItem(at: directory)
        _ = try PrivateServer.script("tls-certs", [directory.path])
        return TestCertificates(directory: directory)
    }
}
