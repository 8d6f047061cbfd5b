import CLibPQ
import Foundation

extension PostgresConnection {
    /// The database a connection string names, as libpq picks it, without connecting: `dbname`
    /// (a URL's path), else `PGDATABASE`, else the user name (`user`, `PGUSER`, the login
    /// name) — libpq's own defaults. The default CloudEvents source names it before Spout
    /// connects (the sink is made first). "postgres" if the string does not parse (the
    /// connection then fails with libpq's reason).
    public static func databaseName(_ conninfo: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        var values: [String: String] = [:]
        if let options = PQconninfoParse(conninfo, nil) {
            defer { PQconninfoFree(options) }
            var option = options
            while let keyword = option.pointee.keyword {
                if let value = option.pointee.val { values[String(cString: keyword)] = String(cString: value) }
                option += 1
            }
        } else {
            return "postgres"
        }
        func nonEmpty(_ value: String?) -> String? { value.flatMap { $0.isEmpty ? nil : $0 } }
        if let name = nonEmpty(values["dbname"]) ?? nonEmpty(environment["PGDATABASE"]) ?? nonEmpty(values["user"]) ?? nonEmpty(environment["PGUSER"]) {
            return name
        }
        if let entry = getpwuid(geteuid()), let name = entry.pointee.pw_name { return String(cString: name) }
        return "postgres"
    }
}
