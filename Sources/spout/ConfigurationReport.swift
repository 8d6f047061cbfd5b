import Foundation
import SpoutCore

/// What `spout run --check-config` prints: the configuration in effect, one `name = value`
/// line each, with every password, token and secret property masked.
enum ConfigurationReport {
    static func text(settings: Settings, setup: ReplicationSetup, mapping: OutboxMapping, relay: Relay.Options,
                     sink: String, create: Bool, lifecycle: [(String, String)] = []) -> String {
        let columns = mapping.columns
        let sinks = (try? SinkOptionGroup.sinks(settings)) ?? [] // issue 14: several sinks
        var lines: [(String, String)] = [
            ("database-url", Redaction.url(settings.text(.databaseURL))),
            ("table", setup.table.description), ("publication", setup.publication), ("slot", setup.slot),
            ("topic", mapping.topic.description), ("id-column", columns.id), ("aggregate-type-column", columns.aggregateType),
            ("aggregate-id-column", columns.aggregateID), ("event-type-column", columns.eventType),
            ("payload-column", columns.payload), ("headers-column", columns.headers), ("message-prefix", mapping.messagePrefix),
            ("sink", SinkURL.redacted(sink)), ("no-create", create ? "false" : "true"),
            ("max-in-flight", String(relay.maxInFlightEvents)), ("max-in-flight-bytes", String(relay.maxInFlightBytes)),
            ("spool-memory-bytes", String(relay.spoolMemoryBytes)), ("shutdown-timeout", relay.shutdownTimeout.description),
        ]
        if let start = relay.startLSN { lines.append(("start-lsn", start.description)) }
        if let end = relay.endLSN { lines.append(("end-lsn", end.description)) }
        // issue 12: reconnect and standby
        lines.append(("reconnect-timeout", relay.reconnectTimeout?.description ?? "none (retry forever)"))
        lines.append(("no-standby", relay.standby ? "false" : "true"))
        // issue 13: poison events and retries
        lines.append(("on-poison", relay.onPoison.name))
        if case let .deadLetter(topic) = relay.onPoison { lines.append(("dead-letter-topic", topic)) }
        lines.append(("max-retries", relay.maxRetries.map(String.init) ?? "none (retry forever)"))
        // issue 13: CloudEvents envelope (checked with the sink options before the report)
        let cloudEvents = try? SinkOptionGroup.cloudEvents(settings)
        lines.append(("envelope", cloudEvents == nil ? "none" : "cloudevents"))
        if let cloudEvents { lines.append(("ce-source", cloudEvents.source)) }
        // issue 14: AMQP sink
        let urls = sinks.isEmpty ? [sink] : sinks.map(\.url.value) // issue 14: several sinks
        if urls.contains(where: { ["amqp", "amqps"].contains($0.split(separator: ":").first?.lowercased()) }) {
            lines.append(("amqp-exchange", settings.given(.amqpExchange)?.value ?? SinkOptions().amqpExchange))
            lines.append(("amqp-declare", (try? settings.flag(.amqpDeclare)) == true ? "true" : "false"))
        }
        // issue 14: STOMP
        if urls.contains(where: { $0.lowercased().hasPrefix("stomp") }) {
            lines.append(("stomp-destination", settings.given(.stompDestination)?.value ?? SinkOptions().stompDestination))
        }
        // issue 14: HTTP (the secret and header values masked)
        if urls.contains(where: { ["http", "https"].contains($0.split(separator: ":").first?.lowercased()) }) {
            let options = try? SinkOptionGroup.options(settings, maxInFlightEvents: relay.maxInFlightEvents)
            let defaults = SinkOptions()
            lines.append(("http-batch", String(options?.httpBatch ?? defaults.httpBatch)))
            lines.append(("http-timeout", (options?.httpTimeout ?? defaults.httpTimeout).description))
            lines.append(("http-concurrency", String(options?.httpConcurrency ?? defaults.httpConcurrency)))
            lines.append(("http-secret", settings.given(.httpSecret) == nil ? "none (unsigned)" : "******"))
            for header in options?.httpHeaders ?? [] { lines.append(("http-header", "\(header.name): ******")) }
        }
        // issue 15: TLS (paths only; the files are never read into the report)
        if let tls = try? SinkOptionGroup.tls(settings), tls.isCustomized {
            lines.append(("sink-ca-file", tls.caFile ?? "none (the system's CAs)"))
            lines.append(("sink-cert-file", tls.certFile ?? "none"))
            lines.append(("sink-key-file", tls.keyFile ?? "none"))
            lines.append(("sink-insecure-skip-verify", tls.insecureSkipVerify ? "true (certificates are NOT verified)" : "false"))
        }
        // issue 14: several sinks: a sink line each (name=url), the route and its default.
        let route = settings.given(.route)
        if sinks.count > 1 || route != nil, let index = lines.firstIndex(where: { $0.0 == "sink" }) {
            lines.replaceSubrange(index...index, with: sinks.map { ("sink", $0.name + "=" + SinkURL.redacted($0.url.value)) })
            lines.append(("route", route?.value ?? ""))
            lines.append(("default-route", settings.given(.defaultRoute)?.value ?? "none (an empty route is poison)"))
        }
        lines += lifecycle
        return "# spout run configuration (secrets masked); the configuration is valid\n"
            + lines.map { "\($0.0) = \(Log.escaped($0.1))" }.joined(separator: "\n")
    }
}
