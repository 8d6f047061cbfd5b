import ArgumentParser
import Foundation
import SpoutCore
import SpoutSinks

/// `spout check`: everything a run needs, as a checklist with the fix for each failure. It
/// takes `run`'s options (flags, SPOUT_* variables, config file), so `spout run …` becomes
/// `spout check …`; it looks and creates nothing.
struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check everything spout run needs (PostgreSQL, role, table, publication, slot, sink) and print a checklist with the fix for each failure.",
        discussion: """
            Takes the options of spout run (flags, SPOUT_* variables, config file) and changes nothing. \
            Each line is ✓ (passes), ✗ (fails, with its fix), ! (a warning that does not fail) or - (skipped: an earlier check failed). \
            Exits 0 when nothing fails, 1 when something does, 64 for a bad option. Connecting gives up after 10 s (PostgreSQL) or 5 s (the sink).
            """)

    /// Every option of `run` but --check-config and --report-latency, parsed by `run`'s own groups.
    @OptionGroup var relay: RelayOptions

    @Flag(name: .customLong("json"), help: "Print one JSON object: {\"ok\": …, \"checks\": [{\"name\", \"status\": pass|fail|warn|skip, \"detail\", \"fix\"}]}.")
    var json = false

    func run() async throws {
        var failed = false
        try await reportingErrors(relay.flags) { settings in
            // The options run reads before it connects, with run's errors for bad values.
            _ = try LogOptions.log(settings)
            let maxInFlight = try RelayOptions.relay(settings).maxInFlightEvents
            try Self.validateLifecycleOptions(settings)
            // The sink's URL and options as run checks them (its messages name where each was set).
            try SinkOptionGroup.validate(settings, maxInFlightEvents: maxInFlight)
            let sinkOptions = try SinkOptionGroup.options(settings, maxInFlightEvents: maxInFlight)
            let sink = SinkOptionGroup.sink(settings)
            let setup = try relay.database.setup(settings)
            let mapping = try MappingOptions.mapping(settings, table: setup.table)
            var database = DatabaseChecks(conninfo: settings.text(.databaseURL), setup: setup, mapper: EventMapper(mapping: mapping))
            database.create = try !settings.flag(.noCreate)
            database.standby = try !settings.flag(.noStandby)
            database.onLost = try LostSlotOption.onSlotLost(settings, log: Log(level: .error))
            database.bytes = formatBytes
            let databaseResults: [CheckResult]
            do { databaseResults = try database.run() } catch let SpoutError.invalidOption(message) {
                throw SpoutError.invalidOption((settings.given(.databaseURL).map { $0.label + ": " } ?? "") + message)
            }
            // issue 14: several sinks: one set of sink lines each, prefixed with its name.
            let sinks = try SinkOptionGroup.sinks(settings)
            var sinkResults: [CheckResult] = []
            for named in sinks {
                do {
                    let results = try SinkRegistry.check(named.url.value, options: sinkOptions, topic: mapping.topic)
                    sinkResults += sinks.count == 1 ? results : results.map { var result = $0; result.name = named.name + " " + result.name; return result }
                } catch let error as SpoutError {
                    throw named.url.relabel(error)
                }
            }
            let shownSink = sinks.count == 1 ? SinkURL.redacted(sink.value) : sinks.map { $0.name + "=" + SinkURL.redacted($0.url.value) }.joined(separator: ", ")
            let results = databaseResults + sinkResults
            failed = results.contains { $0.status == .fail }
            let text = json ? Self.json(results) : Self.text(results, database: Redaction.url(settings.text(.databaseURL)), sink: shownSink)
            print(Redaction.scrub(text, secrets: Settings.secrets))
        }
        if failed { throw ExitCode(1) }
    }

    /// The rest of what `run` parses before connecting (the relay's own options are
    /// `RelayOptions.relay`): a value run would refuse is a usage error here too.
    static func validateLifecycleOptions(_ settings: Settings) throws {
        _ = try LostSlotOption.snapshot(settings)
        _ = try settings.given(.failover)?.boolean()
        _ = try ObservabilityOptions.address(settings)
        _ = try ObservabilityOptions.unreadyAfter(settings)
    }

    static func symbol(_ status: CheckResult.Status) -> String {
        switch status {
        case .pass: "✓"
        case .fail: "✗"
        case .warn: "!"
        case .skip: "-"
        }
    }

    static func text(_ results: [CheckResult], database: String, sink: String) -> String {
        var lines = ["spout check: \(database) → \(sink)"]
        for result in results {
            let detail = result.status == .skip ? "skipped: " + result.detail : result.detail
            lines.append("\(symbol(result.status)) \(result.name.padding(toLength: 17, withPad: " ", startingAt: 0)) \(Log.escaped(detail))")
            if let fix = result.fix, result.status == .fail || result.status == .warn { lines.append("    fix: \(Log.escaped(fix))") }
        }
        func count(_ status: CheckResult.Status) -> Int { results.count { $0.status == status } }
        var summary = ["\(count(.pass)) passed", "\(count(.warn)) warning\(count(.warn) == 1 ? "" : "s")"]
        if count(.skip) > 0 { summary.append("\(count(.skip)) skipped") }
        let failures = count(.fail)
        lines.append(failures == 0 ? "ready: " + summary.joined(separator: ", ")
                                   : "not ready: \(failures) failed, " + summary.joined(separator: ", "))
        return lines.joined(separator: "\n")
    }

    static func json(_ results: [CheckResult]) -> String {
        let checks = results.map { result in
            JSONWriter.object([("name", .string(result.name)), ("status", .string(result.status.rawValue)),
                               ("detail", .string(result.detail)), ("fix", result.fix.map { .string($0) } ?? .null)])
        }
        let ok = !results.contains { $0.status == .fail }
        return "{\"ok\":\(ok),\"checks\":[\(checks.joined(separator: ","))]}"
    }
}
