import SpoutCore
/// What an error reply from Redis means for the sink.
enum RedisErrorReply {
    /// Refusals that pass by themselves: memory freed, dataset loaded, script finished, disk
    /// fixed, failover done.
    static func isTransient(_ text: String) -> Bool {
        let code = text.prefix { $0 != " " }
        switch code {
        case "OOM", "LOADING", "BUSY", "MISCONF", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS":
            return true
        default:
            return text.contains("max number of clients reached")
        }
    }

    /// XADD with an explicit id at or below the stream's top item.
    static func isTakenID(_ text: String) -> Bool {
        text.contains("equal or smaller than the target stream top item")
    }

    /// What to do about a permanent refusal.
    static func hint(_ text: String, url: RedisURL) -> String {
        let code = text.prefix { $0 != " " }
        switch code {
        case "WRONGTYPE": return " (the key exists and is not a stream: delete or rename it, or route the topic elsewhere with --topic)"
        case "NOPERM": return " (the Redis user lacks a permission: grant it MULTI, EXEC, XADD and, for --redis-ids lsn, XINFO and XRANGE on the topic keys, e.g. ACL SETUSER <user> +multi +exec +xadd +xinfo +xrange ~*)"
        case "NOAUTH": return " (Redis requires a password: give it in the URL, redis://:password@\(url.address))"
        case "MOVED", "ASK": return " (Redis Cluster is not supported: point --sink at a standalone server)"
        default:
            if text.contains("unknown command") { return " (streams need Redis 5 or newer)" }
            return ""
        }
    }
}
