import Foundation
import SpoutCore
import XCTest

/// Inserts numbered outbox rows (sequence numbers in commit order in the payload), either
/// synchronously or on a thread of its own until the test stops it. Crash and outage tests
/// act while events are still being written: with a writer that runs until told, "still
/// writing" holds by construction, never by a race between the writer and spout.
final class OutboxWriter: @unchecked Sendable {
    struct Transaction {
        var ids: [String]
        var keys: [String]
        /// The WAL insert position right after the commit (at or after its end LSN).
        var after: LSN
    }

    let connection: PostgresConnection
    private let outbox: OutboxFixture
    private let key: @Sendable (Int) -> String
    private let payload: @Sendable (Int) -> String
    /// Rows written so far; only the thread writing touches it.
    private var sequence = 0
    private let state = LockedBox<(transactions: [Transaction], stop: Bool, failure: String?)>(([], false, nil))
    private var thread: Thread?

    /// - Parameter key, payload: of the row with this sequence number (0, 1, 2, … in commit order).
    init(_ outbox: OutboxFixture, key: @escaping @Sendable (Int) -> String = { "k\($0 % 7)" },
         payload: @escaping @Sendable (Int) -> String = { "{\"seq\": \($0)}" }) throws {
        self.outbox = outbox
        connection = try TestDatabase.connect()
        self.key = key
        self.payload = payload
    }

    deinit { if thread != nil { _ = try? stop() } }

    /// Writes `transactions` transactions of `rows` rows now.
    func write(transactions: Int, rows: Int, aggregate: String = "order") throws {
        for _ in 0..<transactions { try writeOne(rows: rows, aggregate: aggregate) }
    }

    /// Writes transactions of `rows` rows, `pause` microseconds apart, on a thread until `stop`.
    func start(rows: Int, pause: useconds_t) {
        let thread = Thread { [self] in
            while !state.value.stop {
                do { try writeOne(rows: rows, aggregate: "order") } catch {
                    state.mutate { $0.failure = "\(error)" }
                    return
                }
                usleep(pause)
            }
        }
        self.thread = thread
        thread.start()
    }

    private func writeOne(rows: Int, aggregate: String) throws {
        let base = sequence
        let keys = (0..<rows).map { key(base + $0) }
        let (ids, after) = try outbox.insertReturningLSN(connection, rows: rows, aggregate: aggregate, key: { keys[$0] },
                                                         payload: { [payload] in payload(base + $0) })
        sequence += rows
        state.mutate { $0.transactions.append(Transaction(ids: ids, keys: keys, after: after)) }
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
