import ArgumentParser
import Foundation
import SpoutCore
import SpoutSinks

/// The sink URL and the broker settings that go with it.
struct SinkOptionGroup: ParsableArguments {
    @Option(name: .customLong("sink"), help: ArgumentHelp(
        "Sink URL: stdout://, kafka://host:9092[,host:9092], redis://[:password@]host:6379[/db], nats://host:4222 (tls://host:4222 over TLS), amqp://user:password@host:5672/vhost (amqps://…:5671 over TLS), stomp://user:password@host:61613[/vhost], http://host:8080/path (default: stdout://); "
            + "NAME=URL, repeatable, for several sinks chosen per event by --route. [SPOUT_SINK: items separated by newlines or spaces]",
        valueName: "[name=]url"))
    var sinkFlags: [String] = []

    // issue 14: several sinks
    @Option(name: .customLong("route"), help: ArgumentHelp(
        "With several sinks: the sink NAME of each event, a template over columns or event headers like --topic (e.g. {destination}). [SPOUT_ROUTE]",
        valueName: "template"))
    var routeFlag: String?

    @Option(name: .customLong("default-route"), help: ArgumentHelp(
        "The sink of events whose --route renders empty or NULL (default: none, such an event is poison). [SPOUT_DEFAULT_ROUTE]", valueName: "name"))
    var defaultRouteFlag: String?

    @Option(name: .customLong("kafka-property"), help: ArgumentHelp(
        "A librdkafka property, passed through verbatim; repeatable (e.g. linger.ms=5). [SPOUT_KAFKA_PROPERTIES: name=value items separated by newlines or spaces]",
        valueName: "name=value"))
    var kafkaPropertyFlags: [String] = []

    @Option(name: .customLong("redis-maxlen"), parsing: .unconditional, help: ArgumentHelp(
        "Trim each stream with XADD MAXLEN ~ N; N from \(Limits.redisMaxLength.lowerBound) to \(Limits.redisMaxLength.upperBound). [SPOUT_REDIS_MAXLEN]",
        valueName: "n"))
    var redisMaxLengthFlag: String?

    @Option(name: .customLong("redis-ids"), help: ArgumentHelp(
        "Stream entry ids: server (*, time-based) or lsn (from the commit LSN: re-published events are rejected, exactly once) (default: server). [SPOUT_REDIS_IDS]",
        valueName: "server|lsn"))
    var redisIDsFlag: String?

    @Option(name: .customLong("nats-create-stream"), help: ArgumentHelp(
        "Create a JetStream stream of this name covering the topics when no stream does. [SPOUT_NATS_CREATE_STREAM]", valueName: "name"))
    var natsCreateStreamFlag: String?

    // issue 13: CloudEvents envelope
    @Option(name: .customLong("envelope"), help: ArgumentHelp(
        "none (events as they always were) or cloudevents (CloudEvents 1.0: structured JSON on stdout, binary mode on Kafka, NATS, Redis, AMQP, STOMP and HTTP) (default: none). [SPOUT_ENVELOPE]",
        valueName: "none|cloudevents"))
    var envelopeFlag: String?

    @Option(name: .customLong("ce-source"), help: ArgumentHelp(
        "The CloudEvents source attribute (default: /postgres/<database>/<table>). [SPOUT_CE_SOURCE]", valueName: "uri-reference"))
    var ceSourceFlag: String?

    // issue 14: AMQP sink
    @Option(name: .customLong("amqp-exchange"), help: ArgumentHelp(
        "The exchange AMQP events are published to, routing key = topic (default: outbox, a topic exchange). [SPOUT_AMQP_EXCHANGE]", valueName: "name"))
    var amqpExchangeFlag: String?

    @Flag(name: .customLong("amqp-declare"), help: "Declare the AMQP exchange (a durable topic exchange) instead of requiring it to exist. [SPOUT_AMQP_DECLARE]")
    var amqpDeclareFlag = false

    // issue 14: STOMP
    @Option(name: .customLong("stomp-destination"), help: ArgumentHelp(
        "STOMP destination of each event, a template over {topic}, {key}, {type}, {id} or an event header (default: /topic/{topic}). [SPOUT_STOMP_DESTINATION]",
        valueName: "template"))
    var stompDestinationFlag: String?

    // issue 14: HTTP
    @Option(name: .customLong("http-batch"), parsing: .unconditional, help: ArgumentHelp(
        "Events per HTTP request: 1 posts each event alone, more a JSON array; \(Limits.httpBatch.lowerBound) to \(Limits.httpBatch.upperBound) (default: 1). [SPOUT_HTTP_BATCH]",
        valueName: "n"))
    var httpBatchFlag: String?

    @Option(name: .customLong("http-timeout"), parsing: .unconditional, help: ArgumentHelp(
        "Seconds an HTTP request may take before it is retried; \(Int(Limits.httpTimeoutSeconds.lowerBound)) to \(Int(Limits.httpTimeoutSeconds.upperBound)) (default: 30). [SPOUT_HTTP_TIMEOUT]",
        valueName: "seconds"))
    var httpTimeoutFlag: String?

    @Option(name: .customLong("http-concurrency"), parsing: .unconditional, help: ArgumentHelp(
        "HTTP requests in flight at once, one per keep-alive connection, events of one key on one connection; \(Limits.httpConcurrency.lowerBound) to \(Limits.httpConcurrency.upperBound) (default: 4). [SPOUT_HTTP_CONCURRENCY]",
        valueName: "n"))
    var httpConcurrencyFlag: String?

    @Option(name: .customLong("http-secret"), help: ArgumentHelp(
        "Sign HTTP requests per Standard Webhooks with this secret (whsec_ + base64). [SPOUT_HTTP_SECRET]", valueName: "whsec_…"))
    var httpSecretFlag: String?

    @Option(name: .customLong("http-header"), help: ArgumentHelp(
        "A header added to every HTTP request (e.g. 'Authorization: Bearer …'); repeatable. [SPOUT_HTTP_HEADER: one per line]",
        valueName: "Name: value"))
    var httpHeaderFlags: [String] = []

    // issue 15: TLS
    @Option(name: .customLong("sink-ca-file"), help: ArgumentHelp(
        "PEM file of the CA certificates that sign the sinks' TLS certificates (rediss://, tls://, amqps://, stomp+ssl://, https://, Kafka with security.protocol=ssl) (default: the system's). [SPOUT_SINK_CA_FILE]",
        valueName: "path"))
    var sinkCAFileFlag: String?

    @Option(name: .customLong("sink-cert-file"), help: ArgumentHelp(
        "PEM client certificate for sinks that require one; with --sink-key-file. [SPOUT_SINK_CERT_FILE]", valueName: "path"))
    var sinkCertFileFlag: String?

    @Option(name: .customLong("sink-key-file"), help: ArgumentHelp(
        "PEM private key of --sink-cert-file. [SPOUT_SINK_KEY_FILE]", valueName: "path"))
    var sinkKeyFileFlag: String?

    @Flag(name: .customLong("sink-insecure-skip-verify"), help: "Do not verify sink TLS certificates or host names (encrypted, not authenticated; logs a warning). [SPOUT_SINK_INSECURE_SKIP_VERIFY]")
    var sinkInsecureSkipVerifyFlag = false

    var flags: Settings.Flags {
        Settings.Flags(flags: [.route: routeFlag, .defaultRoute: defaultRouteFlag, .redisMaxLength: redisMaxLengthFlag, .redisIDs: redisIDsFlag,
                               .natsCreateStream: natsCreateStreamFlag, .envelope: envelopeFlag, .ceSource: ceSourceFlag,
                               .amqpExchange: amqpExchangeFlag, .stompDestination: stompDestinationFlag,
                               .httpBatch: httpBatchFlag, .httpTimeout: httpTimeoutFlag, .httpConcurrency: httpConcurrencyFlag, .httpSecret: httpSecretFlag,
                               .sinkCAFile: sinkCAFileFlag, .sinkCertFile: sinkCertFileFlag, .sinkKeyFile: sinkKeyFileFlag],
                       lists: [.kafkaProperty: kafkaPropertyFlags, .httpHeader: httpHeaderFlags, .sink: sinkFlags], switches: [.amqpDeclare: amqpDeclareFlag, .sinkInsecureSkipVerify: sinkInsecureSkipVerifyFlag])
    }

    /// The options alone, checked: run validates them all before it connects anywhere.
    static func options(_ settings: Settings, maxInFlightEvents: Int) throws -> SinkOptions {
        var options = SinkOptions()
        options.maxInFlightEvents = maxInFlightEvents
        for property in settings.values(.kafkaProperty) {
            // Never echo the item: `sasl.password:secret` (":" for "=") is all secret after the name.
            guard let equals = property.value.firstIndex(of: "="), equals != property.value.startIndex else {
                // librdkafka names are lower case: a glued-on value (`sasl.passwordHunter2`) is cut off,
                // and a secret-looking name is not shown at all.
                let name = property.value.prefix { ($0.isLowercase || $0.isNumber || "._-".contains($0)) && $0.isASCII }
                let shown = name.isEmpty || Redaction.isSecretName(String(name)) ? "a secret or malformed property" : "\"\(name)…\""
                throw property.invalidWithoutValue("\(shown) is not name=value (e.g. linger.ms=5)")
            }
            options.kafkaProperties.append((String(property.value[..<equals]), String(property.value[property.value.index(after: equals)...])))
        }
        options.redisMaxLength = try settings.integer(.redisMaxLength, in: Limits.redisMaxLength)
        if let text = settings.given(.redisIDs) {
            guard let ids = SinkOptions.RedisIDs(rawValue: text.value) else { throw text.invalid("is not server or lsn") }
            options.redisIDs = ids
        }
        options.natsCreateStream = settings.given(.natsCreateStream)?.value
        options.cloudEvents = try cloudEvents(settings)
        // issue 14: AMQP sink
        if let exchange = settings.given(.amqpExchange) { options.amqpExchange = exchange.value }
        options.amqpDeclare = try settings.flag(.amqpDeclare)
        if let destination = settings.given(.stompDestination) { options.stompDestination = destination.value } // issue 14: STOMP
        // issue 14: HTTP
        options.httpBatch = try settings.integer(.httpBatch, in: Limits.httpBatch) ?? options.httpBatch
        options.httpConcurrency = try settings.integer(.httpConcurrency, in: Limits.httpConcurrency) ?? options.httpConcurrency
        options.httpTimeout = try seconds(settings.given(.httpTimeout), in: Limits.httpTimeoutSeconds) ?? options.httpTimeout
        options.httpSecret = settings.given(.httpSecret)?.value
        for header in settings.values(.httpHeader) {
            // Never echo the value: it is usually a token.
            guard let colon = header.value.firstIndex(of: ":"), colon != header.value.startIndex else {
                throw header.invalidWithoutValue("is not 'Name: value' (e.g. 'Authorization: Bearer …')")
            }
            options.httpHeaders.append((String(header.value[..<colon]).trimmingCharacters(in: .whitespaces),
                                        String(header.value[header.value.index(after: colon)...]).trimmingCharacters(in: .whitespaces)))
        }
        options.tls = try tls(settings) // issue 15: TLS
        return options
    }

    // issue 15: TLS
    /// The sinks' TLS settings, the files checked now: a missing or unreadable file is a start
    /// error naming the option, not a handshake failure later. The files' contents are never shown.
    static func tls(_ settings: Settings) throws -> SinkTLS {
        var tls = SinkTLS()
        func readable(_ setting: Setting) throws -> String? {
            guard let file = settings.given(setting) else { return nil }
            guard !file.value.isEmpty else { throw file.invalid("is empty: give the path of a PEM file") }
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: file.value, isDirectory: &isDirectory), !isDirectory.boolValue else {
                throw file.invalid("is not a file: give the path of a PEM file")
            }
            guard FileManager.default.isReadableFile(atPath: file.value) else { throw file.invalid("cannot be read: check its permissions") }
            return file.value
        }
        tls.caFile = try readable(.sinkCAFile)
        tls.certFile = try readable(.sinkCertFile)
        tls.keyFile = try readable(.sinkKeyFile)
        if tls.certFile != nil, tls.keyFile == nil, let cert = settings.given(.sinkCertFile) {
            throw cert.invalidWithoutValue("needs --sink-key-file, the certificate's private key")
        }
        if tls.keyFile != nil, tls.certFile == nil, let key = settings.given(.sinkKeyFile) {
            throw key.invalidWithoutValue("needs --sink-cert-file, the certificate the key belongs to")
        }
        tls.insecureSkipVerify = try settings.flag(.sinkInsecureSkipVerify)
        return tls
    }

    // issue 13: CloudEvents envelope
    /// The envelope of `--envelope cloudevents` with its source; nil for `none`.
    static func cloudEvents(_ settings: Settings) throws -> CloudEventEnvelope? {
        let source = settings.given(.ceSource)
        guard let envelope = settings.given(.envelope), envelope.value != "none" else {
            if let source { throw source.invalid("needs --envelope cloudevents (without the envelope there is no source attribute)") }
            return nil
        }
        guard envelope.value == "cloudevents" else { throw envelope.invalid("is not none or cloudevents") }
        if let source {
            // A URI-reference: not empty, and nothing a header or field could not carry.
            guard !source.value.isEmpty, !source.value.unicodeScalars.contains(where: { $0.value <= 0x20 || (0x7F...0x9F).contains($0.value) }) else {
                throw source.invalid("is not a URI-reference: give a non-empty value without spaces or control characters (e.g. /postgres/shop/outbox)")
            }
            return CloudEventEnvelope(source: source.value)
        }
        let database = PostgresConnection.databaseName(settings.text(.databaseURL))
        return CloudEventEnvelope(source: CloudEventEnvelope.defaultSource(database: database, table: try DatabaseOptions.table(settings)))
    }

    /// The (first) sink URL in effect (stdout:// by default).
    static func sink(_ settings: Settings) -> Sourced {
        (try? sinks(settings).first?.url) ?? Sourced(setting: .sink, value: "stdout://", origin: .flag)
    }

    // issue 14: several sinks
    /// A sink of `--sink [NAME=]URL`: its name (the URL's scheme when not given) and its URL.
    struct NamedSink {
        var name: String
        var url: Sourced
        var named: Bool
    }

    /// Every `--sink`, in order, names checked: [a-z0-9_-]+ and unique.
    static func sinks(_ settings: Settings) throws -> [NamedSink] {
        var items = settings.values(.sink)
        if items.isEmpty { items = [Sourced(setting: .sink, value: "stdout://", origin: .flag)] }
        var sinks: [NamedSink] = []
        for item in items {
            var url = item
            var name: String
            var named = false
            let scheme = item.value.range(of: "://")
            if let equals = item.value.firstIndex(of: "="), scheme.map({ equals < $0.lowerBound }) ?? true {
                name = String(item.value[..<equals])
                url.value = String(item.value[item.value.index(after: equals)...])
                named = true
                guard !name.isEmpty, name.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }) else {
                    throw item.invalidWithoutValue("\"\(name.count > 40 ? String(name.prefix(40)) + "…" : name)\" is not a sink name: use lower-case letters, digits, _ and - (--sink orders=kafka://host:9092)")
                }
            } else {
                name = scheme.map { item.value[..<$0.lowerBound].lowercased() } ?? item.value
            }
            if let other = sinks.first(where: { $0.name == name }) {
                throw item.invalidWithoutValue("two sinks are named \"\(name)\"\(other.named && named ? "" : " (an unnamed --sink is named by its scheme)"): give each its own name, --sink NAME=URL")
            }
            sinks.append(NamedSink(name: name, url: url, named: named))
        }
        return sinks
    }

    /// `--route` parsed (the mapping renders it per event).
    static func route(_ settings: Settings) throws -> TopicTemplate? {
        guard let route = settings.given(.route) else { return nil }
        do { return try TopicTemplate(route.value) } catch { throw route.invalid("is not a template: \(error.description)") }
    }

    /// Several sinks need `--route`; `--default-route` needs it and names a sink. Returns whether events are routed.
    private static func checkRoute(_ settings: Settings, sinks: [NamedSink]) throws -> Bool {
        guard try route(settings) != nil else {
            if sinks.count > 1 {
                throw SpoutError.invalidOption("\(sinks.count) sinks (\(sinks.map(\.name).joined(separator: ", "))) need --route to pick one per event: "
                                               + "a template over a column or an event header, e.g. --route {destination}")
            }
            if let fallback = settings.given(.defaultRoute) { throw fallback.invalid("needs --route") }
            return false
        }
        if let fallback = settings.given(.defaultRoute), !sinks.contains(where: { $0.name == fallback.value }) {
            throw fallback.invalid("is not a sink: name one of \(sinks.map(\.name).joined(separator: ", "))")
        }
        return true
    }

    /// Everything `makeSink` checks, without connecting.
    static func validate(_ settings: Settings, maxInFlightEvents: Int) throws {
        let options = try options(settings, maxInFlightEvents: maxInFlightEvents)
        let sinks = try sinks(settings)
        for sink in sinks {
            do { try SinkRegistry.validate(sink.url.value, options: options) } catch { throw relabelled(error, sink: sink.url, settings: settings) }
        }
        _ = try checkRoute(settings, sinks: sinks)
    }

    static func makeSink(_ settings: Settings, maxInFlightEvents: Int, log: Log) throws -> Sink {
        let options = try options(settings, maxInFlightEvents: maxInFlightEvents)
        let sinks = try sinks(settings)
        let routed = try checkRoute(settings, sinks: sinks)
        // issue 15: TLS
        if options.tls.insecureSkipVerify { log.warning(SinkTLS.insecureWarning) }
        if options.tls.isCustomized, !sinks.contains(where: { SinkTLS.isTLSScheme($0.url.value) || $0.url.value.lowercased().hasPrefix("kafka") }) {
            log.warning("the --sink-* TLS options are unused: no sink URL uses TLS (rediss://, tls://, amqps://, stomp+ssl://, https://)")
        }
        var members: [RoutedSink.Member] = []
        for sink in sinks {
            do {
                members.append(RoutedSink.Member(name: sink.name, sink: try SinkRegistry.makeSink(sink.url.value, options: options, log: log)))
            } catch {
                for member in members { member.sink.close() }
                throw relabelled(error, sink: sink.url, settings: settings)
            }
        }
        // One sink without --route: that sink itself, as always.
        guard routed || members.count > 1 else { return members[0].sink }
        return try RoutedSink(members: members, defaultRoute: settings.given(.defaultRoute)?.value, expectedInFlight: maxInFlightEvents, log: log)
    }

    /// The sink's own errors name `--sink` or `--kafka-property NAME`: name the variable or
    /// file line instead when the value came from there.
    private static func relabelled(_ error: Error, sink: Sourced, settings: Settings) -> Error {
        guard let error = error as? SpoutError, case let .invalidOption(message) = error else { return error }
        if message.hasPrefix(Setting.sink.flag) { return sink.relabel(error) }
        if message.hasPrefix(Setting.httpSecret.flag + ":") { return settings.given(.httpSecret)?.relabel(error) ?? error } // issue 14: HTTP
        if message.hasPrefix(Setting.stompDestination.flag) { return settings.given(.stompDestination)?.relabel(error) ?? error } // issue 14: STOMP
        let prefix = Setting.kafkaProperty.flag + " "
        guard message.hasPrefix(prefix) else { return error }
        let name = message.dropFirst(prefix.count).prefix { $0 != ":" && $0 != " " }
        return settings.values(.kafkaProperty).first { $0.value.hasPrefix(name + "=") }?.relabel(error) ?? error
    }
}
