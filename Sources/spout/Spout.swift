import ArgumentParser
import Foundation
import SpoutCore

@main
struct Spout: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spout",
        abstract: "Streams a PostgreSQL transactional outbox to message brokers, confirming the WAL only after the broker acknowledged.",
        discussion: """
            Every option can also be set with an environment variable: SPOUT_ and the option's name in \
            upper case with dashes as underscores (--database-url → SPOUT_DATABASE_URL), and a line of a config file \
            (--config FILE or SPOUT_CONFIG): `database-url = postgresql://…`. Flags win over the environment, \
            the environment over the file.
            """,
        subcommands: [Run.self, Tail.self, Setup.self, Status.self, Slot.self]
    )
}

/// Exits with one clear line on stderr for a Spout error; anything else goes to ArgumentParser.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        if case let .failure(error) = ConfigFile.loaded { throw error }
        try body()
    } catch let error as SpoutError {
        Log().error(error.description)
        throw ExitCode(error.exitCode)
    }
}
