import ArgumentParser
import CoreMetrics
import Foundation
import SpoutCore
import SpoutObservability

/// issue 13: `--metrics-address` and `--unready-after` for `spout run`.
struct ObservabilityOptions: ParsableArguments {
    @Option(name: .customLong("metrics-address"), help: ArgumentHelp(
        "Serve /metrics (Prometheus), /healthz and /readyz on HOST:PORT, e.g. 127.0.0.1:9187 (default: off). [SPOUT_METRICS_ADDRESS]",
        valueName: "host:port"))
    var metricsAddressFlag: String?

    @Option(name: .customLong("unready-after"), parsing: .unconditional, help: ArgumentHelp(
        "/readyz answers 503 once the sink has been unavailable this many seconds; \(Int(Limits.unreadyAfterSeconds.lowerBound)) to "
            + "\(Int(Limits.unreadyAfterSeconds.upperBound)), fractions allowed (default: 30). [SPOUT_UNREADY_AFTER]",
        valueName: "seconds"))
    var unreadyAfterFlag: String?

    var flags: Settings.Flags { Settings.Flags(flags: [.metricsAddress: metricsAddressFlag, .unreadyAfter: unreadyAfterFlag]) }

    /// The metrics address, when one is given.
    static func address(_ settings: Settings) throws(SpoutError) -> (host: String, port: Int)? {
        guard let text = settings.given(.metricsAddress) else { return nil }
        guard let address = parseAddress(text.value) else {
            throw text.invalid("is not an address: use HOST:PORT with a port from 0 to 65535, e.g. 127.0.0.1:9187 or [::1]:9187")
        }
        return address
    }

    /// `HOST:PORT` or `[IPv6]:PORT`; nil when malformed.
    static func parseAddress(_ text: String) -> (host: String, port: Int)? {
        let text = text.trimmingCharacters(in: .whitespaces)
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains(" "), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        return (host, port)
    }

    /// `--unready-after` in seconds (default 30).
    static func unreadyAfter(_ settings: Settings) throws(SpoutError) -> Double {
        try settings.given(.unreadyAfter)?.seconds(in: Limits.unreadyAfterSeconds) ?? 30
    }

    /// With `--metrics-address`: bootstraps swift-metrics with the Prometheus factory (before
    /// the sink and relay create their metrics) and starts the server. Nil without one.
    static func start(_ settings: Settings, health: RelayHealth, log: Log) async throws(SpoutError) -> ObservabilityServer? {
        let unreadyAfter = try unreadyAfter(settings)
        guard let (host, port) = try address(settings) else { return nil }
        let factory = SpoutMetricsFactory(health: health)
        let server = try await ObservabilityServer.start(host: host, port: port, registry: factory.registry, health: health,
                                                         unreadyAfter: unreadyAfter, logger: log.logger)
        MetricsSystem.bootstrap(factory)
        let shown = host.contains(":") ? "[\(host)]" : host
        log.info("serving /metrics, /healthz and /readyz on http://\(shown):\(server.port)")
        return server
    }
}
