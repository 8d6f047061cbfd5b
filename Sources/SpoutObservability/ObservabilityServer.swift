import Foundation
import Hummingbird
import Logging
import Prometheus
import SpoutCore
import Synchronization

/// `--metrics-address`: `/metrics` (Prometheus text format), `/healthz` and `/readyz` on a
/// Hummingbird server. It runs on NIO's threads and Swift's task pool and only reads: the
/// registry (its own locks, written at status updates) and `RelayHealth` (atomics). It never
/// touches the relay's thread.
public final class ObservabilityServer: Sendable {
    public let host: String
    public let port: Int
    private let task: Task<Void, any Error>

    private init(host: String, port: Int, task: Task<Void, any Error>) {
        self.host = host
        self.port = port
        self.task = task
    }

    /// Binds `host:port` and serves until `stop()`. Throws when it cannot bind (the address is
    /// in use, the host is not local).
    public static func start(host: String, port: Int, registry: PrometheusCollectorRegistry, health: RelayHealth,
                             unreadyAfter: Double, logger: Logger) async throws(SpoutError) -> ObservabilityServer {
        let router = Router()
        // Readiness as a metric too, for an alert rule: refreshed at each scrape.
        let ready = registry.makeGauge(name: "spout_ready", labels: [], help: "1 when /readyz answers 200 (ready), else 0.")
        router.get("/metrics") { _, _ -> Response in
            ready.set(to: HealthRules.ready(health.snapshot, unreadyAfter: unreadyAfter).ok ? 1.0 : 0.0)
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
        }
        router.get("/healthz") { _, _ -> Response in
            json(HealthRules.alive(health.snapshot), ok: "alive", notOK: "not alive")
        }
        router.get("/readyz") { _, _ -> Response in
            json(HealthRules.ready(health.snapshot, unreadyAfter: unreadyAfter), ok: "ready", notOK: "not ready")
        }
        let started = Started()
        var quiet = logger
        // Hummingbird's own lines (server started) are not spout's log.
        quiet.logLevel = max(logger.logLevel, .warning)
        let app = Application(router: router, configuration: .init(address: .hostname(host, port: port), serverName: nil),
                              onServerRunning: { channel in started.resume(.success(channel.localAddress?.port ?? port)) },
                              logger: quiet)
        let task = Task {
            do { try await app.run() } catch {
                started.resume(.failure(error))
                throw error
            }
        }
        switch await started.wait() {
        case let .success(bound): return ObservabilityServer(host: host, port: bound, task: task)
        case let .failure(error):
            task.cancel()
            throw .invalidOption("--metrics-address \(host):\(port): cannot serve metrics there (\(error)); "
                                 + "give a free local address, e.g. 127.0.0.1:9187")
        }
    }

    public func stop() { task.cancel() }

    private static func json(_ verdict: HealthVerdict, ok: String, notOK: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: verdict.ok ? .ok : .serviceUnavailable, headers: headers,
                        body: .init(byteBuffer: ByteBuffer(string: verdict.json(ok: ok, notOK: notOK))))
    }
}

/// The server's first outcome: bound (its port) or failed.
private final class Started: Sendable {
    private let state = Mutex<(result: Result<Int, any Error>?, waiter: CheckedContinuation<Result<Int, any Error>, Never>?)>((nil, nil))

    func resume(_ result: Result<Int, any Error>) {
        let waiter = state.withLock { state -> CheckedContinuation<Result<Int, any Error>, Never>? in
            guard state.result == nil else { return nil }
            state.result = result
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: result)
    }

    func wait() async -> Result<Int, any Error> {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> Result<Int, any Error>? in
                if let result = state.result { return result }
                state.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
