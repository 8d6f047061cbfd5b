import Foundation
import SpoutCore
import XCTest

/// The repository's root (scripts/ lives there), from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// A progress line on stderr (unbuffered: a test that hangs still shows how far it got).
func note(_ text: String) {
    FileHandle.standardError.write(Data("[\(Date())] \(text)\n".utf8))
}

/// Runs a command to completion; returns its status and combined output. posix_spawn and
/// waitpid, not Foundation's Process: its waitUntilExit sometimes never saw a short-lived
/// child exit (left a zombie) while the test waited.
@discardableResult
func runCommand(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("spout-cmd-\(UUID().uuidString)").path
    defer { unlink(outputPath) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    // Through bash, which first closes every descriptor the test process leaves open (its
    // earlier tests' sockets and pipes lack FD_CLOEXEC): a postmaster started from here would
    // inherit them all and refuse to start ("insufficient file descriptors").
    let closeInherited = #"for f in /proc/$$/fd/*; do n=${f##*/}; if [ "$n" -gt 2 ] 2>/dev/null; then eval "exec $n>&-" 2>/dev/null; fi; done; exec "$@""#
    let argv = (["/bin/bash", "-c", closeInherited, "bash", executable] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, "/bin/bash", &actions, nil, argv, environ)
    guard spawned == 0 else { throw XCTSkipFailure("cannot run \(executable): \(String(cString: strerror(spawned)))") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0, errno == EINTR {}
    let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
    // WIFEXITED / WEXITSTATUS
    let exited = status & 0x7F == 0
    return (exited ? (status >> 8) & 0xFF : 128 + (status & 0x7F), output)
}

/// An outbox table on a private server, streamed by `spout run` processes to their stdout.
final class PrivateOutbox: @unchecked Sendable {
    let server: PrivateServer
    let admin: PostgresConnection
    let table: String
    let slot: String

    init(_ server: PrivateServer, prefix: String) throws {
        self.server = server
        admin = try server.connect()
        let name = TestDatabase.uniqueName(prefix)
        table = "outbox_\(name)"
        slot = "slot_\(name)"
        try admin.sql(OutboxFixture.createTableSQL(table))
    }

    func arguments(url: String? = nil) -> [String] {
        ["run", "--database-url", url ?? server.url, "--table", "public.\(table)", "--publication", "pub_\(slot)", "--slot", slot]
    }

    /// Every row the table holds: what was committed, whatever a client heard back.
    func committedIDs() throws -> [String] {
        let admin = try server.connect()
        return try admin.sql("SELECT id FROM public.\(table)").compactMap { $0.first ?? nil }
    }

    var walsenderPID: String? {
        get throws {
            let admin = try server.connect()
            return try admin.value("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '\(slot)' AND active")
        }
    }
}

/// Inserts rows (1 to 3 per transaction) on its own thread until stopped, connecting again
/// whenever the server is gone, so it writes across restarts.
final class SteadyWriter: @unchecked Sendable {
    private let url: String
    private let table: String
    private let state = LockedBox<(committed: Int, stop: Bool, failures: Int)>((0, false, 0))
    private var thread: Thread?

    init(url: String, table: String) {
        self.url = url
        self.table = table
    }

    func start() {
        let thread = Thread { [self] in
            var connection: PostgresConnection?
            var sequence = 0
            while !state.value.stop {
                do {
                    let current = try connection ?? PostgresConnection(url)
                    connection = current
                    let rows = 1 + sequence % 3
                    let values = (0..<rows).map { "('order', 'k\((sequence + $0) % 7)', 'Created', '{\"seq\": \(sequence + $0)}', NULL)" }
                    try current.sql("INSERT INTO public.\(table) (aggregate_type, aggregate_id, event_type, payload, headers) VALUES "
                                    + values.joined(separator: ","))
                    sequence += rows
                    state.mutate { $0.committed += 1 }
                    usleep(2_000)
                } catch {
                    connection = nil
                    state.mutate { $0.failures += 1 }
                    usleep(100_000)
                }
            }
        }
        self.thread = thread
        thread.start()
    }

    var committed: Int { state.value.committed }

    /// Waits until `count` more transactions than now are committed.
    func waitForMore(_ count: Int, timeout: TimeInterval = 90, file: StaticString = #filePath, line: UInt = #line) {
        let target = committed + count
        eventually(timeout: timeout, "the writer committed \(count) more transactions", file: file, line: line) { committed >= target }
    }

    func stop() {
        state.mutate { $0.stop = true }
        let deadline = Date().addingTimeInterval(30)
        while let thread, !thread.isFinished, Date() < deadline { usleep(10_000) }
        thread = nil
    }

    deinit { stop() }
}

/// scripts/tcp-proxy.py between spout and PostgreSQL: the test cuts every connection and
/// refuses new ones (SIGUSR1), then opens again (SIGUSR2).
final class CuttableProxy {
    let port: Int
    private let process = Process()
    private let output = Pipe()
    private var seen = ""

    init(to targetPort: Int) throws {
        port = try freeLoopbackPort()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", repositoryRoot.appendingPathComponent("scripts/tcp-proxy.py").path, "\(port)", "\(targetPort)"]
        process.standardOutput = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try expect("ready")
    }

    /// Reads the proxy's lines until `line` arrives.
    private func expect(_ line: String) throws {
        let handle = output.fileHandleForReading
        while !seen.split(separator: "\n").contains(Substring(line)) {
            let data = handle.availableData
            guard !data.isEmpty else { throw XCTSkipFailure("the proxy ended before saying \(line)") }
            seen += String(decoding: data, as: UTF8.self)
        }
        seen = ""
    }

    func cut() throws {
        kill(process.processIdentifier, SIGUSR1)
        try expect("cut")
    }

    func open() throws {
        kill(process.processIdentifier, SIGUSR2)
        try expect("open")
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}

extension SpoutProcess {
    /// Lines of stderr containing `text`.
    func logLines(containing text: String) -> [Substring] {
        stderr.split(separator: "\n").filter { $0.contains(text) }
    }

    /// The event ids on stdout, in order.
    var eventIDs: [String] { events.compactMap { $0["id"] as? String } }
}

/// Every id in `committed` is in `delivered`; returns the ids delivered more than once.
func duplicates(in delivered: [String]) -> [String] {
    var seen = Set<String>()
    var twice: [String] = []
    for id in delivered where !seen.insert(id).inserted { twice.append(id) }
    return twice
}
