import Foundation
@testable import spout
import SpoutCore
import SpoutObservability
import XCTest

/// `/healthz`, `/readyz` and `spout health`: ready while streaming, not ready during a sink
/// outage longer than `--unready-after` and ready again after it, a standby alive but not
/// ready, and `spout health`'s exit codes both ways.
final class HealthTests: XCTestCase {
    /// A sample's value in a scrape of `/metrics`.
    static func gauge(_ series: String, port: Int) -> Double? {
        let body = MetricsTests.get(port: port, path: "/metrics")?.body ?? ""
        return body.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.dropFirst(series.count + 1)) }
    }

    /// `spout health --address`: its exit status and what it printed.
    private func health(_ port: Int) throws -> (status: Int32?, output: String) {
        let run = try SpoutProcess.run(["health", "--address", "127.0.0.1:\(port)"], timeout: 30)
        return (run.status, run.stdout)
    }

    func testReadyWhileStreamingNotReadyDuringARedisOutageReadyAfter() throws {
        let redis = try RedisServer()
        try outageRoundTrip(sink: redis.url, name: "redis", extra: [], down: { redis.kill() }, up: { try redis.start() })
    }

    func testNotReadyDuringANATSOutageReadyAfter() throws {
        let nats = try NATSServer()
        try outageRoundTrip(sink: nats.url, name: "nats", extra: ["--nats-create-stream", "OUTBOX"], down: { nats.kill() }, up: { try nats.start() })
    }

    /// Ready while streaming; the broker goes away while events keep coming: not ready after
    /// 2 s of outage, alive all along; ready again once it is back; after spout stopped,
    /// `spout health` exits 1.
    private func outageRoundTrip(sink: String, name: String, extra: [String], down: () -> Void, up: () throws -> Void) throws {
        let outbox = try OutboxFixture("health_\(name)")
        defer { outbox.tearDown() }
        let port = try freeLoopbackPort()
        let spout = try SpoutProcess(["run", "--sink", sink, "--metrics-address", "127.0.0.1:\(port)", "--unready-after", "2"]
                                     + extra + outbox.arguments)
        defer { spout.signal(SIGKILL); spout.waitForExit() }
        var answer: (status: Int32?, output: String) = (nil, "")
        try eventually("spout health exits 0 while streaming: \(answer) \(spout.stderr)") {
            answer = try health(port)
            return answer.status == 0
        }
        XCTAssertEqual(answer.output, "{\"status\":\"ready\"}\n")
        XCTAssertEqual(MetricsTests.get(port: port, path: "/healthz")?.status, 200)
        _ = try outbox.insert(outbox.admin, rows: 3)
        eventually("3 events delivered") { MetricsTests.get(port: port, path: "/metrics")?.body.contains("topic=\"outbox.event.order\"} 3") ?? false }

        down()
        _ = try outbox.insert(outbox.admin, rows: 2)
        try eventually("spout health exits 1 during the outage: \(answer) \(spout.stderr)") {
            answer = try health(port)
            return answer.status == 1 && answer.output.contains("the sink has been unavailable")
        }
        XCTAssertTrue(answer.output.hasPrefix("{\"status\":\"not ready\",\"reason\":\""), answer.output)
        XCTAssertEqual(MetricsTests.get(port: port, path: "/readyz")?.status, 503)
        XCTAssertEqual(MetricsTests.get(port: port, path: "/healthz")?.status, 200, "alive during the outage")
        XCTAssertTrue(MetricsTests.get(port: port, path: "/metrics")?.body.contains("spout_sink_outages_total{sink=\"\(name)\"} 1") ?? false)
        // The 2 events wait: the lag is their age, and grows.
        var lag: Double?
        eventually("spout_lag_seconds passes 1 during the outage: \(String(describing: lag))") {
            lag = Self.gauge("spout_lag_seconds{sink=\"\(name)\"}", port: port)
            return (lag ?? 0) >= 1
        }

        try up()
        try eventually(timeout: 60, "ready again after the outage: \(answer) \(spout.stderr)") {
            answer = try health(port)
            return answer.status == 0
        }
        eventually(timeout: 60, "5 events delivered") {
            MetricsTests.get(port: port, path: "/metrics")?.body.contains("topic=\"outbox.event.order\"} 5") ?? false
        }
        eventually("spout_lag_seconds is 0 once nothing waits: \(String(describing: lag))") {
            lag = Self.gauge("spout_lag_seconds{sink=\"\(name)\"}", port: port)
            return lag == 0
        }

        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        answer = try health(port)
        XCTAssertEqual(answer.status, 1)
        XCTAssertTrue(answer.output.contains("\"status\":\"unreachable\""), answer.output)
    }

    func testStandbyIsAliveButNotReady() throws {
        let outbox = try OutboxFixture("health_standby")
        defer { outbox.tearDown() }
        let activePort = try freeLoopbackPort()
        let active = try SpoutProcess(["run", "--metrics-address", "127.0.0.1:\(activePort)"] + outbox.arguments)
        defer { active.signal(SIGKILL); active.waitForExit() }
        eventually("the first instance is ready: \(active.stderr)") { MetricsTests.get(port: activePort, path: "/readyz")?.status == 200 }

        let standbyPort = try freeLoopbackPort()
        let standby = try SpoutProcess(["run", "--metrics-address", "127.0.0.1:\(standbyPort)"] + outbox.arguments)
        defer { standby.signal(SIGKILL); standby.waitForExit() }
        var readyz: (status: Int, body: String)?
        eventually("the second instance stands by, not ready: \(String(describing: readyz)) \(standby.stderr)") {
            readyz = MetricsTests.get(port: standbyPort, path: "/readyz")
            return readyz?.status == 503 && readyz?.body.contains("standby") == true
        }
        XCTAssertEqual(readyz?.body, "{\"status\":\"not ready\",\"reason\":\"standby: another client holds the slot\"}\n")
        XCTAssertEqual(MetricsTests.get(port: standbyPort, path: "/healthz")?.status, 200, "a standby is alive")
        XCTAssertTrue(MetricsTests.get(port: standbyPort, path: "/metrics")?.body.contains("spout_standby{sink=\"stdout\"} 1") ?? false)
        let answer = try health(standbyPort)
        XCTAssertEqual(answer.status, 1, answer.output)
        XCTAssertEqual(try health(activePort).status, 0)
        // Without --address: the metrics address from SPOUT_METRICS_ADDRESS.
        let fromEnvironment = try SpoutProcess.run(["health"], environment: ["SPOUT_METRICS_ADDRESS": "127.0.0.1:\(activePort)"], timeout: 30)
        XCTAssertEqual(fromEnvironment.status, 0, fromEnvironment.stdout + fromEnvironment.stderr)
    }

    /// The verdicts for states a test cannot hold a real relay in for long: a stuck loop, a halt.
    func testVerdicts() {
        let ready = HealthRules.ready(.init(phase: .streaming, sinceBeat: 0.5, sinkOutageSeconds: 29), unreadyAfter: 30)
        XCTAssertEqual(ready, HealthVerdict(ok: true))
        XCTAssertEqual(ready.json(ok: "ready", notOK: "not ready"), "{\"status\":\"ready\"}\n")
        let outage = HealthRules.ready(.init(phase: .streaming, sinceBeat: 0.5, sinkOutageSeconds: 31), unreadyAfter: 30)
        XCTAssertEqual(outage.reason, "the sink has been unavailable for 31 s (--unready-after 30)")
        let stuck = RelayHealth.Snapshot(phase: .streaming, sinceBeat: 45)
        XCTAssertEqual(HealthRules.alive(stuck).reason, "the relay loop has not turned for 45 s")
        XCTAssertFalse(HealthRules.ready(stuck, unreadyAfter: 30).ok)
        let halted = RelayHealth.Snapshot(phase: .stopped, sinceBeat: 0, haltReason: "the sink refused \"x\"\n")
        XCTAssertEqual(HealthRules.ready(halted, unreadyAfter: 30).json(ok: "ready", notOK: "not ready"),
                       "{\"status\":\"not ready\",\"reason\":\"halted: the sink refused \\\"x\\\"\\n\"}\n")
        XCTAssertTrue(HealthRules.alive(.init(phase: .starting, sinceBeat: nil)).ok, "alive while setting up")
        XCTAssertEqual(HealthRules.ready(.init(phase: .disconnected, sinceBeat: 1), unreadyAfter: 30).reason, "not connected to PostgreSQL: reconnecting")
        // The state machine: a stop is final.
        let health = RelayHealth()
        health.set(.streaming)
        health.set(.stopping)
        health.set(.streaming)
        XCTAssertEqual(health.snapshot.phase, .stopping)
        health.halted("boom")
        XCTAssertEqual(health.snapshot.phase, .stopped)
        XCTAssertEqual(health.snapshot.haltReason, "boom")
    }
}
