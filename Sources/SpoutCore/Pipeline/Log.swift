import Foundation
import Logging
import Synchronization

/// Diagnostics on stderr (events go to stdout). Never on the per-event path above debug.
///
/// The project's facade over a swift-log `Logger`: call sites stay `log.info("…")`, optionally
/// with metadata (`log.warning("…", metadata: ["slot": "\(slot)"])`), and the handler decides
/// the line: `spout: …` text by default, one JSON object per line with `--log-format json`.
public struct Log: Sendable {
    public enum Level: Int, Comparable, Sendable, CaseIterable {
        case debug, info, warning, error
        public static func < (lhs: Level, rhs: Level) -> Bool { lhs.rawValue < rhs.rawValue }

        var loggerLevel: Logger.Level {
            switch self {
            case .debug: .debug
            case .info: .info
            case .warning: .warning
            case .error: .error
            }
        }
    }

    /// How a line looks on stderr.
    public enum Format: String, Sendable, CaseIterable {
        /// `spout: …`, `spout: warning: …`, `spout: error: …`.
        case text
        /// `{"time":"…Z","level":"info","message":"…","slot":"…"}`.
        case json
    }

    /// The format of `Log()` without one: the command line sets it once it knows (`--log-format`),
    /// so that every line of one process, also an error before the options were read, has one shape.
    public static var defaultFormat: Format {
        get { Format.allCases[processFormat.load(ordering: .relaxed)] }
        set { processFormat.store(Format.allCases.firstIndex(of: newValue) ?? 0, ordering: .relaxed) }
    }
    private static let processFormat = Atomic<Int>(0)

    public var logger: Logger

    public var level: Level {
        get { Level.allCases.last { $0.loggerLevel <= logger.logLevel } ?? .debug }
        set { logger.logLevel = newValue.loggerLevel }
    }

    public var format: Format

    public init(level: Level = .info, format: Format? = nil) {
        let format = format ?? Self.defaultFormat
        self.format = format
        logger = Logger(label: "spout") { _ in SpoutLogHandler(format: format) }
        logger.logLevel = level.loggerLevel
    }

    /// Any swift-log logger, e.g. swift-log's `InMemoryLogHandler` in tests.
    public init(logger: Logger, format: Format = .text) {
        self.logger = logger
        self.format = format
    }

    public func debug(_ message: @autoclosure () -> String, metadata: @autoclosure () -> Logger.Metadata? = nil) {
        logger.debug("\(message())", metadata: metadata())
    }
    public func info(_ message: @autoclosure () -> String, metadata: @autoclosure () -> Logger.Metadata? = nil) {
        logger.info("\(message())", metadata: metadata())
    }
    public func warning(_ message: @autoclosure () -> String, metadata: @autoclosure () -> Logger.Metadata? = nil) {
        logger.warning("\(message())", metadata: metadata())
    }
    public func error(_ message: @autoclosure () -> String, metadata: @autoclosure () -> Logger.Metadata? = nil) {
        logger.error("\(message())", metadata: metadata())
    }

    /// Text from outside (row content, server messages, names) made safe for one log line or
    /// a terminal: control characters — line breaks that would forge a line, ESC sequences
    /// that drive a terminal, C1 controls, DEL — become visible escapes (`\n`, `\u{1B}`).
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var result = ""
        result.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            guard isControl(scalar) else { result.unicodeScalars.append(scalar); continue }
            switch scalar {
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            default: result += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            }
        }
        return result
    }

    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
            // Bidirectional overrides and isolates reorder what a terminal shows (CVE-2021-42574).
            || (0x202A...0x202E).contains(scalar.value) || (0x2066...0x2069).contains(scalar.value)
    }
}
