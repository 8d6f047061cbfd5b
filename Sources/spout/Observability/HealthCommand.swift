import ArgumentParser
import Foundation
import SpoutCore

/// `spout health`: GET /readyz from a running spout; exit 0 when ready, 1 otherwise, with the
/// reason. For container health checks without curl: one plain HTTP/1.1 request over a socket.
struct Health: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask a running spout whether it is ready (GET /readyz); exit 0 if so, 1 otherwise.",
        discussion: "The address defaults to the metrics address (--metrics-address, SPOUT_METRICS_ADDRESS or the config file), "
            + "with 127.0.0.1 for a wildcard host (0.0.0.0, ::), then to 127.0.0.1:9187.")

    @Option(name: .customLong("address"), help: ArgumentHelp("The spout to ask (default: the metrics address, else 127.0.0.1:9187).", valueName: "host:port"))
    var address: String?

    @Option(name: .customLong("metrics-address"), help: ArgumentHelp("The metrics address spout run was given. [SPOUT_METRICS_ADDRESS]", valueName: "host:port"))
    var metricsAddressFlag: String?

    @Option(name: .customLong("timeout"), help: ArgumentHelp("Seconds to wait for the answer.", valueName: "seconds"))
    var timeout: Double = 5

    func run() async throws {
        try await reportingErrors(Settings.Flags(flags: [.metricsAddress: metricsAddressFlag])) { settings in
            let target = try Self.target(address: address, configured: try ObservabilityOptions.address(settings))
            guard timeout > 0, timeout <= 3600 else { throw SpoutError.invalidOption("--timeout \(timeout) is out of range: use 0 to 3600 seconds") }
            switch HealthProbe.get(host: target.host, port: target.port, path: "/readyz", timeout: timeout) {
            case let .success((status, body)):
                let text = body.trimmingCharacters(in: .whitespacesAndNewlines)
                print(text.isEmpty ? "HTTP \(status)" : text)
                if status != 200 { throw ExitCode(1) }
            case let .failure(problem):
                print("{\"status\":\"unreachable\",\"reason\":\"\(problem.description.replacingOccurrences(of: "\"", with: "'"))\"}")
                throw ExitCode(1)
            }
        }
    }
}

extension Health {
    /// `--address`, else the metrics address (a wildcard host asked on loopback), else 127.0.0.1:9187.
    static func target(address: String?, configured: (host: String, port: Int)?) throws(SpoutError) -> (host: String, port: Int) {
        var target: (host: String, port: Int) = ("127.0.0.1", 9187)
        if let address {
            guard let parsed = ObservabilityOptions.parseAddress(address) else {
                throw SpoutError.invalidOption("--address \(address) is not an address: use HOST:PORT, e.g. 127.0.0.1:9187")
            }
            target = parsed
        } else if let configured {
            target = configured
        }
        if ["0.0.0.0", "::", "*"].contains(target.host) { target.host = target.host == "::" ? "::1" : "127.0.0.1" }
        return target
    }
}

/// One HTTP/1.1 GET over a blocking socket with a deadline.
enum HealthProbe {
    static func get(host: String, port: Int, path: String, timeout: Double) -> Result<(Int, String), ProbeFailure> {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else {
            return .failure(ProbeFailure("cannot resolve \(host)"))
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address for \(host)"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let info = entry {
            entry = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var limit = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1e6))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
                lastError = "cannot connect to \(host):\(port): \(String(cString: strerror(errno)))"
                continue
            }
            let request = Array("GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nConnection: close\r\n\r\n".utf8)
            guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
                return .failure(ProbeFailure("cannot send to \(host):\(port): \(String(cString: strerror(errno)))"))
            }
            var response: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while response.count < 1 << 20 {
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if count == 0 { break }
                guard count > 0 else { return .failure(ProbeFailure("no answer from \(host):\(port) within \(timeout) s")) }
                response += buffer[..<count]
            }
            let text = String(decoding: response, as: UTF8.self)
            // "HTTP/1.1 200 OK\r\n…\r\n\r\nbody"
            let statusLine = text.prefix { $0 != "\r" && $0 != "\n" }.split(separator: " ")
            guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/"), let status = Int(statusLine[1]) else {
                return .failure(ProbeFailure("\(host):\(port) did not answer HTTP"))
            }
            let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
            return .success((status, body))
        }
        return .failure(ProbeFailure(lastError))
    }

    struct ProbeFailure: Error {
        let description: String
        init(_ description: String) { self.description = description }
    }
}
