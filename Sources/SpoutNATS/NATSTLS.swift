// issue 15: TLS
import CNats
import Glibc
import SpoutCore

/// NATS over TLS (`tls://`): libnats' options from `SinkTLS`, and its TLS errors in plain words.
///
/// libnats (built with OpenSSL) verifies the chain against `--sink-ca-file`, or the system's
/// CAs when none is loaded (it calls `SSL_CTX_set_default_verify_paths`), and the host name
/// (Debian's build checks every server's URL host; spout also sets the expected host name when
/// the URL names one host, for builds that only check it then). The handshake blocks (libnats
/// connects on the sink's worker thread). After it, the publishing connection's socket is read
/// and written by the relay thread only when it is ready: libnats waits inside `SSL_read` and
/// `SSL_write` when OpenSSL wants more, which an idle or full socket must not cause.
enum NATSTLS {
    /// Applies the endpoint's TLS settings to `options` (nothing for `nats://`: a server that
    /// requires TLS then fails the handshake, and `explained` says to use `tls://`).
    static func configure(_ options: OpaquePointer?, _ endpoint: NATSEndpoint) throws(NATSFailure) {
        guard endpoint.secure else { return }
        let tls = endpoint.tls
        try check(natsOptions_SetSecure(options, true))
        if tls.insecureSkipVerify {
            try check(natsOptions_SkipServerVerification(options, true))
        } else if Set(endpoint.hosts).count == 1, let host = endpoint.hosts.first {
            try check(natsOptions_SetExpectedHostname(options, host))
        }
        if let ca = tls.caFile {
            let status = natsOptions_LoadCATrustedCertificates(options, ca)
            if status != NATS_OK { throw NATSFailure(status: status, text: TLSClient.caFileUnreadable(ca)) }
        }
        if let certificate = tls.certFile, let key = tls.keyFile {
            let status = natsOptions_LoadCertificatesChain(options, certificate, key)
            if status != NATS_OK {
                throw NATSFailure(status: status, text: "--sink-cert-file \(certificate) / --sink-key-file \(key): the certificate and key could not be loaded: give a PEM certificate and its unencrypted key")
            }
        }
    }

    /// `failure` (from connecting to `endpoint`) in plain words when it is about TLS, marked as
    /// a certificate problem (spout stops when it happens at start); otherwise unchanged.
    static func explained(_ failure: NATSFailure, _ endpoint: NATSEndpoint) -> NATSFailure {
        let server = endpoint.redacted
        func problem(_ text: String) -> NATSFailure {
            var explained = NATSFailure(status: failure.status, text: text)
            explained.certificateProblem = true
            return explained
        }
        switch failure.status {
        case NATS_SECURE_CONNECTION_WANTED:
            return problem("TLS handshake with \(server) failed: the server does not speak TLS on this port (no tls block in its configuration): use nats:// or the server's TLS port")
        case NATS_SSL_ERROR where !endpoint.secure:
            return problem("the NATS server at \(server) requires TLS (a tls block in its configuration): use tls://host:port in --sink, with --sink-ca-file if its CA is not in the system's store")
        case NATS_SSL_ERROR:
            // "SSL handshake error: 20:unable to get local issuer certificate:depth=0:…": the
            // number is OpenSSL's verification result.
            if let range = failure.text.range(of: "handshake error: "),
               let code = Int32(failure.text[range.upperBound...].prefix { $0.isNumber }) {
                return problem("TLS handshake with \(server) failed: " + TLSClient.verificationProblem(code))
            }
            return problem("TLS handshake with \(server) failed: \(failure.text)")
        case NATS_PROTOCOL_ERROR where endpoint.secure && failure.text.contains("Expected 'PONG', got ''"):
            // TLS 1.3: the server checks the client certificate after the handshake and closes.
            return problem("TLS connection to \(server) failed: " + TLSClient.closedAfterHandshake(certificateGiven: endpoint.tls.certFile != nil))
        default:
            return failure
        }
    }

    /// Whether `socket` is ready for `events` now (never waits).
    static func ready(_ socket: Int32, _ events: Int16) -> Bool {
        guard socket >= 0 else { return false }
        var descriptor = pollfd(fd: socket, events: events, revents: 0)
        return Glibc.poll(&descriptor, 1, 0) > 0
    }

    private static func check(_ status: natsStatus) throws(NATSFailure) {
        if status != NATS_OK { throw NATSFailure(status: status) }
    }
}
