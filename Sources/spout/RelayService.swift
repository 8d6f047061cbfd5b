import Foundation
import Logging
import ServiceLifecycle
import SpoutCore

/// The relay as a swift-service-lifecycle `Service`. The relay keeps its own thread — its loop
/// blocks in poll(2) on the database socket, the sink's wakeup and the stop pipe, and must not
/// occupy a thread of Swift's cooperative pool — and `run()` awaits that thread's end. A
/// graceful shutdown of the group (another service ending, a future HTTP endpoint's request)
/// is a stop request: the relay stops reading, drains, confirms and returns.
///
/// SIGINT/SIGTERM are not the group's: `StopSignal.forProcessSignals` keeps a synchronous
/// sigaction handler. ServiceLifecycle's signal handling first sets the signal to SIG_IGN and
/// then registers a dispatch source from its own task; a signal in between is lost (spout ran
/// on after a SIGTERM sent right after "streaming"), and a second signal can only reach the
/// group asynchronously, while the relay thread may be blocked in a broker call. The handler
/// is in place before "streaming" is logged, requests the stop through the same `StopSignal`
/// the group's graceful shutdown uses, and on a second signal exits at once from the handler.
/// So both paths end in `StopSignal.request()`, and the group ends when this service returns.
final class RelayService: Service, @unchecked Sendable {
    // @unchecked: the relay is used by its thread only; `run()` reads the outcome after that
    // thread resumed the continuation (which orders the two).
    private let relay: Relay
    private let stop: StopSignal

    init(relay: Relay, stop: StopSignal) {
        self.relay = relay
        self.stop = stop
    }

    /// The relay's outcome, or its error (not the group's to report: spout prints it as always).
    private(set) var outcome: Result<Relay.Outcome, SpoutError>?

    func run() async {
        let stop = stop
        outcome = await withGracefulShutdownHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<Relay.Outcome, SpoutError>, Never>) in
                let thread = Thread { [self] in
                    continuation.resume(returning: Result { () throws(SpoutError) in try relay.run(until: stop) })
                }
                thread.name = "spout-relay"
                // The relay ran on the main thread before: keep a main-thread-sized stack.
                thread.stackSize = 8 << 20
                thread.start()
            }
        } onGracefulShutdown: {
            stop.request()
        }
    }

    /// Runs the relay in a service group until it finishes; returns its outcome or throws its error.
    static func run(_ relay: Relay, until stop: StopSignal, log: Log) async throws -> Relay.Outcome {
        let service = RelayService(relay: relay, stop: stop)
        var logger = log.logger
        // The group's own lines (service started, finished) are debugging detail, not spout's log.
        logger.logLevel = max(logger.logLevel, .warning)
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup,
                             failureTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [], cancellationSignals: [], logger: logger))
        try await group.run()
        guard let outcome = service.outcome else { throw SpoutError.invalidOption("the relay service ended without running") }
        // /healthz and /readyz: stopped, or halted with the error as the reason, until the process exits.
        if case let .failure(error) = outcome { relay.health.halted(error.description) } else { relay.health.set(.stopped) }
        return try outcome.get()
    }
}
