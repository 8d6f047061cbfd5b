/// What happens to a poison event: one that cannot be mapped (a null id, a null or empty topic
/// placeholder, malformed headers) or that the sink refuses for good (too large, an invalid
/// topic, no permission). `--on-poison`.
public enum PoisonPolicy: Sendable, Equatable {
    /// Spout stops with the error after delivering and confirming what came before; the slot
    /// stays before the event (the default: nothing is ever passed over unseen).
    case stop
    /// A dead-letter record (`DeadLetter`) takes the event's place, published to `topic` on the
    /// same sink (stdout: a JSON line on stderr); once it is acknowledged the event counts as
    /// delivered and the LSN moves past it.
    case deadLetter(topic: String)
    /// Logged at warning level with the event's id and the error, counted, and passed over.
    case skip

    public static let defaultDeadLetterTopic = "outbox.dead-letter"

    /// The value of `--on-poison` (`stop`, `dead-letter`, `skip`); nil for anything else.
    public init?(name: String, deadLetterTopic: String = PoisonPolicy.defaultDeadLetterTopic) {
        switch name {
        case "stop": self = .stop
        case "dead-letter": self = .deadLetter(topic: deadLetterTopic)
        case "skip": self = .skip
        default: return nil
        }
    }

    public var name: String {
        switch self {
        case .stop: "stop"
        case .deadLetter: "dead-letter"
        case .skip: "skip"
        }
    }

    /// The `topic` dimension of the poison counters for an event whose topic is unknown
    /// (its row could not be mapped).
    public static let unmappedTopic = "_unmapped"
}

/// The dead-letter record: a JSON object, the payload of an event of `source` `.deadLetter`.
///
///     {"id": "42", "topic": "orders", "error": "...", "lsn": "0/16B3748",
///      "row": {"id": "42", "aggregate_type": null, ...}}            (a row that cannot be mapped)
///      "event": {the stdout line of the event}                      (an event the sink refused)
///
/// `id` and `topic` are null when they could not be read; `lsn` is the commit LSN of the event's
/// transaction (for a row that cannot be mapped, where its commit record starts, as in the
/// error `--on-poison stop` prints), null when the sink got the event before its commit.
public enum DeadLetter {
    /// The dead-letter event's `type`.
    public static let eventType = "spout.dead-letter"

    /// A row that cannot be mapped: `row` holds each column's text (null for SQL NULL).
    public static func event(unmappable row: [(name: String, value: String?)], id: String?, error: String, lsn: LSN,
                             position: Int, committedAt: PostgresTimestamp, topic: String) -> OutboxEvent {
        var payload = head(id: id, topic: nil, error: error, lsn: lsn)
        payload.append(contentsOf: ",\"row\":{".utf8)
        for (index, column) in row.enumerated() {
            if index > 0 { payload.append(UInt8(ascii: ",")) }
            JSONWriter.appendString(column.name, to: &payload)
            payload.append(UInt8(ascii: ":"))
            if let value = column.value { JSONWriter.appendString(value, to: &payload) } else { payload.append(contentsOf: "null".utf8) }
        }
        payload.append(contentsOf: "}}".utf8)
        // Stable across restarts: the row's id, else where it sits in its transaction.
        let letterID = "dead-letter:" + (id ?? "\(lsn):\(position)")
        return OutboxEvent(id: letterID, topic: topic, key: id, type: eventType, payload: payload, payloadFormat: .json,
                           headers: [], lsn: .zero, committedAt: committedAt, source: .deadLetter)
    }

    /// Payloads up to this size are part of a refused event's dead letter; a larger one (the
    /// refusal may well be its size) is left out, and `payload_omitted_bytes` says how large
    /// it was: the outbox row still holds it, by id.
    public static let maxEmbeddedPayload = 4096

    /// An event the sink refused for good, with the sink's `error`.
    public static func event(refused event: OutboxEvent, error: String, topic: String) -> OutboxEvent {
        var payload = head(id: event.id, topic: event.topic, error: error, lsn: event.lsn == .zero ? nil : event.lsn)
        var shown = event
        if event.payload.count > maxEmbeddedPayload {
            payload.append(contentsOf: ",\"payload_omitted_bytes\":".utf8)
            JSONWriter.appendDecimal(UInt64(event.payload.count), to: &payload)
            shown.payload = Array("null".utf8)
            shown.payloadFormat = .json
        }
        payload.append(contentsOf: ",\"event\":".utf8)
        StdoutSink.appendJSONLine(shown, to: &payload)
        payload.removeLast() // the line break
        payload.append(UInt8(ascii: "}"))
        return OutboxEvent(id: "dead-letter:" + event.id, topic: topic, key: event.key, type: eventType, payload: payload,
                           payloadFormat: .json, headers: [], lsn: event.lsn, committedAt: event.committedAt, source: .deadLetter)
    }

    private static func head(id: String?, topic: String?, error: String, lsn: LSN?) -> [UInt8] {
        var output = Array("{\"id\":".utf8)
        if let id { JSONWriter.appendString(id, to: &output) } else { output.append(contentsOf: "null".utf8) }
        output.append(contentsOf: ",\"topic\":".utf8)
        if let topic { JSONWriter.appendString(topic, to: &output) } else { output.append(contentsOf: "null".utf8) }
        output.append(contentsOf: ",\"error\":".utf8)
        JSONWriter.appendString(error, to: &output)
        output.append(contentsOf: ",\"lsn\":".utf8)
        if let lsn { JSONWriter.appendString(lsn.description, to: &output) } else { output.append(contentsOf: "null".utf8) }
        return output
    }
}
