/// Sinks are named by URL (`stdout://`, later `kafka://`, `redis://`, `nats://`).
public enum SinkURL {
    public static func makeSink(_ url: String) throws(SpoutError) -> Sink {
        guard let schemeEnd = url.range(of: "://") else {
            throw .invalidOption("--sink \(redacted(url)) is not a sink URL: use stdout://")
        }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        switch scheme {
        case "stdout":
            return StdoutSink()
        case "kafka", "redis", "nats":
            throw .invalidOption("the \(scheme) sink is not available in this build yet: use stdout://")
        default:
            throw .invalidOption("unknown sink \"\(scheme)://\": use stdout://")
        }
    }

    /// The URL without a password (`redis://:secret@host` → `redis://:***@host`).
    public static func redacted(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"), let at = url[schemeEnd.upperBound...].lastIndex(of: "@") else { return url }
        let credentials = url[schemeEnd.upperBound..<at]
        guard let colon = credentials.firstIndex(of: ":") else { return url }
        return String(url[..<url.index(after: colon)]) + "***" + String(url[at...])
    }
}
