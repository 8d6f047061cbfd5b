/// One line of `spout check`: what was checked, how it went, what was found and, for a
/// failure or warning, what to do about it (the SQL, the server setting, the flag).
public struct CheckResult: Sendable, Equatable {
    public enum Status: String, Sendable {
        /// Fine for a run.
        case pass
        /// A run would fail here.
        case fail
        /// A run works, but something deserves a look (does not fail the check).
        case warn
        /// Not checked: an earlier check it depends on failed (`detail` says which).
        case skip
    }

    public var name: String
    public var status: Status
    public var detail: String
    public var fix: String?

    public init(_ name: String, _ status: Status, _ detail: String, fix: String? = nil) {
        self.name = name
        self.status = status
        self.detail = detail
        self.fix = fix
    }

    public static func pass(_ name: String, _ detail: String) -> Self { Self(name, .pass, detail) }
    public static func fail(_ name: String, _ detail: String, fix: String?) -> Self { Self(name, .fail, detail, fix: fix) }
    public static func warn(_ name: String, _ detail: String, fix: String? = nil) -> Self { Self(name, .warn, detail, fix: fix) }
    public static func skip(_ name: String, because reason: String) -> Self { Self(name, .skip, reason) }
}
