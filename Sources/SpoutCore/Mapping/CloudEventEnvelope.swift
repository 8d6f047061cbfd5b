/// The CloudEvents 1.0 envelope (`--envelope cloudevents`): which context attribute each
/// outbox column becomes, for every sink. stdout writes the structured JSON format; the brokers
/// use binary mode (attributes in headers or fields, the payload as the message body as stored).
///
/// | attribute | from |
/// |---|---|
/// | `specversion` | `1.0` |
/// | `id` | the event id |
/// | `source` | `--ce-source` (default `/postgres/<db>/<table>`) |
/// | `type` | the event type; when the row has none (no column, NULL or empty), the topic |
/// | `subject` | the aggregate id, left out when NULL or empty |
/// | `time` | the commit time (RFC 3339, UTC) |
/// | `datacontenttype` | `application/json` when the payload is JSON (a json/jsonb column, or bytes that parse as JSON), else `text/plain; charset=utf-8` (text) or `application/octet-stream` (bytea) |
/// | `lsn` | the commit LSN, `X/X` |
/// | `partitionkey` | the message key (aggregate id), left out when NULL |
/// | `spoutsource` | `snapshot` or `backfill` on re-published rows, like the `source` marker |
/// | other extensions | the row's headers whose names are valid extension names (1–20 of `a-z0-9`, not one of the above); other headers are left out |
///
/// Dead-letter records are never enveloped: they are Spout's own record, not the event.
public struct CloudEventEnvelope: Equatable, Sendable {
    /// The `source` attribute of every event.
    public var source: String

    public init(source: String) {
        self.source = source
    }

    /// `/postgres/<db>/<table>`, the table schema-qualified only outside `public`; each name
    /// percent-encoded where a URI path segment needs it.
    public static func defaultSource(database: String, table: TableName) -> String {
        let name = table.schema == "public" ? percentEncoded(table.name) : percentEncoded(table.schema) + "." + percentEncoded(table.name)
        return "/postgres/" + percentEncoded(database) + "/" + name
    }

    /// Context attributes and extensions Spout sets itself: a row header of one of these names
    /// is left out rather than overwrite (or duplicate) them.
    static let reservedNames: Set<String> = [
        "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data",
        "lsn", "partitionkey", "spoutsource",
    ]

    /// Whether a row header can travel as an extension attribute: the spec allows only lower-case
    /// ASCII letters and digits, and asks for at most 20 of them.
    public static func isExtensionName(_ name: String) -> Bool {
        let bytes = name.utf8
        guard (1...20).contains(bytes.count),
              bytes.allSatisfy({ (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) })
        else { return false }
        return !reservedNames.contains(name)
    }

    /// The `type` attribute: the event type, else the topic (`type` must not be empty).
    public static func type(of event: OutboxEvent) -> String {
        if let type = event.type, !type.isEmpty { return type }
        return event.topic
    }

    /// The `subject` attribute: the aggregate id; nil when NULL or empty (`subject` must not be empty).
    public static func subject(of event: OutboxEvent) -> String? {
        guard let key = event.key, !key.isEmpty else { return nil }
        return key
    }

    /// Whether the payload is JSON: a json/jsonb column always; text and bytea when the bytes
    /// are UTF-8 and one JSON value.
    public static func payloadIsJSON(_ event: OutboxEvent) -> Bool {
        if event.payloadFormat == .json { return true }
        guard !event.payload.isEmpty, String(validating: event.payload, as: UTF8.self) != nil else { return false }
        do { try JSONScanner.validate(event.payload[...]) } catch { return false }
        return true
    }

    /// The `datacontenttype` attribute (Kafka and Redis: the `content-type` header; NATS: `ce-datacontenttype`).
    public static func contentType(of event: OutboxEvent) -> String {
        contentType(of: event, json: payloadIsJSON(event))
    }

    static func contentType(of event: OutboxEvent, json: Bool) -> String {
        if json { return "application/json" }
        return event.payloadFormat == .text ? "text/plain; charset=utf-8" : "application/octet-stream"
    }

    /// Binary mode: every context attribute and extension but `datacontenttype` (which the Kafka
    /// binding carries as `content-type`, the NATS binding as `ce-datacontenttype`) and the
    /// data, in order, by its bare name (the sink adds its binding's prefix, `ce_` or `ce-`).
    public func forEachAttribute<E: Error>(of event: OutboxEvent, _ body: (_ name: String, _ value: String) throws(E) -> Void) throws(E) {
        try body("specversion", "1.0")
        try body("id", event.id)
        try body("source", source)
        try body("type", Self.type(of: event))
        if let subject = Self.subject(of: event) { try body("subject", subject) }
        try body("time", event.committedAt.iso8601)
        try body("lsn", event.lsn.description)
        if let key = event.key { try body("partitionkey", key) }
        if let marker = event.source.marker { try body("spoutsource", marker) }
        for (index, header) in event.headers.enumerated() where Self.isExtension(at: index, of: event.headers) {
            try body(header.name, header.value)
        }
    }

    /// A header that becomes an extension: a valid name, not taken by an earlier header.
    static func isExtension(at index: Int, of headers: [OutboxEvent.Header]) -> Bool {
        let name = headers[index].name
        return isExtensionName(name) && !headers[..<index].contains { $0.name == name }
    }

    /// Structured mode: the event as one CloudEvents JSON object and a line break.
    public func appendStructured(_ event: OutboxEvent, to output: inout [UInt8]) {
        appendStructuredHead(event, to: &output)
        // The same ending as stdout's own line: `"lsn":"X/X"}` and the line break.
        StdoutSink.appendJSONLineTail(lsn: event.lsn, to: &output)
    }

    /// The structured object up to the value of its last member, `lsn` (known only after the
    /// Commit; stdout encodes the rest while the transaction is still arriving, and ends it
    /// with `StdoutSink.appendJSONLineTail`).
    public func appendStructuredHead(_ event: OutboxEvent, to output: inout [UInt8]) {
        func raw(_ text: StaticString) {
            output.append(contentsOf: UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
        }
        func member(_ name: StaticString, _ value: String) {
            raw(name)
            JSONWriter.appendString(value, to: &output)
        }
        member("{\"specversion\":\"1.0\",\"id\":", event.id)
        member(",\"source\":", source)
        member(",\"type\":", Self.type(of: event))
        if let subject = Self.subject(of: event) { member(",\"subject\":", subject) }
        raw(",\"time\":\"")
        event.committedAt.appendISO8601(to: &output)
        raw("\"")
        let json = Self.payloadIsJSON(event)
        member(",\"datacontenttype\":", Self.contentType(of: event, json: json))
        if let key = event.key { member(",\"partitionkey\":", key) }
        if let marker = event.source.marker { member(",\"spoutsource\":", marker) }
        for (index, header) in event.headers.enumerated() where Self.isExtension(at: index, of: event.headers) {
            output.append(UInt8(ascii: ","))
            JSONWriter.appendString(header.name, to: &output)
            output.append(UInt8(ascii: ":"))
            JSONWriter.appendString(header.value, to: &output)
        }
        if json {
            raw(",\"data\":")
            // One event per line: a json column keeps the line breaks it was written with.
            if event.payload.contains(where: { $0 == 0x0A || $0 == 0x0D }) {
                JSONScanner.compact(event.payload[...], into: &output)
            } else {
                output.append(contentsOf: event.payload)
            }
        } else {
            raw(",\"data_base64\":")
            JSONWriter.appendBase64(event.payload, to: &output)
        }
        raw(",\"lsn\":\"")
    }

    /// A header value as the NATS (and HTTP) binding writes it: UTF-8, with space, `"`, `%` and
    /// every byte outside printable ASCII percent-encoded. The value itself (no copy) when there
    /// is nothing to encode.
    public static func percentEncodedHeaderValue(_ value: String) -> String {
        percentEncoded(value) { $0 <= 0x20 || $0 >= 0x7F || $0 == 0x22 || $0 == 0x25 }
    }

    /// A URI path segment: every byte outside RFC 3986's unreserved characters percent-encoded.
    static func percentEncoded(_ text: String) -> String {
        percentEncoded(text) { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"): false
            default: true
            }
        }
    }

    /// `%XY` (upper-case hex) for each UTF-8 byte `encode` picks.
    private static func percentEncoded(_ text: String, where encode: (UInt8) -> Bool) -> String {
        guard text.utf8.contains(where: encode) else { return text }
        let hex = Array("0123456789ABCDEF".utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count * 3)
        for byte in text.utf8 {
            if encode(byte) {
                bytes.append(contentsOf: [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
