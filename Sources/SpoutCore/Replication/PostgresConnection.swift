import CLibPQ
import Foundation

/// One libpq connection. Owns the `PGconn`; no C pointer leaves this type.
public final class PostgresConnection {
    let handle: OpaquePointer
    /// `user@host:port/dbname`, never the password: safe for logs and errors.
    public let target: String

    /// Connects with a libpq URL or key/value DSN. `replication` adds
    /// `replication=database` (a walsender that also accepts plain SQL).
    public init(_ conninfo: String, replication: Bool = false, applicationName: String = "spout") throws(SpoutError) {
        target = Self.describe(conninfo)
        // Defaults first: the user's URL/DSN (expanded from dbname) overrides them. TCP
        // keepalives find a silently dead peer in about a minute instead of hours.
        var keywords = ["keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                        "dbname", "client_encoding", "fallback_application_name"]
        var values = ["1", "30", "10", "3", conninfo, "UTF8", applicationName]
        if replication {
            keywords.append("replication")
            values.append("database")
        }
        // expand_dbname = 1: the first dbname may be a whole URL/DSN; later keywords override it.
        let connection = withCStrings(keywords) { keywordPointers in
            withCStrings(values) { valuePointers in PQconnectdbParams(keywordPointers, valuePointers, 1) }
        }
        guard let connection else { throw .connectionFailed(target: target, detail: "out of memory") }
        guard PQstatus(connection) == CONNECTION_OK else {
            let detail = Self.oneLine(String(cString: PQerrorMessage(connection)))
            PQfinish(connection)
            throw .connectionFailed(target: target, detail: detail)
        }
        // libpq prints server NOTICEs raw to stderr ("relation … already exists, skipping"):
        // Spout reports what matters itself, escaped.
        PQsetNoticeProcessor(connection, { _, _ in }, nil)
        handle = connection
    }

    deinit { PQfinish(handle) }

    /// `spout ROLE host=HOST pid=PID`: what `pg_stat_activity` and a "slot in use" error show of
    /// Spout's connections, so people stop the right process (not the walsender's backend).
    /// PostgreSQL keeps 63 bytes of printable ASCII.
    public static func applicationName(_ role: String) -> String {
        var host = [CChar](repeating: 0, count: 256)
        let hostName = gethostname(&host, host.count) == 0 ? String(cString: host) : "?"
        let name = "spout \(role) host=\(hostName) pid=\(getpid())"
        return String(String.UnicodeScalarView(name.unicodeScalars.filter { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F }).prefix(63))
    }

    public var serverVersion: Int { Int(PQserverVersion(handle)) }
    var socket: Int32 { PQsocket(handle) }

    /// Runs one statement (simple query protocol) and returns its rows as text.
    @discardableResult
    public func query(_ sql: String, context: @autoclosure () -> String) throws(SpoutError) -> [[String?]] {
        guard let result = PQexec(handle, sql) else {
            throw .connectionLost(detail: Self.oneLine(String(cString: PQerrorMessage(handle))))
        }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_TUPLES_OK, PGRES_COMMAND_OK:
            var rows: [[String?]] = []
            let columns = PQnfields(result)
            for row in 0..<PQntuples(result) {
                rows.append((0..<columns).map { column in
                    PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
                })
            }
            return rows
        default:
            throw error(from: result, context: context())
        }
    }

    /// The error in a failed result; a missing SQLSTATE means the connection itself failed.
    func error(from result: OpaquePointer, context: String) -> SpoutError {
        func field(_ code: Character) -> String? {
            guard let ascii = code.asciiValue, let value = PQresultErrorField(result, Int32(ascii)) else { return nil }
            return String(cString: value)
        }
        guard let sqlState = field("C") else {
            return .connectionLost(detail: Self.oneLine(String(cString: PQerrorMessage(handle))))
        }
        return .server(ServerError(sqlState: sqlState, message: field("M") ?? "error", detail: field("D"), hint: field("H")),
                       while: context)
    }

    var lastErrorMessage: String { Self.oneLine(String(cString: PQerrorMessage(handle))) }

    /// libpq messages span lines ("connection to server ... failed: FATAL: ..."): one line for logs.
    static func oneLine(_ message: String) -> String {
        message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }.joined(separator: "; ")
    }

    /// `user@host:port/dbname` from a URL or DSN, built from libpq's own parse so that no
    /// password (in the URL, a `password=` key or a query parameter) can slip through.
    public static func describe(_ conninfo: String) -> String {
        var errorMessage: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(conninfo, &errorMessage) else {
            if let errorMessage { PQfreemem(errorMessage) }
            return "(unparseable connection string)"
        }
        defer { PQconninfoFree(options) }
        var values: [String: String] = [:]
        var option = options
        while let keyword = option.pointee.keyword {
            if let value = option.pointee.val { values[String(cString: keyword)] = String(cString: value) }
            option += 1
        }
        let host = values["host"] ?? values["hostaddr"] ?? "localhost"
        let user = values["user"].map { "\($0)@" } ?? ""
        let port = values["port"].map { ":\($0)" } ?? ""
        let database = values["dbname"].map { "/\($0)" } ?? ""
        return user + host + port + database
    }
}

private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let copies = strings.map { strdup($0) }
    defer { copies.forEach { free($0) } }
    var pointers = copies.map { UnsafePointer($0) }
    pointers.append(nil)
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
