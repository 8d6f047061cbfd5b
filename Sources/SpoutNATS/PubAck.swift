import SpoutCore
import CNats
import Foundation

/// The PubAck inbox's wire format.
enum PubAck {
    /// The ticket in a PubAck subject's last token; nil when it is not a number.
    static func ticket(subject: UnsafePointer<CChar>) -> UInt64? {
        let length = strlen(subject)
        let bytes = UnsafeRawBufferPointer(start: subject, count: length)
        let start = (bytes.lastIndex(of: UInt8(ascii: ".")) ?? -1) + 1
        guard start < length else { return nil }
        var value: UInt64 = 0
        for byte in bytes[start...] {
            let digit = byte &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(UInt64(digit))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
        }
        return value
    }

    /// nil for a PubAck that stored the message (`{"stream":…,"seq":…}`, possibly
    /// `"duplicate":true`); the JetStream error otherwise
    /// (`{"error":{"code":…,"err_code":…,"description":"…"}}`).
    static func failure(_ data: UnsafeRawBufferPointer) -> NATSFailure? {
        // The common case, a stored message, without copying the bytes: no "error" at all.
        if !contains(data, #""error""#), contains(data, #""seq""#) { return nil }
        let bytes = Array(data)
        // The key with an object value: a stream or domain named "error" is not an error.
        guard let error = find(Array(#""error":{"#.utf8), in: bytes, from: 0) ?? find(Array(#""error": {"#.utf8), in: bytes, from: 0) else {
            if find(Array(#""seq""#.utf8), in: bytes, from: 0) != nil { return nil }
            return NATSFailure(status: NATS_ERR, text: "unexpected PubAck: \(String(decoding: bytes.prefix(200), as: UTF8.self))")
        }
        var code = 0
        if let start = find(Array(#""err_code""#.utf8), in: bytes, from: error) {
            var cursor = start + 10
            while cursor < bytes.count, bytes[cursor] == UInt8(ascii: ":") || bytes[cursor] == UInt8(ascii: " ") { cursor += 1 }
            while cursor < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[cursor]), code < 1_000_000 {
                code = code * 10 + Int(bytes[cursor] - UInt8(ascii: "0"))
                cursor += 1
            }
        }
        var text = "JetStream error"
        if let start = find(Array(#""description""#.utf8), in: bytes, from: error),
           let open = bytes[(start + 13)...].firstIndex(of: UInt8(ascii: "\"")) {
            var close = open + 1
            while close < bytes.count, bytes[close] != UInt8(ascii: "\"") || bytes[close - 1] == UInt8(ascii: "\\") { close += 1 }
            text = String(decoding: bytes[(open + 1)..<min(close, bytes.count)], as: UTF8.self)
        }
        return NATSFailure(status: NATS_ERR, errorCode: code, text: text)
    }

    private static func contains(_ data: UnsafeRawBufferPointer, _ needle: StaticString) -> Bool {
        let pattern = UnsafeBufferPointer(start: needle.utf8Start, count: needle.utf8CodeUnitCount)
        guard let first = pattern.first, let base = data.baseAddress, data.count >= pattern.count else { return false }
        var index = 0
        while index <= data.count - pattern.count {
            if data[index] == first, memcmp(base + index, needle.utf8Start, pattern.count) == 0 { return true }
            index += 1
        }
        return false
    }

    private static func find(_ needle: [UInt8], in bytes: [UInt8], from start: Int) -> Int? {
        guard bytes.count >= needle.count, start <= bytes.count - needle.count else { return nil }
        for index in start...(bytes.count - needle.count) where bytes[index] == needle[0] {
            if bytes[index..<index + needle.count].elementsEqual(needle) { return index }
        }
        return nil
    }
}
