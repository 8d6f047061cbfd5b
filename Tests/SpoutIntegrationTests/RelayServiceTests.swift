import Foundation
import Logging
import ServiceLifecycle
@testable import spout
import SpoutCore
import XCTest

/// The relay as a swift-service-lifecycle service: it runs on its own thread inside `run()`,
/// and a graceful shutdown of its group is a stop request — it drains, confirms and returns.
final class RelayServiceTests: XCTestCase {
    func testGracefulShutdownOfTheGroupStopsTheRelay() async throws {
        let outbox = try OutboxFixture("service")
        defer { outbox.tearDown() }
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("spout-service-\(UUID().uuidString).jsonl")
        FileManager.default.createFile(atPath: output.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: output) }
        let handle = try FileHandle(forWritingTo: output)
        let sink = StdoutSink(descriptor: handle.fileDescriptor)
        let (relay, start) = try outbox.relay(sink: sink, options: Relay.Options())
        let service = RelayService(relay: relay, stop: StopSignal())
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
            logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }))
        let running = Task { try await group.run() }

        try outbox.insert(outbox.admin, rows: 3)
        try eventually("three events written") {
            (try? String(contentsOf: output, encoding: .utf8))?.split(separator: "\n").count == 3
        }
        await group.triggerGracefulShutdown()
        try await running.value
        XCTAssertEqual(try service.outcome?.get(), .stopped)
        XCTAssertEqual(relay.statistics.events, 3)
        // The drain confirmed what the sink wrote.
        XCTAssertGreaterThan(relay.confirmed, start)
        sink.close()
        try eventually("slot confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= relay.confirmed }
    }
}
