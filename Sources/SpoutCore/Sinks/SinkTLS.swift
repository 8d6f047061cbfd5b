// issue 15: TLS
/// How the sinks verify the servers they connect to over TLS (`rediss://`, `tls://`, `amqps://`,
/// `stomp+ssl://`, `https://`; Kafka with `security.protocol=ssl`) and the client certificate
/// they present. One set for every sink: `--sink-ca-file`, `--sink-cert-file`, `--sink-key-file`,
/// `--sink-insecure-skip-verify`. Verification of the chain and of the host name is on unless
/// `insecureSkipVerify`. The files are paths; their contents are never logged.
public struct SinkTLS: Sendable, Equatable {
    /// PEM CA certificates to trust instead of the system's (nil: the system's store).
    public var caFile: String?
    /// PEM client certificate (chain) for servers that require one; with `keyFile`.
    public var certFile: String?
    /// PEM private key of `certFile`.
    public var keyFile: String?
    /// Accept any certificate for any host: encryption without authentication. Logged as a warning.
    public var insecureSkipVerify = false

    public init(caFile: String? = nil, certFile: String? = nil, keyFile: String? = nil, insecureSkipVerify: Bool = false) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
        self.insecureSkipVerify = insecureSkipVerify
    }

    /// Whether any option was given (a plain-text sink with TLS options is a mistake worth a warning).
    public var isCustomized: Bool { caFile != nil || certFile != nil || keyFile != nil || insecureSkipVerify }

    /// The URL schemes of the TLS variants of the sinks (Kafka's TLS is `security.protocol`).
    public static let schemes: Set<String> = ["rediss", "tls", "nats+tls", "amqps", "stomp+ssl", "stomp+tls", "stomps", "https"]

    /// Whether `url`'s scheme is one of `schemes`.
    public static func isTLSScheme(_ url: String) -> Bool {
        guard let end = url.range(of: "://") else { return false }
        return schemes.contains(url[..<end.lowerBound].lowercased())
    }

    /// The warning `--sink-insecure-skip-verify` logs once at start.
    public static let insecureWarning =
        "--sink-insecure-skip-verify: sink TLS certificates and host names are NOT verified; anyone on the path can read and change events. Use --sink-ca-file instead."
}
