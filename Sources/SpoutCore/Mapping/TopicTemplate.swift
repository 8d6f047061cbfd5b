/// A topic built from literal text and `{column}` placeholders, e.g.
/// `outbox.event.{aggregate_type}` or `{tenant_id}.{event_type}`. Parsed once.
public struct TopicTemplate: Equatable, Sendable, CustomStringConvertible {
    public enum Segment: Equatable, Sendable {
        case literal(String)
        case column(String)
    }

    public let segments: [Segment]
    public let description: String

    public init(_ text: String) throws(MappingError) {
        var segments: [Segment] = []
        var literal = ""
        var rest = Substring(text)
        while let open = rest.firstIndex(where: { $0 == "{" || $0 == "}" }) {
            guard rest[open] == "{" else { throw .invalidTopicTemplate(text, reason: "unmatched '}'") }
            literal += rest[..<open]
            guard let close = rest[open...].firstIndex(of: "}") else {
                throw .invalidTopicTemplate(text, reason: "unclosed '{'")
            }
            let name = String(rest[rest.index(after: open)..<close])
            guard !name.isEmpty, !name.contains("{") else {
                throw .invalidTopicTemplate(text, reason: "empty or nested placeholder")
            }
            if !literal.isEmpty { segments.append(.literal(literal)); literal = "" }
            segments.append(.column(name))
            rest = rest[rest.index(after: close)...]
        }
        literal += rest
        if !literal.isEmpty { segments.append(.literal(literal)) }
        guard !segments.isEmpty else { throw .invalidTopicTemplate(text, reason: "empty") }
        self.segments = segments
        self.description = text
    }

    public var columns: [String] {
        segments.compactMap { if case let .column(name) = $0 { name } else { nil } }
    }

    /// Renders the topic; `value` returns a placeholder's value or `nil` when it is null.
    func render(_ value: (String) throws(MappingError) -> String?) throws(MappingError) -> String {
        if segments.count == 1, case let .literal(text) = segments[0] { return text }
        var topic = ""
        for segment in segments {
            switch segment {
            case let .literal(text): topic += text
            case let .column(name):
                guard let part = try value(name), !part.isEmpty else { throw .emptyTopicPart(column: name) }
                topic += part
            }
        }
        return topic
    }
}
