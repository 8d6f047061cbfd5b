import Foundation
import SpoutCore
import XCTest

/// Inserts outbox transactions on a thread of its own until the test stops it. Crash and
/// outage tests act while events are still being written: with a writer that runs until
/// told, "still writing" holds by construction, never by a race between the writer and spout.
final class SteadyWriter: @unchecked Sendable {
    struct Transaction {
        var ids: [String]
        var keys: [String]
        /// The WAL insert position right after the commit (at or after its end LSN).
        var after: LSN
    }

    private let outbox: OutboxFixture
    private let connection: PostgresConnection
    private let rows: Int
    private let pause: useconds_t
    private let key: @Sendable (Int) -> String
    private let payload: @Sendable (Int) -> String
    private let state = LockedBox<(transactions: [Transaction], stop: Bool, failure: String?)>(([], false, nil))
    private var thread: Thread?

    /// - Parameters:
    ///   - key, payload: of the row with this sequence number (0, 1, 2, … in commit order).
    ///   - pause: between transactions, in microseconds.
    init(_ outbox: OutboxFixture, rows: Int, pause: useconds_t, key: @escaping @Sendable (Int) -> String = { "k\($0 % 7)" },
         payload: @escaping @Sendable (Int) -> String = { "{\"seq\": \($0)}" }) throws {
        self.outbox = outbox
        connection = try TestDatabase.connect()
        self.rows = rows
        self.pause = pause
        self.key = key
        self.payload = payload
    }

    deinit { if thread != nil { _ = try? stop() } }

    func start() {
        let thread = Thread { [self] in
            var sequence = 0
            while !state.value.stop {
                let base = sequence
                do {
                    let keys = (0..<rows).map { key(base + $0) }
                    let (ids, after) = try outbox.insertReturningLSN(connection, rows: rows, key: { keys[$0] }, payload: { [payload] in payload(base + $0) })
                    state.mutate { $0.transactions.append(Transaction(ids: ids, keys: keys, after: after)) }
                } catch {
                    state.mutate { $0.failure = "\(error)" }
                    return
                }
                sequence += rows
                usleep(pause)
            }
        }
        self.thread = thread
        thread.start()
    }

    var transactions: [Transaction] { state.value.transactions }
    var ids: [String] { transactions.flatMap(\.ids) }
    /// Event ids per key, in commit order.
    var idsByKey: [String: [String]] {
        var result: [String: [String]] = [:]
        for transaction in transactions {
            for (id, key) in zip(transaction.ids, transaction.keys) { result[key, default: []].append(id) }
        }
        return result
    }

    /// Waits until `count` more transactions than now are committed.
    func waitForMore(_ count: Int, timeout: TimeInterval = 30, file: StaticString = #filePath, line: UInt = #line) {
        let target = transactions.count + count
        eventually(timeout: timeout, "the writer committed \(count) more transactions (failure: \(state.value.failure ?? "none"))",
                   file: file, line: line) { transactions.count >= target }
    }

    /// Stops writing and waits for the thread; throws what the writer failed with.
    func stop() throws {
        state.mutate { $0.stop = true }
        let deadline = Date().addingTimeInterval(30)
        while let thread, !thread.isFinished, Date() < deadline { usleep(10_000) }
        thread = nil
        if let failure = state.value.failure { throw XCTSkipFailure("the writer failed: \(failure)") }
    }
}
