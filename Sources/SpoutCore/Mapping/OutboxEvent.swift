/// One outbox event, ready for a sink.
public struct OutboxEvent: Equatable, Sendable {
    public enum PayloadFormat: String, Equatable, Sendable {
        /// A `json`/`jsonb` column (or a JSON value in a logical message): valid JSON text.
        case json
        /// A text column: UTF-8 text.
        case text
        /// A `bytea` column: the stored bytes.
        case binary
    }

    /// Where an event comes from. Streamed events (the WAL) carry no marker on the wire; the
    /// others say so, so consumers can tell a re-published row from a new one.
    public enum Source: UInt8, Equatable, Sendable {
        /// Decoded from the slot: an insert as it committed.
        case stream
        /// Read from the slot's exported snapshot (`--snapshot initial`, `--on-slot-lost recreate`).
        case snapshot
        /// Re-published by `spout backfill`.
        case backfill
        /// A dead-letter record standing for a poison event (`--on-poison dead-letter`).
        case deadLetter

        /// The marker's value on the wire (`source` field or header); nil for streamed events.
        public var marker: String? {
            switch self {
            case .stream: nil
            case .snapshot: "snapshot"
            case .backfill: "backfill"
            case .deadLetter: "dead-letter"
            }
        }
    }

    public struct Header: Equatable, Sendable {
        public var name: String
        public var value: String
        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    /// Stable event id (the outbox `id` column): brokers and consumers dedupe on it.
    public var id: String
    public var topic: String
    /// Message key (the aggregate id): per-key order survives in the broker.
    public var key: String?
    public var type: String?
    public var payload: [UInt8]
    public var payloadFormat: PayloadFormat
    public var headers: [Header]
    /// The commit `end_lsn` of the event's transaction, stamped by the relay when the event
    /// leaves its spool after the Commit; zero for a sink that said it does not need it
    /// (`Sink.needsCommitLSN`), which gets events before their Commit arrives.
    public var lsn: LSN
    public var committedAt: PostgresTimestamp
    public var source: Source
    // issue 14: several sinks
    /// The sink this event goes to (`--route`, rendered by the mapper); nil: none rendered.
    public var route: String?

    public init(id: String, topic: String, key: String?, type: String?, payload: [UInt8],
                payloadFormat: PayloadFormat, headers: [Header], lsn: LSN, committedAt: PostgresTimestamp,
                source: Source = .stream) {
        self.id = id
        self.topic = topic
        self.key = key
        self.type = type
        self.payload = payload
        self.payloadFormat = payloadFormat
        self.headers = headers
        self.lsn = lsn
        self.committedAt = committedAt
        self.source = source
    }

    /// Bytes this event holds in memory, for the in-flight byte window.
    public var approximateSize: Int {
        id.utf8.count + topic.utf8.count + (key?.utf8.count ?? 0) + (type?.utf8.count ?? 0) + payload.count
            + headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count } + 64
    }
}
