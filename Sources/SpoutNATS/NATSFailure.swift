import SpoutCore
import CNats

/// A failure reported by libnats: its status, the JetStream error code when the server sent
/// one, and the text. Never contains credentials (libnats reports hosts, not URLs with them).
struct NATSFailure: Error, Sendable, CustomStringConvertible {
    var status: natsStatus
    /// A JetStream API error code (`jsErrCode`), 0 when there is none.
    var errorCode: Int
    var text: String
    /// A TLS certificate problem (issue 15): stops spout at start, retried later.
    var certificateProblem = false

    init(status: natsStatus, errorCode: Int = 0, text: String? = nil) {
        self.status = status
        self.errorCode = errorCode
        self.text = text ?? Self.lastErrorText(status)
    }

    var description: String {
        errorCode == 0 ? text : "\(text) (JetStream error \(errorCode))"
    }

    /// Statuses that mean "the server is unreachable or did not answer in time": retried.
    var isConnectivityProblem: Bool {
        switch status {
        case NATS_CONNECTION_CLOSED, NATS_CONNECTION_DISCONNECTED, NATS_IO_ERROR, NATS_TIMEOUT, NATS_STALE_CONNECTION,
             NATS_NO_SERVER, NATS_NOT_YET_CONNECTED, NATS_DRAINING, NATS_SSL_ERROR, NATS_CONNECTION_AUTH_FAILED,
             NATS_SECURE_CONNECTION_REQUIRED, NATS_SECURE_CONNECTION_WANTED:
            true
        default:
            false
        }
    }

    /// The calling thread's last libnats error, without its `(file.c:123): ` origin.
    private static func lastErrorText(_ status: natsStatus) -> String {
        var lastStatus = NATS_OK
        if let pointer = nats_GetLastError(&lastStatus), lastStatus == status {
            var text = String(cString: pointer)
            if text.hasPrefix("("), let end = text.range(of: "): ") { text.removeSubrange(text.startIndex..<end.upperBound) }
            if !text.isEmpty { return text }
        }
        return String(cString: natsStatus_GetText(status))
    }
}
