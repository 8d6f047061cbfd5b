import SpoutCore

/// What `/healthz` and `/readyz` answer, from a `RelayHealth.Snapshot`.
public struct HealthVerdict: Sendable, Equatable {
    public var ok: Bool
    /// Why not, in a few words; nil when ok.
    public var reason: String?

    public init(ok: Bool, reason: String? = nil) {
        self.ok = ok
        self.reason = reason
    }

    /// The JSON body: `{"status":"ready"}` or `{"status":"not ready","reason":"…"}`.
    public func json(ok okWord: String, notOK notOKWord: String) -> String {
        guard let reason, !ok else { return "{\"status\":\"\(okWord)\"}\n" }
        return "{\"status\":\"\(notOKWord)\",\"reason\":\"\(Self.escaped(reason))\"}\n"
    }

    static func escaped(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

public enum HealthRules {
    /// The relay loop turns at least once a second (its status interval), but one connection
    /// attempt to an unreachable server may take libpq's connect_timeout (10 s) per host; this
    /// long without a turn means it is stuck.
    public static let aliveWindowSeconds = 30.0

    /// Alive: the relay loop turned in the last `aliveWindowSeconds` (also while waiting,
    /// standing by or in an outage), or spout is still setting up.
    public static func alive(_ health: RelayHealth.Snapshot) -> HealthVerdict {
        switch health.phase {
        case .starting: return HealthVerdict(ok: true)
        case .stopped: return HealthVerdict(ok: false, reason: health.haltReason.map { "halted: \($0)" } ?? "stopped")
        default:
            guard let since = health.sinceBeat, since > aliveWindowSeconds else { return HealthVerdict(ok: true) }
            return HealthVerdict(ok: false, reason: "the relay loop has not turned for \(Int(since)) s")
        }
    }

    /// Ready: streaming from PostgreSQL, the sink not in an outage longer than `unreadyAfter`
    /// seconds, the loop alive, not stopping or halted. A standby is alive but not ready.
    public static func ready(_ health: RelayHealth.Snapshot, unreadyAfter: Double) -> HealthVerdict {
        let alive = alive(health)
        guard alive.ok else { return alive }
        switch health.phase {
        case .starting: return HealthVerdict(ok: false, reason: "starting: connecting to PostgreSQL and the sink")
        case .disconnected: return HealthVerdict(ok: false, reason: "not connected to PostgreSQL: reconnecting")
        case .standby: return HealthVerdict(ok: false, reason: "standby: another client holds the slot")
        case .stopping: return HealthVerdict(ok: false, reason: "stopping")
        case .stopped: return HealthVerdict(ok: false, reason: "stopped")
        case .streaming:
            if health.sinkOutageSeconds > unreadyAfter {
                return HealthVerdict(ok: false, reason: "the sink has been unavailable for \(Int(health.sinkOutageSeconds)) s (--unready-after \(unreadyAfter.formatted))")
            }
            return HealthVerdict(ok: true)
        }
    }
}

extension Double {
    fileprivate var formatted: String { self == rounded() ? String(Int64(self)) : String(self) }
}
