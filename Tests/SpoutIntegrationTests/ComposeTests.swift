import Foundation
@testable import spout
import SpoutCore
import XCTest

/// The top-level docker-compose.yml, checked without a Docker engine: Debian's
/// docker-compose validates it, every Spout service's SPOUT_* environment is one Spout
/// understands, and the SQL it mounts into PostgreSQL's initdb is the repository's and works.
final class ComposeTests: XCTestCase {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var composeFile: String { repository.appendingPathComponent("docker-compose.yml").path }

    /// Runs a program to completion; returns its status and output.
    static func execute(_ program: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// The compose file as JSON objects (python3-yaml, which Debian's docker-compose uses too).
    static func services() throws -> [String: [String: Any]] {
        let script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
        let (status, output) = try execute("/usr/bin/python3", ["-c", script, composeFile])
        XCTAssertEqual(status, 0, output)
        let document = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
        return try XCTUnwrap(document["services"] as? [String: [String: Any]])
    }

    func testDockerComposeValidatesTheFile() throws {
        let program = "/usr/bin/docker-compose"
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: program), "docker-compose is missing: run scripts/install-deps")
        let (status, output) = try Self.execute(program, ["-f", Self.composeFile, "config", "-q"])
        XCTAssertEqual(status, 0, output)
        for profile in ["redis", "nats", "rabbitmq"] {
            let (status, output) = try Self.execute(program, ["-f", Self.composeFile, "--profile", profile, "config", "-q"])
            XCTAssertEqual(status, 0, "\(profile): \(output)")
        }
    }

    /// The image builds with a Swift at least as new as Package.swift's tools version.
    func testDockerfileSwiftIsNewEnoughForThePackage() throws {
        func version(_ text: String, after marker: String) throws -> [Int] {
            let line = try XCTUnwrap(text.split(separator: "\n").first { $0.contains(marker) }, marker)
            let value = line[try XCTUnwrap(line.range(of: marker)).upperBound...].trimmingCharacters(in: .whitespaces)
            return value.split(separator: ".").compactMap { Int($0) }
        }
        let package = try String(contentsOf: Self.repository.appendingPathComponent("Package.swift"), encoding: .utf8)
        let dockerfile = try String(contentsOf: Self.repository.appendingPathComponent("Dockerfile"), encoding: .utf8)
        let tools = try version(package, after: "swift-tools-version:")
        let image = try version(dockerfile, after: "ARG SWIFT_VERSION=")
        XCTAssertFalse(tools.isEmpty || image.isEmpty)
        XCTAssertFalse(image.lexicographicallyPrecedes(tools), "Dockerfile's Swift \(image) is older than swift-tools-version \(tools)")
    }

    /// Each Spout service: configured only through SPOUT_* variables that `spout run
    /// --check-config` accepts, its own slot, restarted, started after PostgreSQL is healthy.
    func testEverySpoutServiceIsConfiguredWithVariablesSpoutUnderstands() throws {
        let spouts = try Self.services().filter { $0.key.hasPrefix("spout") }
        XCTAssertEqual(Set(spouts.keys), ["spout-kafka", "spout-redis", "spout-nats", "spout-amqp", "spout-stomp"])
        var slots: Set<String> = []
        for (name, service) in spouts {
            let environment = try XCTUnwrap(service["environment"] as? [String: Any], name).mapValues { "\($0)" }
            XCTAssertTrue(environment.keys.allSatisfy { $0.hasPrefix("SPOUT_") }, "\(name): \(environment.keys)")
            let result = try SpoutProcess.run(["run", "--check-config"], environment: environment)
            XCTAssertEqual(result.status, 0, "\(name): \(result.stderr)")
            XCTAssertTrue(result.stdout.contains("the configuration is valid"), "\(name): \(result.stdout)")
            XCTAssertFalse(result.stdout.contains("change-me"), "\(name): the password is masked: \(result.stdout)")
            slots.insert(try XCTUnwrap(environment["SPOUT_SLOT"], "\(name) has a slot of its own"))
            XCTAssertEqual(service["restart"] as? String, "unless-stopped", name)
            let dependsOn = try XCTUnwrap(service["depends_on"] as? [String: [String: String]], name)
            XCTAssertEqual(dependsOn["postgres"]?["condition"], "service_healthy", name)
        }
        XCTAssertEqual(slots.count, spouts.count, "every spout streams its own slot")
    }

    /// The rabbitmq service's configuration, loaded by a real RabbitMQ: user spout logs in with
    /// the password the spout-amqp and spout-stomp services use, the exchange routes every
    /// topic to a queue (spout-amqp's publishes are mandatory), and the STOMP queue exists.
    func testRabbitMQDefinitionsLoad() throws {
        let services = try Self.services()
        let rabbitmq = try XCTUnwrap(services["rabbitmq"])
        let mounts = try XCTUnwrap(rabbitmq["volumes"] as? [String]).map { $0.split(separator: ":").map(String.init) }
        let files = Dictionary(mounts.map { ($0[1], Self.repository.appendingPathComponent($0[0]).path) }, uniquingKeysWith: { first, _ in first })
        let definitions = try XCTUnwrap(files["/etc/rabbitmq/definitions.json"])
        let configuration = try String(contentsOfFile: try XCTUnwrap(files["/etc/rabbitmq/conf.d/20-spout.conf"]), encoding: .utf8)
        XCTAssertTrue(configuration.contains("load_definitions = /etc/rabbitmq/definitions.json"), configuration)
        XCTAssertEqual(try String(contentsOfFile: try XCTUnwrap(files["/etc/rabbitmq/enabled_plugins"]), encoding: .utf8)
                        .contains("rabbitmq_stomp"), true)
        let extra = FileManager.default.temporaryDirectory.appendingPathComponent("spout-compose-rabbitmq-\(UUID().uuidString).conf")
        try configuration.replacingOccurrences(of: "/etc/rabbitmq/definitions.json", with: definitions).write(to: extra, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: extra) }
        setenv("RABBITMQ_EXTRA_CONF", extra.path, 1)
        defer { unsetenv("RABBITMQ_EXTRA_CONF") }
        let server = try RabbitMQServer("compose-tests")
        defer { server.stop(remove: true) }
        unsetenv("RABBITMQ_EXTRA_CONF")

        let amqp = try XCTUnwrap(services["spout-amqp"]?["environment"] as? [String: Any])
        let stomp = try XCTUnwrap(services["spout-stomp"]?["environment"] as? [String: Any])
        // The services' URLs, pointed at this server.
        let amqpURL = "\(amqp["SPOUT_SINK"] ?? "")".replacingOccurrences(of: "@rabbitmq:5672", with: "@127.0.0.1:\(server.port)")
        let stompURL = "\(stomp["SPOUT_SINK"] ?? "")".replacingOccurrences(of: "@rabbitmq:61613", with: "@127.0.0.1:\(server.stompPort)")
        let outbox = try OutboxFixture("compose_rabbit")
        defer { outbox.tearDown() }
        // spout check: logged in, the exchange there.
        for (url, extraArguments) in [(amqpURL, ["--amqp-exchange", "\(amqp["SPOUT_AMQP_EXCHANGE"] ?? "")"]),
                                      (stompURL, ["--stomp-destination", "\(stomp["SPOUT_STOMP_DESTINATION"] ?? "")"])] {
            let result = try SpoutProcess.run(["check", "--sink", url] + extraArguments + outbox.arguments, timeout: 90)
            XCTAssertEqual(result.status, 0, result.stdout + result.stderr)
        }
        // Every topic is routed: a publish to the exchange reaches outbox.events.
        let pika = try PikaClient(amqpURL)
        try pika.publishMandatory(exchange: "\(amqp["SPOUT_AMQP_EXCHANGE"] ?? "")", routingKey: "outbox.event.order")
        XCTAssertEqual(pika.count("outbox.events"), 1)
        XCTAssertEqual(pika.count("outbox.stomp"), 0, "the STOMP queue exists")
    }

    /// The init SQL mounted into the postgres service is sql/ of this repository, in that
    /// order, and it sets up what the Spout services need: run here in a fresh database.
    func testInitSQLIsTheRepositorysAndWorks() throws {
        let postgres = try XCTUnwrap(Self.services()["postgres"])
        let mounts = try XCTUnwrap(postgres["volumes"] as? [String]).filter { $0.contains("docker-entrypoint-initdb.d") }
        XCTAssertEqual(mounts.map { $0.split(separator: ":")[0] }, ["./sql/outbox.sql", "./sql/publication.sql", "./sql/role.sql"])
        let admin = try TestDatabase.connect()
        let database = TestDatabase.uniqueName("compose")
        try admin.sql("CREATE DATABASE \(database)")
        defer { _ = try? admin.sql("DROP DATABASE \(database)") }
        XCTAssertNil(try admin.value("SELECT 1 FROM pg_roles WHERE rolname = 'spout'"), "the role sql/role.sql creates exists already")
        let db = try PostgresConnection(try TestDatabase.url(database: database))
        defer {
            _ = try? db.sql("DROP OWNED BY spout")
            _ = try? admin.sql("DROP ROLE IF EXISTS spout")
        }
        for mount in mounts {
            let path = Self.repository.appendingPathComponent(String(mount.split(separator: ":")[0])).path
            try db.sql(try String(contentsOfFile: path, encoding: .utf8))
        }
        XCTAssertEqual(try db.value("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'spout' AND tablename = 'outbox'"), "1")
        XCTAssertEqual(try db.value("SELECT rolreplication FROM pg_roles WHERE rolname = 'spout'"), "t")
        XCTAssertEqual(try db.value("SELECT has_table_privilege('spout', 'public.spout_slots', 'INSERT')"), "t")
    }

    /// issue 13: every Spout service serves metrics and health, and is healthy while `spout health`
    /// (which asks 127.0.0.1 at the port of a wildcard metrics address) passes; so is the image.
    func testSpoutServicesHaveAHealthCheck() throws {
        let spouts = try Self.services().filter { $0.key.hasPrefix("spout") }
        XCTAssertFalse(spouts.isEmpty)
        for (name, service) in spouts {
            let environment = try XCTUnwrap(service["environment"] as? [String: Any], name)
            XCTAssertEqual(environment["SPOUT_METRICS_ADDRESS"] as? String, "0.0.0.0:9187", name)
            let check = try XCTUnwrap(service["healthcheck"] as? [String: Any], "\(name) has no healthcheck")
            XCTAssertEqual(check["test"] as? [String], ["CMD", "spout", "health"], name)
        }
        let dockerfile = try String(contentsOf: Self.repository.appendingPathComponent("Dockerfile"), encoding: .utf8)
        XCTAssertTrue(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("CMD [\"spout\", \"health\"]"), dockerfile)
        XCTAssertTrue(dockerfile.contains("ENV SPOUT_METRICS_ADDRESS=0.0.0.0:9187"), dockerfile)
        let target = try Health.target(address: nil, configured: ObservabilityOptions.parseAddress("0.0.0.0:9187"))
        XCTAssertEqual("\(target.host):\(target.port)", "127.0.0.1:9187")
        let fallback = try Health.target(address: nil, configured: nil)
        XCTAssertEqual("\(fallback.host):\(fallback.port)", "127.0.0.1:9187")
    }
}

/// Running without containers: `make install`'s script puts the binary, the systemd unit and
/// the completions under a prefix, and what it installs works.
final class InstallTests: XCTestCase {
    func testInstallPutsTheBinaryUnitAndCompletionsInPlace() throws {
        let prefix = FileManager.default.temporaryDirectory.appendingPathComponent("spout-prefix-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: prefix) }
        let script = ComposeTests.repository.appendingPathComponent("scripts/install").path
        let (status, output) = try ComposeTests.execute("/bin/bash", [script, SpoutProcess.executable.path, prefix])
        XCTAssertEqual(status, 0, output)
        for file in ["bin/spout", "lib/systemd/system/spout@.service", "share/bash-completion/completions/spout",
                     "share/zsh/site-functions/_spout", "share/fish/vendor_completions.d/spout.fish"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(prefix)/\(file)"), file)
        }
        let bash = try ComposeTests.execute("/bin/bash", ["-n", "\(prefix)/share/bash-completion/completions/spout"])
        XCTAssertEqual(bash.status, 0, bash.output)
        let version = try ComposeTests.execute("\(prefix)/bin/spout", ["--version"])
        XCTAssertEqual(version.status, 0)
        XCTAssertFalse(version.output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)

        // The unit as systemd reads it (an instance of the template), and its command line.
        let unit = try String(contentsOfFile: "\(prefix)/lib/systemd/system/spout@.service", encoding: .utf8)
        XCTAssertTrue(unit.contains("ExecStart=\(prefix)/bin/spout run --config /etc/spout/%i.conf"), unit)
        XCTAssertTrue(unit.contains("Restart=on-failure"), unit)
        let instance = "\(prefix)/spout@orders.service"
        try unit.write(toFile: instance, atomically: true, encoding: .utf8)
        let verify = try ComposeTests.execute("/usr/bin/systemd-analyze", ["verify", instance])
        XCTAssertEqual(verify.status, 0, verify.output)
        XCTAssertEqual(verify.output.trimmingCharacters(in: .whitespacesAndNewlines), "", "systemd warns: \(verify.output)")
        let config = "\(prefix)/orders.conf"
        try "database-url = postgresql://spout:pw-sentinel@db/app\nslot = spout_orders\nsink = kafka://broker:9092\n"
            .write(toFile: config, atomically: true, encoding: .utf8)
        let check = try ComposeTests.execute("\(prefix)/bin/spout", ["run", "--config", config, "--check-config"])
        XCTAssertEqual(check.status, 0, check.output)
        XCTAssertTrue(check.output.contains("slot = spout_orders"), check.output)
        XCTAssertFalse(check.output.contains("pw-sentinel"), check.output)
    }

}
