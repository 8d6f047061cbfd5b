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
        let parsed = try Self.parse(conninfo)
        target = parsed.target
        // Defaults first: the user's URL/DSN (expanded from dbname) overrides them. TCP
        // keepalives find a silently dead peer in about a minute instead of hours; a connect
        // attempt gives up after 10 s (per host of a multi-host URL) instead of hanging on an
        // unreachable address, so a reconnecting relay tries again.
        var keywords = ["keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "connect_timeout",
                        "dbname", "client_encoding", "fallback_application_name"]
        var values = ["1", "30", "10", "3", "10", conninfo, "UTF8", applicationName]
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
            var detail = Redaction.scrub(Self.oneLine(String(cString: PQerrorMessage(connection))), secrets: parsed.secrets)
            if let problem = TLSProblem(libpqMessage: detail) { detail += "; " + problem.description }
            PQfinish(connection)
            throw .connectionFailed(target: target, detail: detail)
        }
        handle = connection
        // libpq prints server NOTICEs raw to stderr ("relation … already exists, skipping"):
        // Spout reports what matters itself, escaped. The receiver keeps the one notice that
        // matters to a stream (see `Notices`).
        PQsetNoticeReceiver(connection, { context, result in
            guard let context, let result else { return }
            Unmanaged<Notices>.fromOpaque(context).takeUnretainedValue().receive(result)
        }, Unmanaged.passUnretained(notices).toOpaque())
    }

    /// What the server said in notices that Spout must act on. PostgreSQL 18's walsender
    /// decodes a change made while the publication did not exist with a WARNING ("skipped
    /// loading publication", object_not_in_prerequisite_state) and skips the change, where earlier versions
    /// fail: without this, a publication dropped and created again would lose those rows
    /// silently.
    public final class Notices {
        /// The primary message of a WARNING with SQLSTATE 55000 (object_not_in_prerequisite_state) about a publication.
        public private(set) var skippedPublication: String?

        fileprivate func receive(_ result: OpaquePointer) {
            func field(_ code: Character) -> String? {
                guard let ascii = code.asciiValue, let value = PQresultErrorField(result, Int32(ascii)) else { return nil }
                return String(cString: value)
            }
            guard skippedPublication == nil, field("C") == "55000", field("V") == "WARNING" else { return }
            let message = field("M") ?? "a publication was skipped"
            guard message.localizedCaseInsensitiveContains("publication") else { return }
            skippedPublication = message
        }
    }

    /// Owned here, referenced unretained by libpq's notice receiver, which only runs inside
    /// libpq calls on `handle`.
    public let notices = Notices()

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

    /// The TLS protocol and cipher of this connection (`TLSv1.3`, `TLS_AES_256_GCM_SHA384`), or
    /// nil when it is not encrypted: what `spout status` and `spout check` show.
    public var encryption: (protocol: String, cipher: String)? {
        guard PQsslInUse(handle) == 1 else { return nil }
        func attribute(_ name: String) -> String { PQsslAttribute(handle, name).map { String(cString: $0) } ?? "?" }
        return (attribute("protocol"), attribute("cipher"))
    }

    /// `encrypted (TLSv1.3, TLS_AES_256_GCM_SHA384)` or `not encrypted`.
    public var encryptionDescription: String {
        encryption.map { "encrypted (\($0.protocol), \($0.cipher))" } ?? "not encrypted"
    }

    /// `host:port` of the server this connection reached (one of a multi-host URL's).
    public var server: String {
        let host = PQhost(handle).map { String(cString: $0) } ?? "?"
        let port = PQport(handle).map { String(cString: $0) } ?? "?"
        return host.hasPrefix("/") ? "\(host) (socket, port \(port))" : "\(host):\(port)"
    }
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
        (try? parse(conninfo).target) ?? Redaction.scrub(Redaction.conninfo(conninfo), secrets: Redaction.secrets(in: conninfo))
    }

    /// libpq's reading of the connection string: the target for messages and the strings
    /// (passwords) that no message may contain. Parse errors never echo the input: libpq
    /// quotes the offending part (`invalid percent-encoded token: "pa%zzss"`), password and all.
    /// How errors about the connection string itself begin (spout names where it was set).
    public static let urlErrorPrefix = "the database URL"

    static func parse(_ conninfo: String) throws(SpoutError) -> (target: String, secrets: [String]) {
        var secrets = Redaction.secrets(in: conninfo)
        let shown = Redaction.scrub(Redaction.conninfo(conninfo), secrets: secrets)
        var errorMessage: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(conninfo, &errorMessage) else {
            let reason = errorMessage.map { message in
                defer { PQfreemem(message) }
                return withoutQuotedInput(oneLine(String(cString: message)))
            } ?? "out of memory"
            throw .invalidOption("\(urlErrorPrefix) \(shown) is not a valid libpq URL or DSN: \(Redaction.scrub(reason, secrets: secrets)); "
                                 + "percent-encode special characters in a URL's password (e.g. %40 for @, %2F for /)")
        }
        defer { PQconninfoFree(options) }
        var values: [String: String] = [:]
        var option = options
        while let keyword = option.pointee.keyword {
            if let value = option.pointee.val { values[String(cString: keyword)] = String(cString: value) }
            option += 1
        }
        if let password = values["password"] { secrets.append(password) }
        if let password = values["sslpassword"] { secrets.append(password) }
        // `postgres://u:pa/ss@host` is a password with a "/" to a user, but libpq stops the
        // user information at the first "/" and reads host "u", port "pa", database "ss@host":
        // every later message would show the password. Refuse it before connecting.
        if Redaction.isURI(conninfo), values["password"] == nil, let span = Redaction.userinfo(in: conninfo),
           conninfo[span].contains(":") {
            throw .invalidOption("\(urlErrorPrefix) \(shown) has a \"/\" before its last \"@\", which libpq does not read as "
                                 + "user:password@: percent-encode \"/\" in the password as %2F (or \"@\" in a database name as %40)")
        }
        let user = values["user"].map { "\($0)@" } ?? ""
        let database = values["dbname"].map { "/\($0)" } ?? ""
        return (Redaction.scrub(user + hostList(host: values["host"] ?? values["hostaddr"], port: values["port"]) + database, secrets: secrets),
                secrets)
    }

    /// `host:port`, or for a multi-host URL (libpq's `host=a,b port=1,2`) `a:1,b:2`; one port
    /// applies to every host.
    static func hostList(host: String?, port: String?) -> String {
        let hosts = (host ?? "localhost").split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let ports = port.map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) } ?? []
        return hosts.enumerated().map { index, host in
            let port = ports.count == hosts.count ? ports[index] : ports.first
            let shown = host.isEmpty ? "localhost" : host
            return port.map { $0.isEmpty ? shown : "\(shown):\($0)" } ?? shown
        }.joined(separator: ",")
    }

    /// libpq's parse errors end in the input they choke on, in double quotes; a quoted
    /// character or two (`matching "]"`) is libpq's own text.
    private static func withoutQuotedInput(_ message: String) -> String {
        var result = ""
        var quoted: String?
        for character in message {
            if character == "\"" {
                if let text = quoted, text.count <= 2 { result += "\"\(text)\"" }
                quoted = quoted == nil ? "" : nil
            } else if quoted != nil {
                quoted?.append(character)
            } else {
                result.append(character)
            }
        }
        return result.replacingOccurrences(of: ": ;", with: ";").trimmingCharacters(in: CharacterSet(charactersIn: " :"))
    }
}

private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let copies = strings.map { strdup($0) }
    defer { copies.forEach { free($0) } }
    var pointers = copies.map { UnsafePointer($0) }
    pointers.append(nil)
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
