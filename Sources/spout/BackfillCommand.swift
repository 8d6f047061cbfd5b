import ArgumentParser
import Foundation
import SpoutCore

struct Backfill: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-publish outbox rows from the table through the sink (no slot), marked source = backfill.",
        discussion: """
            Rows go out in primary-key order, a batch at a time; a batch counts as done once the sink acknowledged \
            all of it. Progress goes to stderr (a bar on a terminal, a line every few seconds otherwise) and names \
            the last key done. SIGINT/SIGTERM stop after the current batch's acknowledgements and print the \
            --after key to resume from (exit status 130).
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var mapping: MappingOptions
    @OptionGroup var logging: LogOptions
    @OptionGroup var sinkOptions: SinkOptionGroup

    @Option(name: .customLong("where"), help: ArgumentHelp(
        "Only rows matching this SQL condition, e.g. \"created_at >= '2026-01-01'\". [SPOUT_WHERE]", valueName: "sql"))
    var whereFlag: String?

    @Option(name: .customLong("after"), help: ArgumentHelp(
        "Resume after this primary key, as backfill printed it (a JSON array for a composite key). [SPOUT_AFTER]", valueName: "key"))
    var afterFlag: String?

    @Option(name: .customLong("batch"), parsing: .unconditional, help: ArgumentHelp(
        "Rows per batch; \(Limits.backfillBatch.lowerBound) to \(Limits.backfillBatch.upperBound) (default: 1000). [SPOUT_BATCH]", valueName: "n"))
    var batchFlag: String?

    @Option(name: .customLong("rate"), parsing: .unconditional, help: ArgumentHelp(
        "Rows per second, at most; \(Limits.backfillRate.lowerBound) to \(Limits.backfillRate.upperBound) (default: no limit). [SPOUT_RATE]", valueName: "n"))
    var rateFlag: String?

    private var flags: Settings.Flags {
        database.flags + mapping.flags + logging.flags + sinkOptions.flags
            + Settings.Flags(flags: [.backfillWhere: whereFlag, .backfillAfter: afterFlag, .backfillBatch: batchFlag, .backfillRate: rateFlag])
    }

    func run() async throws {
        try await reportingErrors(flags) { settings in
            let log = try LogOptions.log(settings)
            var options = SpoutCore.Backfill.Options()
            options.batch = try settings.integer(.backfillBatch, in: Limits.backfillBatch) ?? options.batch
            options.rate = try settings.integer(.backfillRate, in: Limits.backfillRate)
            options.condition = settings.given(.backfillWhere).map(\.value).flatMap { $0.trimmingCharacters(in: .whitespaces).isEmpty ? nil : $0 }
            options.after = settings.given(.backfillAfter)?.value
            let sinkSettings = try SinkOptionGroup.options(settings, maxInFlightEvents: options.maxInFlightEvents)
            if sinkSettings.redisIDs == .lsn, let ids = settings.given(.redisIDs) {
                throw ids.invalid("cannot take backfilled rows: its entry ids come from commit LSNs, which re-published rows do not have "
                                  + "(an id below the stream's newest is refused, one above it would make the relay's next events look older); "
                                  + "backfill with --redis-ids server, consumers tell duplicates by the id field")
            }
            let setup = try database.setup(settings)
            let mapper = EventMapper(mapping: try MappingOptions.mapping(settings, table: setup.table))
            let connection = try database.connect(settings, applicationName: PostgresConnection.applicationName("backfill"))
            let table = try setup.checkTable(connection)
            try mapping.check(mapper, against: table)
            let backfill = try SpoutCore.Backfill(connection, table: setup.table, mapper: mapper, options: options)
            let total = try backfill.count()
            let sink = try SinkOptionGroup.makeSink(settings, maxInFlightEvents: options.maxInFlightEvents, log: log)
            defer { sink.close() }
            let stop = StopSignal.forProcessSignals(log: log)
            log.info("backfill: \(total) rows of \(setup.table) to publish\(options.after.map { " after key \(Log.escaped($0))" } ?? "")",
                     metadata: ["table": "\(setup.table)"])
            var progress = BackfillProgress(terminal: isatty(STDERR_FILENO) == 1, log: log)
            var last: SpoutCore.Backfill.Progress?
            let outcome = try backfill.run(sink: sink, total: total, stop: stop) { update in
                last = update
                progress.show(update)
            }
            progress.finish(last)
            let rows = last?.rows ?? 0
            switch outcome {
            case .finished:
                log.info("backfill: done, \(rows) rows published and acknowledged\(last?.lastKey.map { " (last key \(Log.escaped($0)))" } ?? "")",
                         metadata: ["events": "\(rows)"])
            case .interrupted:
                if let key = last?.lastKey ?? options.after {
                    log.info("backfill: stopped after \(rows) rows, all acknowledged; resume with --after \(Log.escaped(key))",
                             metadata: ["events": "\(rows)"])
                } else {
                    log.info("backfill: stopped before the first batch; start it again as it was", metadata: ["events": "0"])
                }
                throw ExitCode(130)
            }
        }
    }
}

/// Backfill progress on stderr: a bar redrawn in place on a terminal, otherwise a plain log
/// line every few seconds (and at the end) naming the last key done.
struct BackfillProgress {
    let terminal: Bool
    let log: Log
    private let clock = ContinuousClock()
    private var lastShown: ContinuousClock.Instant?
    private var drawn = false
    private var shownRows: Int?

    init(terminal: Bool, log: Log) {
        self.terminal = terminal
        self.log = log
    }

    mutating func show(_ progress: SpoutCore.Backfill.Progress, force: Bool = false) {
        let now = clock.now
        let interval: Duration = terminal ? .milliseconds(100) : .seconds(5)
        if !force, let lastShown, now - lastShown < interval { return }
        lastShown = now
        shownRows = progress.rows
        let seconds = max(0.001, Double(progress.elapsed.components.seconds) + Double(progress.elapsed.components.attoseconds) / 1e18)
        let rate = Double(progress.rows) / seconds
        let fraction = progress.total > 0 ? min(1, Double(progress.rows) / Double(progress.total)) : 1
        let remaining = max(0, progress.total - progress.rows)
        let eta = rate > 0 ? Self.duration(Double(remaining) / rate) : "?"
        let key = progress.lastKey.map { Log.escaped($0) } ?? "-"
        if terminal {
            let width = 30
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            let line = "\r[\(bar)] \(progress.rows)/\(progress.total) \(Int(fraction * 100))% \(Int(rate)) rows/s ETA \(eta) last key \(key)\u{1B}[K"
            FileHandle.standardError.write(Data(line.utf8))
            drawn = true
        } else {
            log.info("backfill: \(progress.rows) of \(progress.total) rows (\(Int(fraction * 100))%), \(Int(rate)) rows/s, ETA \(eta), last key \(key)",
                     metadata: ["events": "\(progress.rows)"])
        }
    }

    /// The final state, always shown; ends the terminal's bar line.
    mutating func finish(_ progress: SpoutCore.Backfill.Progress?) {
        if let progress, progress.rows != shownRows { show(progress, force: true) }
        if drawn { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite else { return "?" }
        let total = Int(seconds.rounded())
        return total >= 3600 ? String(format: "%d:%02d:%02d", total / 3600, total / 60 % 60, total % 60)
            : total >= 60 ? String(format: "%d:%02d", total / 60, total % 60) : "\(total) s"
    }
}
