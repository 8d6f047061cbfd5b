import SpoutCore
import CRdKafka
import Foundation

/// Owns the librdkafka producer and every C resource that goes with it: the handle, its main
/// queue, and the object its callbacks fill. Nothing here decides what to retry; that is
/// `KafkaAdapter`'s job.
final class KafkaProducerHandle {
    struct Delivery {
        var ticket: UInt64
        var error: rd_kafka_resp_err_t
    }

    struct ClientError {
        var code: rd_kafka_resp_err_t
        var reason: String
    }

    enum ProduceResult {
        case queued
        case rejected(rd_kafka_resp_err_t, reason: String)
    }

    /// `--envelope cloudevents`: headers are the binding's `ce_*` attributes and `content-type`.
    let cloudEvents: CloudEventEnvelope?
    private var handle: OpaquePointer?
    private var mainQueue: OpaquePointer?
    private let callbacks: Unmanaged<Callbacks>

    // Scratch space reused by every produce call: strings back to back, NUL-terminated.
    private var text: [UInt8] = []
    private var headerSpans: [(name: Int, value: Int, length: Int)] = []
    private var fields: [rd_kafka_vu_t] = []

    /// What the C callbacks collect while `rd_kafka_poll` runs on the relay thread (delivery
    /// reports, errors); `log` is also read by the logger callback on librdkafka's threads.
    final class Callbacks {
        let log: Log
        var deliveries: [Delivery] = []
        var errors: [ClientError] = []
        init(log: Log) {
            self.log = log
            deliveries.reserveCapacity(1024)
        }
    }

    /// - Parameter properties: librdkafka properties, applied in order (later ones win).
    init(properties: [(name: String, value: String)], cloudEvents: CloudEventEnvelope? = nil, log: Log) throws(SpoutError) {
        self.cloudEvents = cloudEvents
        callbacks = Unmanaged.passRetained(Callbacks(log: log))

        guard let conf = rd_kafka_conf_new() else {
            callbacks.release()
            throw .invalidOption("kafka sink: librdkafka cannot allocate a configuration")
        }
        var errorText = [CChar](repeating: 0, count: 512)
        for (name, value) in properties where rd_kafka_conf_set(conf, name, value, &errorText, errorText.count) != RD_KAFKA_CONF_OK {
            rd_kafka_conf_destroy(conf)
            callbacks.release()
            let reason = Self.redact(Self.string(errorText), value: value, of: name)
            throw .invalidOption("--kafka-property \(name): \(reason) (see librdkafka's CONFIGURATION.md for the properties and their values)")
        }
        rd_kafka_conf_set_opaque(conf, callbacks.toOpaque())
        rd_kafka_conf_set_dr_msg_cb(conf) { _, message, opaque in
            guard let message, let opaque else { return }
            let callbacks = Unmanaged<Callbacks>.fromOpaque(opaque).takeUnretainedValue()
            let ticket = UInt64(UInt(bitPattern: message.pointee._private)) &- 1
            callbacks.deliveries.append(Delivery(ticket: ticket, error: message.pointee.err))
        }
        rd_kafka_conf_set_error_cb(conf) { _, code, reason, opaque in
            guard let opaque else { return }
            let callbacks = Unmanaged<Callbacks>.fromOpaque(opaque).takeUnretainedValue()
            callbacks.errors.append(ClientError(code: rd_kafka_resp_err_t(rawValue: code), reason: reason.map { String(cString: $0) } ?? ""))
        }
        rd_kafka_conf_set_log_cb(conf) { client, level, facility, message in
            guard let client, let opaque = rd_kafka_opaque(client) else { return }
            let log = Unmanaged<Callbacks>.fromOpaque(opaque).takeUnretainedValue().log
            let text = "librdkafka \(facility.map { String(cString: $0) } ?? ""): \(message.map { String(cString: $0) } ?? "")"
            // Configuration warnings matter to the user; connection chatter repeats during an
            // outage and is summarised by the delivery engine's outage warning instead.
            if level <= 4, let facility, String(cString: facility) == "CONFWARN" { log.warning(text) } else { log.debug(text) }
        }

        guard let handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errorText, errorText.count) else {
            rd_kafka_conf_destroy(conf)
            callbacks.release()
            var reason = Self.string(errorText)
            for (name, value) in properties { reason = Self.redact(reason, value: value, of: name) }
            throw .invalidOption("kafka sink: \(reason) (spout sets acks=all and enable.idempotence=true unless you override them with --kafka-property)")
        }
        self.handle = handle
        mainQueue = rd_kafka_queue_get_main(handle)
        text.reserveCapacity(1024)
        fields.reserveCapacity(16)
    }

    deinit { close(flushTimeoutMilliseconds: 0) }

    /// Delivery reports and errors land on the main queue; librdkafka writes a byte to
    /// `descriptor` (non-blocking: the delivery engine's wakeup pipe) when that queue becomes
    /// non-empty, which wakes the relay's poll(2). Until `close`.
    func signalReports(to descriptor: Int32) {
        guard let mainQueue else { return }
        rd_kafka_queue_io_event_enable(mainQueue, descriptor, "1", 1)
    }

    /// Hands one event to librdkafka (copied). Headers: the event's own, then `id`, `type` and (snapshot, backfill) `source`;
    /// in the CloudEvents envelope, the Kafka binding's (`ce_id`, …, `content-type`) instead (dead letters stay as they are).
    func produce(_ event: OutboxEvent, ticket: UInt64) -> ProduceResult {
        guard let handle else { return .rejected(RD_KAFKA_RESP_ERR__DESTROY, reason: "the producer is closed") }
        text.removeAll(keepingCapacity: true)
        headerSpans.removeAll(keepingCapacity: true)
        func append(_ string: String) -> Int {
            let offset = text.count
            text.append(contentsOf: string.utf8)
            text.append(0)
            return offset
        }
        let topic = append(event.topic)
        let key = event.key.map { (offset: append($0), length: $0.utf8.count) }
        if let cloudEvents, event.source != .deadLetter {
            cloudEvents.forEachAttribute(of: event) { name, value in
                let offset = text.count
                text.append(contentsOf: "ce_".utf8)
                text.append(contentsOf: name.utf8)
                text.append(0)
                headerSpans.append((offset, append(value), value.utf8.count))
            }
            let contentType = CloudEventEnvelope.contentType(of: event)
            headerSpans.append((append("content-type"), append(contentType), contentType.utf8.count))
        } else {
            for header in event.headers {
                headerSpans.append((append(header.name), append(header.value), header.value.utf8.count))
            }
            headerSpans.append((append("id"), append(event.id), event.id.utf8.count))
            if let type = event.type { headerSpans.append((append("type"), append(type), type.utf8.count)) }
            if let source = event.source.marker { headerSpans.append((append("source"), append(source), source.utf8.count)) }
        }

        let error: OpaquePointer? = text.withUnsafeBytes { strings in
            // Every offset points into `strings`, which is never empty here (the topic's NUL).
            let base = strings.baseAddress!
            func cString(_ offset: Int) -> UnsafePointer<CChar> { (base + offset).assumingMemoryBound(to: CChar.self) }
            return event.payload.withUnsafeBytes { payload in
                fields.removeAll(keepingCapacity: true)
                var field = rd_kafka_vu_t()
                field.vtype = RD_KAFKA_VTYPE_TOPIC
                field.u.cstr = cString(topic)
                fields.append(field)

                field = rd_kafka_vu_t()
                field.vtype = RD_KAFKA_VTYPE_VALUE
                // An empty payload is an empty value, not a null one (a tombstone): never pass NULL.
                field.u.mem.ptr = UnsafeMutableRawPointer(mutating: payload.baseAddress ?? base)
                field.u.mem.size = payload.count
                fields.append(field)

                if let key {
                    field = rd_kafka_vu_t()
                    field.vtype = RD_KAFKA_VTYPE_KEY
                    field.u.mem.ptr = UnsafeMutableRawPointer(mutating: base + key.offset)
                    field.u.mem.size = key.length
                    fields.append(field)
                }
                for span in headerSpans {
                    field = rd_kafka_vu_t()
                    field.vtype = RD_KAFKA_VTYPE_HEADER
                    field.u.header.name = cString(span.name)
                    field.u.header.val = UnsafeRawPointer(base + span.value)
                    field.u.header.size = span.length
                    fields.append(field)
                }
                field = rd_kafka_vu_t()
                field.vtype = RD_KAFKA_VTYPE_OPAQUE
                // The ticket travels with the message and comes back in its delivery report.
                field.u.ptr = UnsafeMutableRawPointer(bitPattern: UInt(ticket) &+ 1)
                fields.append(field)

                field = rd_kafka_vu_t()
                field.vtype = RD_KAFKA_VTYPE_MSGFLAGS
                field.u.i = RD_KAFKA_MSG_F_COPY
                fields.append(field)
                return rd_kafka_produceva(handle, fields, fields.count)
            }
        }
        guard let error else { return .queued }
        defer { rd_kafka_error_destroy(error) }
        let code = rd_kafka_error_code(error)
        return .rejected(code, reason: rd_kafka_error_string(error).map { String(cString: $0) } ?? Self.describe(code))
    }

    /// Serves librdkafka's queued callbacks (without waiting) and hands over what they reported.
    func poll(deliveries: (Delivery) -> Void, errors: (ClientError) -> Void) {
        guard let handle else { return }
        _ = rd_kafka_poll(handle, 0)
        let collected = callbacks.takeUnretainedValue()
        for delivery in collected.deliveries { deliveries(delivery) }
        collected.deliveries.removeAll(keepingCapacity: true)
        for error in collected.errors { errors(error) }
        collected.errors.removeAll(keepingCapacity: true)
    }

    /// Takes every message back from librdkafka: queued ones come back in delivery reports
    /// with `_PURGE_QUEUE`, those in requests in flight with `_PURGE_INFLIGHT` (the broker may
    /// still write those, in order: they are older than anything produced after the purge, and
    /// librdkafka bumps the producer epoch before it sends again). Synchronous: when it returns,
    /// librdkafka holds nothing that could still be sent.
    func purgeAll() {
        guard let handle else { return }
        _ = rd_kafka_purge(handle, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT)
    }

    /// The reason for a fatal error (the idempotent producer lost its guarantees), if one was raised.
    /// Whether a broker ever answered a metadata request (non-blocking: librdkafka's cached
    /// controller id): a TLS failure before that is a configuration problem, after it an outage.
    var reachedBrokers: Bool {
        guard let handle else { return false }
        return rd_kafka_controllerid(handle, 0) != -1
    }

    var fatalError: String? {
        guard let handle else { return nil }
        var buffer = [CChar](repeating: 0, count: 512)
        let code = rd_kafka_fatal_error(handle, &buffer, buffer.count)
        guard code != RD_KAFKA_RESP_ERR_NO_ERROR else { return nil }
        return "\(Self.string(buffer)) (\(Self.name(code)))"
    }

    /// Waits up to `flushTimeoutMilliseconds` for what librdkafka holds, drops the rest, and
    /// frees everything. Returns how many messages were left undelivered.
    @discardableResult
    func close(flushTimeoutMilliseconds: Int32) -> Int {
        guard let handle else { return 0 }
        if flushTimeoutMilliseconds > 0 { _ = rd_kafka_flush(handle, flushTimeoutMilliseconds) }
        let left = Int(rd_kafka_outq_len(handle))
        if left > 0 {
            // Undelivered messages are not confirmed: they are sent again after a restart.
            _ = rd_kafka_purge(handle, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT)
            _ = rd_kafka_poll(handle, 0)
        }
        rd_kafka_queue_io_event_enable(mainQueue, -1, nil, 0)
        rd_kafka_queue_destroy(mainQueue)
        mainQueue = nil
        rd_kafka_destroy(handle)
        self.handle = nil
        callbacks.release()
        return left
    }

    static func name(_ code: rd_kafka_resp_err_t) -> String {
        rd_kafka_err2name(code).map { String(cString: $0) } ?? "\(code.rawValue)"
    }

    static func describe(_ code: rd_kafka_resp_err_t) -> String {
        rd_kafka_err2str(code).map { String(cString: $0) } ?? "error \(code.rawValue)"
    }

    private static func string(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// librdkafka's error text may quote a value; a secret's value never reaches a log.
    static func redact(_ text: String, value: String, of name: String) -> String {
        guard Redaction.isSecretName(name), !value.isEmpty else { return text }
        return text.replacingOccurrences(of: value, with: "***")
    }
}
