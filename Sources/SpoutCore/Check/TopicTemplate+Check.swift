/// What `spout check` can know of the topics before any row: the one topic of a template
/// without placeholders, or a pattern standing for every topic the template can render.
extension TopicTemplate {
    /// The topic every event gets, when the template has no placeholders.
    public var fixedTopic: String? {
        guard segments.count == 1, case let .literal(text) = segments[0] else { return nil }
        return text
    }

    /// The template with each placeholder replaced by `placeholder` (`outbox.event.{aggregate_type}`
    /// → `outbox.event.*`).
    public func pattern(placeholder: String) -> String {
        segments.map { segment in
            switch segment {
            case let .literal(text): text
            case .column: placeholder
            }
        }.joined()
    }

    /// A NATS subject filter covering every subject the template can render: a token with a
    /// placeholder anywhere in it becomes `*` (`orders-{region}.created` → `*.created`).
    public var subjectPattern: String {
        let marker = "\u{0}"
        return pattern(placeholder: marker).split(separator: ".", omittingEmptySubsequences: false)
            .map { $0.contains(marker) ? "*" : String($0) }.joined(separator: ".")
    }
}
