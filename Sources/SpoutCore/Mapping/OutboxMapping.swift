/// How outbox rows (and `pg_logical_emit_message` events) become events (DESIGN.md §2).
public struct OutboxMapping: Equatable, Sendable {
    /// Column names, Debezium-compatible by default.
    public struct Columns: Equatable, Sendable {
        public var id = "id"
        public var aggregateType = "aggregate_type"
        public var aggregateID = "aggregate_id"
        public var eventType = "event_type"
        public var payload = "payload"
        public var headers = "headers"
        public init() {}
    }

    public var table: TableName
    public var columns: Columns
    public var topic: TopicTemplate
    /// Transactional logical messages with this prefix are events too.
    public var messagePrefix: String
    // issue 14: several sinks
    /// `--route`: the sink of each event, over columns or, where the row has no such column, its headers.
    public var route: TopicTemplate?

    public init(table: TableName, columns: Columns = Columns(), topic: TopicTemplate, messagePrefix: String = "outbox") {
        self.table = table
        self.columns = columns
        self.topic = topic
        self.messagePrefix = messagePrefix
    }
}
