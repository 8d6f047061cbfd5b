import ArgumentParser
import Foundation
import Logging
import SpoutCore

@main
struct Spout: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spout",
        abstract: "Streams a PostgreSQL transactional outbox to message brokers, confirming the WAL only after the broker acknowledged.",
        discussion: """
            Every option can also be set with an environment variable: SPOUT_ and the option's name in \
            upper case with dashes as underscores (--database-url → SPOUT_DATABASE_URL; --kafka-property → \
            SPOUT_KAFKA_PROPERTIES), and a key of a YAML config file (--config FILE or SPOUT_CONFIG): \
            `database-url: postgresql://…` (kafka-property takes a list). Flags win over the environment, the \
            environment over the file; files of `name = value` lines are still read, with a warning. \
            An unknown key in the file or an unknown SPOUT_* variable is an error (SPOUT_TEST_*, SPOUT_PG_*, \
            SPOUT_BIN and SPOUT_KAFKA_MOCK_BIN belong to the project's scripts and are ignored). \
            The command-line switches --json, --print, --report-latency and --check-config are flags only.
            """,
        version: "0.9.0",
        subcommands: [Run.self, Tail.self, Setup.self, Status.self, Slot.self, Check.self, Backfill.self, Health.self]
    )
}

extension Spout {
    /// ArgumentParser's own errors can quote an argument (`Unexpected argument 'postgres://u:pw@h'`):
    /// they pass the same redaction as spout's.
    static func main() async {
        // Any swift-log logger of the process (a library's too) writes spout's lines.
        LoggingSystem.bootstrap { _ in SpoutLogHandler(format: Log.defaultFormat) }
        do {
            var command = try parseAsRoot()
            if var command = command as? AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            let message = Redaction.scrub(fullMessage(for: error), secrets: Settings.secrets)
            if !message.isEmpty {
                if code == .success { print(message) } else { FileHandle.standardError.write(Data((message + "\n").utf8)) }
            }
            exit(withError: ExitCode(code.rawValue))
        }
    }
}

/// Exits with one clear line on stderr for a Spout error; anything else goes to ArgumentParser.
/// The configuration is read first (file keys, SPOUT_* names), and no message leaves with a
/// password, token or secret property value in it.
func reportingErrors(_ flags: Settings.Flags, _ body: (Settings) async throws -> Void) async throws {
    do {
        let settings = try await Settings.load(flags: flags)
        // The process's log format before any line, also for a command without --log-format.
        if let format = settings.value(.logFormat).flatMap({ Log.Format(rawValue: $0.lowercased()) }) { Log.defaultFormat = format }
        if let file = settings.file, file.isLegacy { Log().warning(file.deprecation) }
        try await body(settings)
    } catch let error as SpoutError {
        Log().error(Redaction.scrub(error.description, secrets: Settings.secrets))
        throw ExitCode(error.exitCode)
    }
}
