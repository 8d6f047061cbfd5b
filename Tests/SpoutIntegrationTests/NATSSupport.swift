import CNats
import Foundation
import SpoutCore
@testable import SpoutNATS
import XCTest

/// A `nats-server -js` child process on a free loopback port with its own store directory.
/// `kill()` (SIGKILL) and `start()` again reuse the port and the store, like a server restart.
final class NATSServer {
    static var executable: String {
        ProcessInfo.processInfo.environment["SPOUT_TEST_NATS_SERVER"]
            ?? ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
            .first { FileManager.default.isExecutableFile(atPath: $0) } ?? "nats-server"
    }

    private(set) var port: Int
    let directory: URL
    let extraArguments: [String]
    private var process: Process?

    /// - Parameter startNow: false to only reserve a port (for a server that comes up later).
    init(extraArguments: [String] = [], startNow: Bool = true) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("spout-nats-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("store"), withIntermediateDirectories: true)
        self.extraArguments = extraArguments
        port = try freeLoopbackPort()
        guard startNow else { return }
        // Another process may take the free port between probing and binding: try a few.
        for attempt in 1...3 {
            do {
                try start()
                return
            } catch where attempt < 3 {
                port = try freeLoopbackPort()
            }
        }
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(at: directory)
    }

    var url: String { "nats://127.0.0.1:\(port)" }

    /// The same server as a `tls://` URL (for a server started with `tlsArguments`).
    var tlsURL: String { "tls://127.0.0.1:\(port)" }

    /// nats-server's TLS flags (issue 15): `certificate` (server, or wronghost for "wrong
    /// host") and, with `verifyClients`, client certificates signed by the test CA required.
    static func tlsArguments(_ certificates: TestCertificates, certificate: String = "server", verifyClients: Bool = false) -> [String] {
        ["--tls", "--tlscert", certificates.path("\(certificate).crt"), "--tlskey", certificates.path("\(certificate).key")]
            + (verifyClients ? ["--tlsverify", "--tlscacert", certificates.ca] : [])
    }

    var log: String { (try? String(contentsOf: directory.appendingPathComponent("server.log"), encoding: .utf8)) ?? "" }

    /// Starts the server and waits until it accepts connections.
    func start() throws {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: Self.executable)
        child.arguments = ["-js", "-a", "127.0.0.1", "-p", "\(port)", "--store_dir", directory.appendingPathComponent("store").path]
            + extraArguments
        let logURL = directory.appendingPathComponent("server.log")
        if !FileManager.default.fileExists(atPath: logURL.path) { _ = FileManager.default.createFile(atPath: logURL.path, contents: nil) }
        let logHandle = try FileHandle(forWritingTo: logURL)
        let logStart = logHandle.seekToEndOfFile()
        child.standardOutput = logHandle
        child.standardError = logHandle
        child.standardInput = FileHandle.nullDevice
        try child.run()
        process = child
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            guard child.isRunning else { throw XCTSkipFailure("nats-server exited at start:\n\(log)") }
            if Self.accepts(port: port), String(decoding: log.utf8.dropFirst(Int(logStart)), as: UTF8.self).contains("Server is ready") {
                return
            }
            usleep(20_000)
        }
        kill()
        throw XCTSkipFailure("nats-server did not accept connections on port \(port) within 15 s:\n\(log)")
    }

    /// SIGSTOP: the server stops reading, so what clients send now waits in its socket buffer
    /// (and is lost with a following `kill()`).
    func pause() {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGSTOP)
    }

    /// SIGCONT after `pause()`.
    func resume() {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGCONT)
    }

    /// SIGKILL, by PID, and wait for the process to be gone.
    func kill() {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    private static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}

/// A message as a JetStream stream stored it.
struct StoredNATSMessage {
    var sequence: UInt64
    var subject: String
    var data: Data
    var headers: [String: [String]]

    func header(_ name: String) -> String? { headers[name]?.first }

    var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] }
}

/// Checks that `messages` hold each of `ids` exactly once with spout's headers, and that
/// per subject and key the payload sequence numbers grow with the stream sequence.
func assertStoredOnceInOrder(_ messages: [StoredNATSMessage], ids: [String], file: StaticString = #filePath, line: UInt = #line) {
    let stored = messages.compactMap { $0.header("Nats-Msg-Id") }
    XCTAssertEqual(stored.count, messages.count, "every message has a Nats-Msg-Id", file: file, line: line)
    XCTAssertEqual(Set(stored).count, stored.count, "no event stored twice", file: file, line: line)
    XCTAssertEqual(Set(stored), Set(ids), "the stream holds exactly the events written", file: file, line: line)
    XCTAssertEqual(messages.count, ids.count, file: file, line: line)
    var lastSequence: [String: Int] = [:]
    for message in messages {
        guard let key = message.header(NATSJetStreamSink.keyHeader), let sequence = message.json?["seq"] as? Int else {
            return XCTFail("message \(message.sequence) lacks Spout-Key or a payload seq: \(message.headers)", file: file, line: line)
        }
        XCTAssertEqual(message.header(NATSJetStreamSink.typeHeader), "Created", file: file, line: line)
        XCTAssertEqual(message.header("h"), "v", "the event's own headers", file: file, line: line)
        let orderKey = message.subject + "/" + key
        XCTAssertGreaterThan(sequence, lastSequence[orderKey] ?? -1, "order of key \(orderKey) at stream sequence \(message.sequence)",
                             file: file, line: line)
        lastSequence[orderKey] = sequence
    }
}

/// The tests' own JetStream client (libnats): creates streams and reads back what spout published.
final class JetStreamTestClient {
    private var connection: OpaquePointer?
    private var jetStream: OpaquePointer?

    init(_ url: String) throws {
        try check(natsConnection_ConnectTo(&connection, url), "connect to \(url)")
        try check(natsConnection_JetStream(&jetStream, connection, nil), "JetStream context")
    }

    /// Over TLS, trusting the test CA and presenting the test client certificate.
    init(_ url: String, tls certificates: TestCertificates) throws {
        var options: OpaquePointer?
        try check(natsOptions_Create(&options), "options")
        defer { natsOptions_Destroy(options) }
        try check(natsOptions_SetURL(options, url), "URL")
        try check(natsOptions_SetSecure(options, true), "TLS")
        try check(natsOptions_LoadCATrustedCertificates(options, certificates.ca), "CA")
        try check(natsOptions_LoadCertificatesChain(options, certificates.client, certificates.clientKey), "client certificate")
        try check(natsConnection_Connect(&connection, options), "connect to \(url)")
        try check(natsConnection_JetStream(&jetStream, connection, nil), "JetStream context")
    }

    deinit {
        if let jetStream { jsCtx_Destroy(jetStream) }
        if let connection { natsConnection_Destroy(connection) }
    }

    func addStream(_ name: String, subjects: [String]) throws {
        var config = jsStreamConfig()
        jsStreamConfig_Init(&config)
        config.Storage = js_FileStorage
        var code = jsErrCode(0)
        var pointers = subjects.map { strdup($0) }
        defer { pointers.forEach { free($0) } }
        let status = name.withCString { name in
            pointers.withUnsafeMutableBufferPointer { buffer in
                buffer.withMemoryRebound(to: UnsafePointer<CChar>?.self) { rebound in
                    config.Name = name
                    config.Subjects = rebound.baseAddress
                    config.SubjectsLen = Int32(rebound.count)
                    return js_AddStream(nil, jetStream, &config, nil, &code)
                }
            }
        }
        try check(status, "add stream \(name) (JetStream error \(code.rawValue))")
    }

    func deleteStream(_ name: String) throws {
        var code = jsErrCode(0)
        try check(js_DeleteStream(jetStream, name, nil, &code), "delete stream \(name) (JetStream error \(code.rawValue))")
    }

    struct StreamSummary {
        var messages: UInt64
        var firstSequence: UInt64
        var lastSequence: UInt64
        var subjects: [String]
        var fileStorage: Bool
    }

    /// nil when the stream does not exist.
    func stream(_ name: String) throws -> StreamSummary? {
        var info: UnsafeMutablePointer<jsStreamInfo>?
        var code = jsErrCode(0)
        let status = js_GetStreamInfo(&info, jetStream, name, nil, &code)
        if status == NATS_NOT_FOUND { return nil }
        try check(status, "stream info \(name)")
        guard let info else { return nil }
        defer { jsStreamInfo_Destroy(info) }
        var subjects: [String] = []
        if let config = info.pointee.Config {
            for index in 0..<Int(config.pointee.SubjectsLen) {
                if let subject = config.pointee.Subjects?[index] { subjects.append(String(cString: subject)) }
            }
        }
        let state = info.pointee.State
        return StreamSummary(messages: state.Msgs, firstSequence: state.FirstSeq, lastSequence: state.LastSeq, subjects: subjects,
                             fileStorage: info.pointee.Config?.pointee.Storage == js_FileStorage)
    }

    /// Message count, 0 while the stream is missing or the server unreachable.
    func count(_ stream: String) -> UInt64 { ((try? self.stream(stream)) ?? nil)?.messages ?? 0 }

    /// Every message of the stream, in sequence order.
    func messages(_ stream: String) throws -> [StoredNATSMessage] {
        guard let summary = try self.stream(stream), summary.messages > 0 else { return [] }
        var result: [StoredNATSMessage] = []
        for sequence in summary.firstSequence...summary.lastSequence {
            var message: OpaquePointer?
            var code = jsErrCode(0)
            let status = js_GetMsg(&message, jetStream, stream, sequence, nil, &code)
            if status == NATS_NOT_FOUND { continue }
            try check(status, "get message \(sequence) of \(stream)")
            defer { natsMsg_Destroy(message) }
            let length = Int(natsMsg_GetDataLength(message))
            let data = natsMsg_GetData(message).map { Data(bytes: $0, count: length) } ?? Data()
            var headers: [String: [String]] = [:]
            var keys: UnsafeMutablePointer<UnsafePointer<CChar>?>?
            var keyCount: Int32 = 0
            if natsMsgHeader_Keys(message, &keys, &keyCount) == NATS_OK, let keys {
                for index in 0..<Int(keyCount) {
                    guard let key = keys[index] else { continue }
                    var values: UnsafeMutablePointer<UnsafePointer<CChar>?>?
                    var valueCount: Int32 = 0
                    if natsMsgHeader_Values(message, key, &values, &valueCount) == NATS_OK, let values {
                        headers[String(cString: key)] = (0..<Int(valueCount)).compactMap { values[$0].map { String(cString: $0) } }
                        free(values)
                    }
                }
                free(keys)
            }
            result.append(StoredNATSMessage(sequence: sequence, subject: String(cString: natsMsg_GetSubject(message)), data: data,
                                            headers: headers))
        }
        return result
    }

    private func check(_ status: natsStatus, _ what: String) throws {
        guard status == NATS_OK else {
            throw XCTSkipFailure("\(what): \(String(cString: natsStatus_GetText(status)))")
        }
    }
}
