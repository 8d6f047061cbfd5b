// issue 15: TLS
import COpenSSL
import Glibc

/// The TLS side of the sinks that own their sockets (Redis, STOMP, HTTP): one OpenSSL client
/// context per sink, built from `SinkTLS` once, shared by its connections (`TCPSocket`).
/// Verification is on unless `--sink-insecure-skip-verify`: the chain against `--sink-ca-file`
/// (else the system's CAs) and the host name against the certificate (`TCPSocket` sets it per
/// connection). TLS 1.2 is the oldest version offered.
package final class TLSClient: @unchecked Sendable {
    /// The `SSL_CTX`; OpenSSL allows one context to serve connections on several threads.
    let context: OpaquePointer
    package let settings: SinkTLS

    /// Reads the CA, certificate and key files now, so that a wrong file is a start error
    /// naming its option, not a handshake failure later. Never shows the files' contents.
    package init(_ settings: SinkTLS) throws(SpoutError) {
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw .invalidOption("TLS: OpenSSL cannot make a client context (\(Self.openSSLError()))")
        }
        self.context = context
        self.settings = settings
        // A key with a passphrase would make OpenSSL ask on the terminal: refuse it instead.
        SSL_CTX_set_default_passwd_cb(context) { _, _, _, _ in 0 }
        _ = spout_ssl_ctx_set_min_tls12(context)
        _ = spout_ssl_ctx_allow_partial_writes(context)
        ERR_clear_error()
        if let ca = settings.caFile {
            guard SSL_CTX_load_verify_locations(context, ca, nil) == 1 else {
                throw .invalidOption(Self.caFileUnreadable(ca, reason: Self.openSSLError()))
            }
        } else if SSL_CTX_set_default_verify_paths(context) != 1, !settings.insecureSkipVerify {
            throw .invalidOption("TLS: \(Self.systemCAsUnreadable) (\(Self.openSSLError()))")
        }
        if let certificate = settings.certFile {
            guard SSL_CTX_use_certificate_chain_file(context, certificate) == 1 else {
                throw .invalidOption(Self.certFileUnreadable(certificate, reason: Self.openSSLError()))
            }
        }
        if let key = settings.keyFile {
            guard SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) == 1 else {
                let reason = Self.openSSLError()
                if reason.contains("mismatch") {
                    throw .invalidOption("--sink-key-file \(key) is not the private key of --sink-cert-file \(settings.certFile ?? "")")
                }
                throw .invalidOption(Self.keyFileUnreadable(key, reason: reason))
            }
            guard SSL_CTX_check_private_key(context) == 1 else {
                throw .invalidOption("--sink-key-file \(key) is not the private key of --sink-cert-file \(settings.certFile ?? "")")
            }
        }
        SSL_CTX_set_verify(context, settings.insecureSkipVerify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, nil)
        // SSL_write writes with write(2): a connection the server closed must be an error, not SIGPIPE.
        var current = sigaction()
        if sigaction(SIGPIPE, nil, &current) == 0, current.__sigaction_handler.sa_handler == nil { signal(SIGPIPE, SIG_IGN) }
    }

    deinit { SSL_CTX_free(context) }

    /// A new session for one connection to `host` over `descriptor`: SNI for host names, and
    /// the host name or IP address the certificate must list.
    func session(descriptor: Int32, host: String) -> OpaquePointer? {
        guard let ssl = SSL_new(context) else { return nil }
        SSL_set_fd(ssl, descriptor)
        SSL_set_connect_state(ssl)
        let isAddress = Self.isIPAddress(host)
        if !isAddress { _ = spout_ssl_set_server_name(ssl, host) }
        if !settings.insecureSkipVerify {
            let parameters = SSL_get0_param(ssl)
            if isAddress {
                X509_VERIFY_PARAM_set1_ip_asc(parameters, host)
            } else {
                X509_VERIFY_PARAM_set_hostflags(parameters, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS))
                SSL_set1_host(ssl, host)
            }
        }
        return ssl
    }

    static func isIPAddress(_ host: String) -> Bool {
        var buffer = in6_addr()
        return inet_pton(AF_INET, host, &buffer) == 1 || inet_pton(AF_INET6, host, &buffer) == 1
    }

    /// The oldest error on OpenSSL's queue of this thread, as text (queue cleared).
    static func openSSLError() -> String {
        var text = ""
        while case let code = ERR_get_error(), code != 0 {
            if text.isEmpty, let reason = ERR_reason_error_string(code) { text = String(cString: reason) }
        }
        return text.isEmpty ? "unknown error" : text
    }

    /// What went wrong in a handshake (or in the first reads after it: a TLS 1.3 server refuses
    /// a client certificate only then), in plain words with the option that fixes it.
    /// `certificateProblem`: a retry cannot fix it; spout stops when it happens at start.
    static func failure(_ ssl: OpaquePointer, code: Int32, savedErrno: Int32, peer: String, handshaking: Bool)
        -> (reason: String, certificateProblem: Bool)
    {
        let prefix = handshaking ? "TLS handshake with \(peer) failed: " : "TLS connection to \(peer) failed: "
        let verify = Int32(SSL_get_verify_result(ssl))
        var reasons: [Int32] = []
        var library = ""
        while case let error = ERR_get_error(), error != 0 {
            reasons.append(ERR_GET_REASON(error))
            if library.isEmpty, let text = ERR_reason_error_string(error) { library = String(cString: text) }
        }
        if handshaking, verify != X509_V_OK, reasons.contains(SSL_R_CERTIFICATE_VERIFY_FAILED) || code == SSL_ERROR_SSL {
            return (prefix + verificationProblem(verify), true)
        }
        for reason in reasons {
            switch reason {
            case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
                return (prefix + clientCertificateRequired, true)
            case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
                return (prefix + handshakeRefused, true)
            case SSL_R_TLSV1_ALERT_UNKNOWN_CA, SSL_R_SSLV3_ALERT_BAD_CERTIFICATE, SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN,
                 SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE, SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED, SSL_R_TLSV1_ALERT_ACCESS_DENIED:
                return (prefix + clientCertificateRefused(library), true)
            case SSL_R_WRONG_VERSION_NUMBER, SSL_R_PACKET_LENGTH_TOO_LONG, SSL_R_UNKNOWN_PROTOCOL:
                return (prefix + "the server does not speak TLS on this port: give its TLS port, or a plain-text URL scheme if it has no TLS", true)
            default: continue
            }
        }
        if code == SSL_ERROR_SYSCALL || code == SSL_ERROR_ZERO_RETURN || reasons.contains(SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            if savedErrno != 0, savedErrno != EPIPE, savedErrno != ECONNRESET {
                return ((handshaking ? prefix : "") + String(cString: strerror(savedErrno)), false)
            }
            return (handshaking ? prefix + "the server closed the connection during the handshake (is this its TLS port?)" : "the server closed the connection", false)
        }
        return (prefix + (library.isEmpty ? "unknown error" : library), handshaking)
    }

    // The words every TLS sink uses (its own TLS, libnats', librabbitmq's), kept in one place.
    package static let clientCertificateRequired = "the server requires a client certificate: give one with --sink-cert-file and --sink-key-file"
    package static let handshakeRefused = "the server refused the handshake (it may require a client certificate: --sink-cert-file and --sink-key-file)"

    package static func clientCertificateRefused(_ detail: String? = nil) -> String {
        "the server refused spout's client certificate\(detail.map { " (\($0))" } ?? ""): give one signed by a CA the server trusts with --sink-cert-file and --sink-key-file"
    }

    /// A server that closed the connection right after the handshake: a TLS 1.3 server that
    /// refused the client certificate (its alert lost to the reset), which of the two by whether one was given.
    package static func closedAfterHandshake(certificateGiven: Bool) -> String {
        "the server closed the connection after the handshake: " + (certificateGiven ? clientCertificateRefused() : clientCertificateRequired)
    }

    package static func caFileUnreadable(_ path: String, reason: String? = nil) -> String {
        "--sink-ca-file \(path): no CA certificate could be read from it\(reason.map { " (\($0))" } ?? ""): give a PEM file of CA certificates"
    }

    package static func certFileUnreadable(_ path: String, reason: String? = nil) -> String {
        "--sink-cert-file \(path): no certificate could be read from it\(reason.map { " (\($0))" } ?? ""): give a PEM certificate (chain)"
    }

    package static func keyFileUnreadable(_ path: String, reason: String? = nil) -> String {
        "--sink-key-file \(path): no private key could be read from it\(reason.map { " (\($0))" } ?? ""): give an unencrypted PEM private key"
    }

    package static let systemCAsUnreadable = "the system's CA certificates cannot be loaded: give them with --sink-ca-file"

    /// The verification result in plain words, with the fix.
    package static func verificationProblem(_ result: Int32) -> String {
        switch result {
        case X509_V_ERR_CERT_HAS_EXPIRED:
            return "the server's certificate has expired: renew it on the server"
        case X509_V_ERR_CERT_NOT_YET_VALID:
            return "the server's certificate is not valid yet: check the server's and this machine's clocks"
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
             X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, X509_V_ERR_CERT_UNTRUSTED:
            return "the server's certificate is signed by a CA spout does not trust: give that CA's certificate with --sink-ca-file"
        case X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH:
            return "the server's certificate is not valid for this host name: connect by a name the certificate lists"
        case X509_V_ERR_CERT_REVOKED:
            return "the server's certificate has been revoked"
        default:
            return "the server's certificate cannot be verified (\(String(cString: X509_verify_cert_error_string(Int(result))))): check --sink-ca-file"
        }
    }
}
