import Foundation
import Logging

/// The swift-log handler behind `Log`: one line per message on stderr, written with one
/// write(2) so that lines of concurrent threads never interleave.
///
/// Text is exactly the human format spout always printed (metadata is not shown there: the
/// message already says what matters); JSON is one object per line, rendered by the project's
/// one `JSONWriter`: `time` (RFC 3339, UTC, milliseconds), `level`, `message`, then the
/// metadata in key order. Message and metadata values pass `Log.escaped` in both formats.
public struct SpoutLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    public var logLevel: Logger.Level = .info
    public let format: Log.Format
    private let output: @Sendable (String) -> Void

    public init(format: Log.Format, output: @escaping @Sendable (String) -> Void = SpoutLogHandler.standardError) {
        self.format = format
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let given = event.metadata { merged.merge(given) { _, new in new } }
        output(Self.line(format: format, level: event.level, message: event.message.description, metadata: merged))
    }

    /// One line, with its newline.
    public static func line(format: Log.Format, level: Logger.Level, message: String, metadata: Logger.Metadata = [:],
                            time: Date = Date()) -> String {
        switch format {
        case .text:
            let prefix = level >= .error ? "spout: error: " : level >= .warning ? "spout: warning: " : "spout: "
            return prefix + Log.escaped(message) + "\n"
        case .json:
            var members: [(name: String, value: JSONWriter.Value)] = [
                ("time", .string(rfc3339(time))), ("level", .string(name(of: level))), ("message", .string(Log.escaped(message))),
            ]
            for (key, value) in metadata.sorted(by: { $0.key < $1.key }) where !["time", "level", "message"].contains(key) {
                members.append((key, .string(Log.escaped(text(of: value)))))
            }
            return JSONWriter.object(members) + "\n"
        }
    }

    /// Log's four levels by their names; swift-log's others map to the nearest.
    static func name(of level: Logger.Level) -> String {
        switch level {
        case .trace, .debug: "debug"
        case .info, .notice: "info"
        case .warning: "warning"
        case .error, .critical: "error"
        }
    }

    private static func text(of value: Logger.Metadata.Value) -> String {
        switch value {
        case let .string(text): text
        case let .stringConvertible(convertible): convertible.description
        case let .array(values): values.map { text(of: $0) }.joined(separator: ",")
        case let .dictionary(values): values.sorted { $0.key < $1.key }.map { "\($0.key)=\(text(of: $0.value))" }.joined(separator: ",")
        }
    }

    /// `2026-12-01T16:50:00.123Z`.
    static func rfc3339(_ date: Date) -> String {
        // Whole milliseconds first: 0.999 is 0.99899… in binary.
        let total = Int64((date.timeIntervalSince1970 * 1000).rounded())
        var seconds = time_t(total.quotientAndRemainder(dividingBy: 1000).quotient - (total % 1000 < 0 ? 1 : 0))
        let milliseconds = Int(total - Int64(seconds) * 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(milliseconds), 3))Z"
    }

    public static let standardError: @Sendable (String) -> Void = { line in
        var line = line
        line.withUTF8 { buffer in
            guard let start = buffer.baseAddress else { return }
            var offset = 0
            while offset < buffer.count {
                let written = write(STDERR_FILENO, start + offset, buffer.count - offset)
                if written < 0 { if errno == EINTR { continue }; return }
                offset += written
            }
        }
    }
}
