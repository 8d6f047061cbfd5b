import CRabbitMQ
import SpoutCore

/// Lays out one event as a `basic.publish` in buffers reused from event to event, so publishing
/// allocates nothing once they have grown: the strings in one byte buffer, the headers table in
/// one entry buffer, the properties on the stack.
///
/// | AMQP | from the event |
/// |---|---|
/// | routing key | topic |
/// | `message_id` | id |
/// | `type` | event type (left out when none) |
/// | `content_type` | `application/json`, `text/plain; charset=utf-8` or `application/octet-stream` by payload column type |
/// | `delivery_mode` | 2 (persistent) |
/// | `timestamp` | commit time, seconds since 1970 |
/// | headers | the row's headers, then `spout-key` (the key) and `spout-source` (snapshot, backfill, dead-letter) |
/// | body | payload, bytes as stored |
///
/// With `--envelope cloudevents`, binary mode as the CloudEvents RabbitMQ binding has it: the
/// attributes as `ce-` headers (instead of the row's headers and `spout-*`), `datacontenttype`
/// as `content_type`; the other properties stay. Dead letters are never enveloped.
final class AMQPMessage {
    /// `--envelope cloudevents`.
    var cloudEvents: CloudEventEnvelope?
    private var bytes: [UInt8] = []
    /// Start and end offsets in `bytes`, two per string.
    private var spans: [Int] = []
    private var entries: UnsafeMutablePointer<amqp_table_entry_t>
    private var entryCapacity = 16
    private var exchange: [UInt8] = []

    init() {
        bytes.reserveCapacity(4096)
        spans.reserveCapacity(64)
        entries = .allocate(capacity: entryCapacity)
    }

    deinit { entries.deallocate() }

    func setExchange(_ name: String) { exchange = Array(name.utf8) }

    /// Why the event cannot be an AMQP message (short strings hold at most 255 bytes); nil when it can.
    static func problem(_ event: OutboxEvent) -> String? {
        if event.topic.utf8.count > 255 { return "topic \"\(event.topic.prefix(60))…\" is longer than 255 bytes, the most an AMQP routing key holds: shorten --topic" }
        if event.id.utf8.count > 255 { return "the event id is longer than 255 bytes, the most an AMQP message_id holds" }
        if let type = event.type, type.utf8.count > 255 { return "the event type is longer than 255 bytes, the most an AMQP type property holds" }
        for header in event.headers where header.name.utf8.count > 255 {
            return "header \"\(header.name.prefix(60))…\" has a name longer than 255 bytes, the most an AMQP header name holds"
        }
        return nil
    }

    private func add(_ text: String, prefix: StaticString = "") {
        spans.append(bytes.count)
        bytes.append(contentsOf: UnsafeBufferPointer(start: prefix.utf8Start, count: prefix.utf8CodeUnitCount))
        bytes.append(contentsOf: text.utf8)
        spans.append(bytes.count)
    }

    private func add(_ text: StaticString) {
        spans.append(bytes.count)
        bytes.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
        spans.append(bytes.count)
    }

    /// Publishes `event` (checked by `problem`) on `connection`; returns librabbitmq's status.
    func publish(_ event: OutboxEvent, on connection: AMQPConnection) -> Int32 {
        bytes.removeAll(keepingCapacity: true)
        spans.removeAll(keepingCapacity: true)
        add(event.topic)
        add(event.id)
        if let type = event.type { add(type) }
        var headerCount = 0
        if let cloudEvents, event.source != .deadLetter {
            cloudEvents.forEachAttribute(of: event) { name, value in
                add(name, prefix: "ce-")
                add(value)
                headerCount += 1
            }
            add(CloudEventEnvelope.contentType(of: event))
        } else {
            for header in event.headers where header.name != AMQPSink.keyHeader && header.name != AMQPSink.sourceHeader {
                add(header.name)
                add(header.value)
                headerCount += 1
            }
            if let key = event.key {
                add(AMQPSink.keyHeader)
                add(key)
                headerCount += 1
            }
            if let source = event.source.marker {
                add(AMQPSink.sourceHeader)
                add(source)
                headerCount += 1
            }
            switch event.payloadFormat {
            case .json: add("application/json" as StaticString)
            case .text: add("text/plain; charset=utf-8" as StaticString)
            case .binary: add("application/octet-stream" as StaticString)
            }
        }
        if headerCount > entryCapacity {
            entries.deallocate()
            entryCapacity = max(headerCount, entryCapacity * 2)
            entries = .allocate(capacity: entryCapacity)
        }
        let entries = self.entries
        let spans = self.spans
        let hasType = event.type != nil
        let timestamp = UInt64(max(0, event.committedAt.unixMicroseconds / 1_000_000))
        return bytes.withUnsafeBufferPointer { buffer in
            exchange.withUnsafeBufferPointer { exchange in
                event.payload.withUnsafeBufferPointer { payload in
                    let base = UnsafeMutableRawPointer(mutating: buffer.baseAddress)
                    func string(_ index: Int) -> amqp_bytes_t {
                        let start = spans[2 * index], end = spans[2 * index + 1]
                        return amqp_bytes_t(len: end - start, bytes: base.map { $0 + start })
                    }
                    var index = 0
                    let routingKey = string(index); index += 1
                    var properties = amqp_basic_properties_t()
                    properties._flags = amqp_flags_t(AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG
                                                     | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG)
                    // The content type is the last string.
                    properties.content_type = string(spans.count / 2 - 1)
                    properties.delivery_mode = 2
                    properties.message_id = string(index); index += 1
                    properties.timestamp = timestamp
                    if hasType {
                        properties._flags |= amqp_flags_t(AMQP_BASIC_TYPE_FLAG)
                        properties.type = string(index); index += 1
                    }
                    for entry in 0..<headerCount {
                        var value = amqp_field_value_t()
                        value.kind = UInt8(ascii: "S")
                        value.value.bytes = string(index + 1)
                        entries[entry] = amqp_table_entry_t(key: string(index), value: value)
                        index += 2
                    }
                    properties.headers = amqp_table_t(num_entries: Int32(headerCount), entries: entries)
                    let exchangeBytes = amqp_bytes_t(len: exchange.count, bytes: UnsafeMutableRawPointer(mutating: exchange.baseAddress))
                    let body = amqp_bytes_t(len: payload.count, bytes: UnsafeMutableRawPointer(mutating: payload.baseAddress))
                    return withUnsafePointer(to: &properties) { properties in
                        connection.publish(exchange: exchangeBytes, routingKey: routingKey, properties: properties, body: body)
                    }
                }
            }
        }
    }
}
