import ArgumentParser
import Foundation
import CoreMetrics
import SpoutCore
import SpoutObservability

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Relay the outbox to a sink; confirm to PostgreSQL only what the sink acknowledged.",
        discussion: """
            Creates the publication (publish = 'insert') and the slot when they are missing, unless --no-create. \
            Events go to the sink (stdout:// writes JSON lines to stdout); logs go to stderr. \
            SIGINT/SIGTERM stop reading, wait for acknowledgements, confirm, and exit 0. \
            A lost database connection is retried with backoff (--reconnect-timeout); a slot another client streams \
            from makes this instance a standby that takes over when it is released (--no-standby fails instead).
            """)

    @OptionGroup var relay: RelayOptions

    @Flag(name: .customLong("report-latency"), help: "On exit, print commit → acknowledgement latency percentiles to stderr.")
    var reportLatency = false

    @Flag(name: .customLong("check-config"), help: "Parse and check the configuration (flags, SPOUT_* variables, config file), print it with secrets masked, and exit without connecting.")
    var checkConfig = false

    var flags: Settings.Flags { relay.flags }

    func run() async throws {
        try await reportingErrors(flags) { settings in
            let log = try LogOptions.log(settings)
            var options = try RelayOptions.relay(settings)
            options.recordLatency = reportLatency
            // Every sink option too, before anything connects: a bad value never waits for the database.
            _ = try SinkOptionGroup.options(settings, maxInFlightEvents: options.maxInFlightEvents)
            let create = try !settings.flag(.noCreate)
            // issue 13: metrics and health
            let metricsAddress = try ObservabilityOptions.address(settings), unreadyAfter = try ObservabilityOptions.unreadyAfter(settings)
            var setup = try relay.database.setup(settings)
            var mapper = EventMapper(mapping: try MappingOptions.mapping(settings, table: setup.table))
            if checkConfig {
                try SinkOptionGroup.validate(settings, maxInFlightEvents: options.maxInFlightEvents)
                // Without a server: a failover slot is the default only on 17+.
                let failover = try settings.given(.failover).map { try $0.boolean() ? "true" : "false" } ?? "on for PostgreSQL 17+, off before"
                let lifecycle = [("on-slot-lost", try LostSlotOption.onSlotLost(settings, log: log).rawValue),
                                 ("snapshot", try LostSlotOption.snapshot(settings).rawValue), ("failover", failover),
                                 ("metrics-address", metricsAddress.map { "\($0.host):\($0.port)" } ?? "off"), ("unready-after", unreadyAfter == unreadyAfter.rounded() ? String(Int64(unreadyAfter)) : String(unreadyAfter))]
                print(ConfigurationReport.text(settings: settings, setup: setup, mapping: mapper.mapping, relay: options,
                                               sink: SinkOptionGroup.sink(settings).value, create: create, lifecycle: lifecycle))
                return
            }
            // Before the sink: it creates its metrics with the factory the server bootstraps.
            let health = RelayHealth()
            let server = try await ObservabilityOptions.start(settings, health: health, log: log)
            defer { server?.stop() }
            let sink = try SinkOptionGroup.makeSink(settings, maxInFlightEvents: options.maxInFlightEvents, log: log)
            defer { sink.close() }

            let connection = try relay.database.connect(settings, replication: true,
                                                          applicationName: PostgresConnection.applicationName("run"))
            try ReplicationSetup.checkServer(connection)
            setup.failover = try FailoverOption.enabled(settings, serverVersion: connection.serverVersion)
            let table = try setup.checkTable(connection)
            try relay.mapping.check(mapper, against: table)
            mapper.outboxOID = table.oid
            if try setup.ensurePublication(connection, create: create) {
                log.info("created publication \"\(setup.publication)\" for \(setup.table) (inserts only)",
                         metadata: ["publication": "\(setup.publication)", "table": "\(setup.table)"])
            }
            let (slot, created) = try SlotStartup.provideSlotStandingBy(setup, connection: connection, create: create, settings: settings,
                                                                        mapper: mapper, sink: sink, options: options, log: log)
            if slot.active, !options.standby {
                throw SpoutError.slotActive(slot: setup.slot, pid: slot.activePID ?? "?", client: slot.activeClient)
            }
            if created { log.info("created replication slot \"\(setup.slot)\"", metadata: ["slot": "\(setup.slot)"]) }
            // A slot held by another instance (this one waits as a standby) cannot be altered now.
            else if !slot.active { try setup.ensureFailover(connection, conninfo: settings.text(.databaseURL), enabled: setup.failover, log: log) }
            let confirmed = slot.confirmedFlush ?? .zero
            if let start = options.startLSN, start < confirmed {
                throw SpoutError.startBeforeSlot(start: start, slot: setup.slot, confirmed: confirmed)
            }
            if let end = options.endLSN, end < confirmed {
                throw SpoutError.invalidOption("--end-lsn \(end) is before what slot \"\(setup.slot)\" still holds (confirmed_flush_lsn \(confirmed)): "
                                               + "those transactions were delivered and confirmed, the slot cannot replay them; give an end at or after \(confirmed)")
            }
            if let start = options.startLSN,
               let text = try connection.query("SELECT pg_current_wal_insert_lsn()", context: "cannot read the WAL position").first?.first ?? nil,
               let current = LSN(text), start > current {
                // Confirming a position beyond the WAL would skip whatever is written up to it.
                throw SpoutError.invalidOption("--start-lsn \(start) is beyond the end of the WAL (\(current)): check the value")
            }
            let start = max(options.startLSN ?? confirmed, confirmed)
            let identity = try setup.identity(connection, tableOID: table.oid)
            let watch = PublicationWatch(conninfo: settings.text(.databaseURL), setup: setup, identity: identity, verified: start,
                                         markSlot: true, log: log)
            // From here on SIGINT/SIGTERM drain and confirm; before, they end spout at once (nothing was confirmed).
            let stop = StopSignal.forProcessSignals(log: log)
            // One loop reconnects after a lost connection and waits while another client holds the slot.
            let connector = ReplicationConnector(conninfo: settings.text(.databaseURL), setup: setup,
                                                 applicationName: PostgresConnection.applicationName("run"), log: log)
            var stream: ReplicationStream?
            if !slot.active {
                do {
                    stream = try ReplicationStream(connection: connection, slot: setup.slot, publication: setup.publication, start: start)
                } catch {
                    // Taken by another client since it was looked up: a standby waits for it.
                    guard case SpoutError.slotActive = error, options.standby else { throw error }
                }
            }
            if let stream {
                // A multi-host URL: which of its hosts this is.
                let reached = connection.target.contains(",") ? " (\(connection.server))" : ""
                log.info("streaming \(setup.table) from slot \"\(setup.slot)\" at \(start) on \(connection.target)\(reached) (pgoutput v\(stream.protocolVersion))",
                         metadata: ["slot": "\(setup.slot)", "lsn": "\(start)", "table": "\(setup.table)"])
            }
            watch.start()
            defer { watch.stop() }
            let lag = server.map { _ in LagWatch(conninfo: settings.text(.databaseURL), slot: setup.slot, sink: sink.metricsName, factory: MetricsSystem.factory) }
            lag?.start()
            defer { lag?.stop() }

            let relay = Relay(stream: stream, mapper: mapper, sink: sink, start: start, options: options, log: log, watch: watch,
                              connector: connector, health: health)
            let outcome = try await RelayService.run(relay, until: stop, log: log)
            log.info("\(outcome == .reachedEnd ? "reached --end-lsn" : "stopped"): delivered \(relay.statistics.events) events, confirmed up to \(relay.confirmed)",
                     metadata: ["slot": "\(setup.slot)", "lsn": "\(relay.confirmed)", "events": "\(relay.statistics.events)"])
            if reportLatency {
                log.info("latency commit→ack: \(relay.latency.summary)")
                log.info("latency commit→decoded: \(relay.decodeLatency.summary)")
            }
        }
    }
}

struct Tail: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print events as they commit, through a temporary slot that disappears on exit (for development).",
        discussion: "Uses the publication if it exists; otherwise creates a temporary one and drops it on exit.")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var mapping: MappingOptions
    @OptionGroup var logging: LogOptions

    @Option(name: .customLong("format"), help: ArgumentHelp("json or pretty (default: pretty on a terminal, json otherwise). [SPOUT_FORMAT]", valueName: "format"))
    var formatFlag: String?

    func run() async throws {
        try await reportingErrors(database.flags + mapping.flags + logging.flags + Settings.Flags(flags: [.format: formatFlag])) { settings in
            let log = try LogOptions.log(settings)
            let terminal = isatty(STDOUT_FILENO) == 1
            var format: StdoutSink.Format = terminal ? .pretty : .json
            if let text = settings.given(.format) {
                guard let chosen = StdoutSink.Format(rawValue: text.value) else { throw text.invalid("is not a format: use json or pretty") }
                format = chosen
            }
            var setup = try database.setup(settings)
            var mapper = EventMapper(mapping: try MappingOptions.mapping(settings, table: setup.table))
            let pid = ProcessInfo.processInfo.processIdentifier
            setup.slot = "spout_tail_\(pid)"
            let connection = try database.connect(settings, replication: true,
                                                    applicationName: PostgresConnection.applicationName("tail"))
            try ReplicationSetup.checkServer(connection)
            let table = try setup.checkTable(connection)
            try mapping.check(mapper, against: table)
            mapper.outboxOID = table.oid
            var temporaryPublication: String?
            if try ReplicationSetup.publicationExists(connection, name: setup.publication) == false {
                setup.publication = "spout_tail_\(pid)"
                try setup.ensurePublication(connection, create: true)
                temporaryPublication = setup.publication
                log.info("created temporary publication \"\(setup.publication)\" (dropped on exit)")
            } else {
                try setup.ensurePublication(connection, create: false)
            }
            defer {
                if let name = temporaryPublication {
                    // The replication connection may be gone (error): drop it over a fresh one.
                    let drop = "DROP PUBLICATION IF EXISTS \(SQL.identifier(name))"
                    if (try? connection.query(drop, context: "")) == nil {
                        _ = try? PostgresConnection(settings.text(.databaseURL)).query(drop, context: "")
                    }
                }
            }
            let start = try setup.createTemporarySlot(connection)
            let identity = try setup.identity(connection, tableOID: table.oid)
            let watch = PublicationWatch(conninfo: settings.text(.databaseURL), setup: setup, identity: identity, verified: start,
                                         markSlot: false, log: log)
            let stop = StopSignal.forProcessSignals(log: log)
            let stream = try ReplicationStream(connection: connection, slot: setup.slot, publication: setup.publication, start: start)
            log.info("tailing \(setup.table) on \(connection.target) from \(start); Ctrl-C stops",
                     metadata: ["slot": "\(setup.slot)", "lsn": "\(start)", "table": "\(setup.table)"])
            watch.start()
            defer { watch.stop() }

            let sink = StdoutSink(format: format, color: terminal && format == .pretty)
            defer { sink.close() }
            var options = Relay.Options()
            options.shutdownTimeout = .seconds(5)
            let relay = Relay(stream: stream, mapper: mapper, sink: sink, start: start, options: options, log: log, watch: watch)
            _ = try await RelayService.run(relay, until: stop, log: log)
        }
    }
}

/// `--shutdown-timeout`, `--reconnect-timeout`: seconds, fractions allowed, within `range`.
/// `--on-poison` with its `--dead-letter-topic`.
func poisonPolicy(_ settings: Settings) throws -> PoisonPolicy {
    let topic = settings.given(.deadLetterTopic)
    if let topic, topic.value.isEmpty { throw topic.invalid("is empty: name the topic dead letters go to") }
    var policy = PoisonPolicy.stop
    if let name = settings.given(.onPoison) {
        guard let chosen = PoisonPolicy(name: name.value, deadLetterTopic: topic?.value ?? PoisonPolicy.defaultDeadLetterTopic) else {
            throw name.invalid("is not stop, dead-letter or skip")
        }
        policy = chosen
    }
    // A topic nobody publishes to is a configuration mistake, not a choice.
    if let topic, case .deadLetter = policy {} else if let topic {
        throw topic.invalid("is used only with --on-poison dead-letter (the policy is \(policy.name)): add --on-poison dead-letter, or drop it")
    }
    return policy
}

func seconds(_ text: Sourced?, in range: ClosedRange<Double> = Limits.shutdownTimeoutSeconds) throws -> Duration? {
    try text.map { .milliseconds(Int((try $0.seconds(in: range) * 1000).rounded())) }
}

/// Every option of `spout run` that says how to relay (database, mapping, logging, sink,
/// window, lifecycle, poison events, metrics): `run` and `check` take the same ones.
struct RelayOptions: ParsableArguments {
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var mapping: MappingOptions
    @OptionGroup var logging: LogOptions

    @OptionGroup var sinkOptions: SinkOptionGroup

    @Option(name: .customLong("start-lsn"), help: ArgumentHelp(
        "Replay: skip transactions that committed before this LSN (X/X); must not be older than the slot's confirmed_flush_lsn. [SPOUT_START_LSN]",
        valueName: "lsn"))
    var startLSNFlag: String?

    @Option(name: .customLong("end-lsn"), help: ArgumentHelp(
        "Replay: exit 0 once every transaction committed up to this LSN (X/X) is delivered and confirmed. [SPOUT_END_LSN]",
        valueName: "lsn"))
    var endLSNFlag: String?

    @Flag(name: .customLong("no-create"), help: "Fail instead of creating a missing publication or slot. [SPOUT_NO_CREATE]")
    var noCreateFlag = false

    @OptionGroup var lostSlot: LostSlotOption
    @OptionGroup var failover: FailoverOption
    @OptionGroup var observability: ObservabilityOptions

    // Numbers are parsed by spout, not ArgumentParser: one error line naming the range and the
    // source, and `.unconditional` so that `--max-in-flight -1` is a value, not an option.
    @Option(name: .customLong("max-in-flight"), parsing: .unconditional, help: ArgumentHelp(
        "Events handed to the sink and not yet acknowledged, at most; \(Limits.maxInFlight.lowerBound) to \(Limits.maxInFlight.upperBound) (default: 10000). [SPOUT_MAX_IN_FLIGHT]",
        valueName: "n"))
    var maxInFlightFlag: String?

    @Option(name: .customLong("max-in-flight-bytes"), parsing: .unconditional, help: ArgumentHelp(
        "Bytes of unacknowledged events, at most; \(Limits.maxInFlightBytes.lowerBound) to \(Limits.maxInFlightBytes.upperBound) (default: 33554432). [SPOUT_MAX_IN_FLIGHT_BYTES]",
        valueName: "n"))
    var maxInFlightBytesFlag: String?

    @Option(name: .customLong("spool-memory-bytes"), parsing: .unconditional, help: ArgumentHelp(
        "Events waiting for their commit or the sink beyond this many bytes go to a temporary file; \(Limits.spoolMemoryBytes.lowerBound) to \(Limits.spoolMemoryBytes.upperBound) (default: 8388608). [SPOUT_SPOOL_MEMORY_BYTES]",
        valueName: "n"))
    var spoolMemoryBytesFlag: String?

    @Option(name: .customLong("shutdown-timeout"), parsing: .unconditional, help: ArgumentHelp(
        "Seconds to wait for acknowledgements on shutdown; 0 to 86400, fractions allowed (default: 30). [SPOUT_SHUTDOWN_TIMEOUT]",
        valueName: "seconds"))
    var shutdownTimeoutFlag: String?

    @Option(name: .customLong("reconnect-timeout"), parsing: .unconditional, help: ArgumentHelp(
        "After losing the database connection, exit non-zero if streaming does not resume within this many seconds; 0 exits at once; "
            + "\(Int(Limits.reconnectTimeoutSeconds.lowerBound)) to \(Int(Limits.reconnectTimeoutSeconds.upperBound)), fractions allowed (default: retry forever). [SPOUT_RECONNECT_TIMEOUT]",
        valueName: "seconds"))
    var reconnectTimeoutFlag: String?

    @Flag(name: .customLong("no-standby"), help: "Fail when another client streams from the slot, instead of waiting as a standby to take over. [SPOUT_NO_STANDBY]")
    var noStandbyFlag = false

    // issue 13: poison events and retries
    @Option(name: .customLong("on-poison"), help: ArgumentHelp(
        "An event that cannot be mapped or that the sink refuses for good: stop (after confirming what came before), "
            + "dead-letter (publish a record of it to --dead-letter-topic and go on) or skip (log and count it, go on) (default: stop). [SPOUT_ON_POISON]",
        valueName: "stop|dead-letter|skip"))
    var onPoisonFlag: String?

    @Option(name: .customLong("dead-letter-topic"), help: ArgumentHelp(
        "Where --on-poison dead-letter publishes, on the same sink (stdout: a JSON line on stderr) (default: \(PoisonPolicy.defaultDeadLetterTopic)). [SPOUT_DEAD_LETTER_TOPIC]",
        valueName: "topic"))
    var deadLetterTopicFlag: String?

    @Option(name: .customLong("max-retries"), parsing: .unconditional, help: ArgumentHelp(
        "Times an event the broker refuses for now (not an outage) is sent again before it is poison; "
            + "\(Limits.maxRetries.lowerBound) to \(Limits.maxRetries.upperBound) (default: retry forever). [SPOUT_MAX_RETRIES]",
        valueName: "n"))
    var maxRetriesFlag: String?

    var flags: Settings.Flags {
        database.flags + mapping.flags + logging.flags + sinkOptions.flags + lostSlot.flags + failover.flags + observability.flags
            + Settings.Flags(flags: [.startLSN: startLSNFlag, .endLSN: endLSNFlag, .maxInFlight: maxInFlightFlag,
                                     .maxInFlightBytes: maxInFlightBytesFlag, .spoolMemoryBytes: spoolMemoryBytesFlag,
                                     .shutdownTimeout: shutdownTimeoutFlag, .reconnectTimeout: reconnectTimeoutFlag,
                                     .onPoison: onPoisonFlag, .deadLetterTopic: deadLetterTopicFlag, .maxRetries: maxRetriesFlag],
                             switches: [.noCreate: noCreateFlag, .noStandby: noStandbyFlag])
    }

    /// The relay's options as `run` parses them, every value checked (its errors name where it
    /// was set); `check` parses the same, so it refuses what `run` would.
    static func relay(_ settings: Settings) throws -> Relay.Options {
        var options = Relay.Options()
        let startLSN = settings.given(.startLSN), endLSN = settings.given(.endLSN)
        options.startLSN = try parseLSN(startLSN)
        options.endLSN = try parseLSN(endLSN)
        if let start = options.startLSN, let end = options.endLSN, end < start, let endLSN, let startLSN {
            throw SpoutError.invalidOption("\(endLSN.display()) is before \(startLSN.display())")
        }
        options.maxInFlightEvents = try settings.integer(.maxInFlight, in: Limits.maxInFlight) ?? options.maxInFlightEvents
        options.maxInFlightBytes = try settings.integer(.maxInFlightBytes, in: Limits.maxInFlightBytes) ?? options.maxInFlightBytes
        options.spoolMemoryBytes = try settings.integer(.spoolMemoryBytes, in: Limits.spoolMemoryBytes) ?? options.spoolMemoryBytes
        options.shutdownTimeout = try seconds(settings.given(.shutdownTimeout)) ?? options.shutdownTimeout
        options.reconnectTimeout = try seconds(settings.given(.reconnectTimeout), in: Limits.reconnectTimeoutSeconds)
        options.standby = try !settings.flag(.noStandby)
        options.onPoison = try poisonPolicy(settings)
        options.maxRetries = try settings.integer(.maxRetries, in: Limits.maxRetries)
        return options
    }
}
