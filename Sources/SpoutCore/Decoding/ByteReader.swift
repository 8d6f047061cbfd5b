/// A bounds-checked big-endian cursor over one protocol message. Every read throws
/// `DecodingError.truncated` instead of trapping when the message is too short.
public struct ByteReader {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset: Int = 0
    /// Names the message being decoded, for error context.
    let message: StaticString

    public init(_ bytes: UnsafeRawBufferPointer, message: StaticString) {
        self.bytes = bytes
        self.message = message
    }

    public var remaining: Int { bytes.count - offset }
    public var isAtEnd: Bool { offset >= bytes.count }

    @inline(__always)
    mutating func need(_ count: Int) throws(DecodingError) {
        guard count >= 0, remaining >= count else {
            throw .truncated(message: "\(message)", offset: offset, needed: count, available: remaining)
        }
    }

    public mutating func readUInt8() throws(DecodingError) -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func readUInt16() throws(DecodingError) -> UInt16 {
        try need(2)
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    public mutating func readUInt32() throws(DecodingError) -> UInt32 {
        try need(4)
        var value: UInt32 = 0
        for index in offset..<offset + 4 { value = value << 8 | UInt32(bytes[index]) }
        offset += 4
        return value
    }

    public mutating func readUInt64() throws(DecodingError) -> UInt64 {
        try need(8)
        var value: UInt64 = 0
        for index in offset..<offset + 8 { value = value << 8 | UInt64(bytes[index]) }
        offset += 8
        return value
    }

    public mutating func readInt32() throws(DecodingError) -> Int32 { Int32(bitPattern: try readUInt32()) }
    public mutating func readInt64() throws(DecodingError) -> Int64 { Int64(bitPattern: try readUInt64()) }
    public mutating func readLSN() throws(DecodingError) -> LSN { LSN(try readUInt64()) }
    public mutating func readTimestamp() throws(DecodingError) -> PostgresTimestamp {
        PostgresTimestamp(rawValue: try readInt64())
    }

    /// A NUL-terminated string (`Str` in PostgreSQL's protocol docs), decoded as UTF-8.
    public mutating func readCString() throws(DecodingError) -> String {
        guard let end = bytes[offset...].firstIndex(of: 0) else {
            throw .unterminatedString(message: "\(message)", offset: offset)
        }
        defer { offset = end + 1 }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<end]), as: UTF8.self)
    }

    public mutating func readBytes(_ count: Int) throws(DecodingError) -> UnsafeRawBufferPointer {
        try need(count)
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
    }

    public mutating func readRest() -> UnsafeRawBufferPointer {
        defer { offset = bytes.count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset...])
    }
}

/// Malformed or truncated protocol input. Decoding never traps on bad bytes.
public enum DecodingError: Error, Equatable, Sendable, CustomStringConvertible {
    case empty
    case truncated(message: String, offset: Int, needed: Int, available: Int)
    case unterminatedString(message: String, offset: Int)
    case unknownMessageType(UInt8)
    case invalidValue(message: String, field: String, value: UInt64)
    case trailingBytes(message: String, count: Int)

    public var description: String {
        switch self {
        case .empty: "empty message"
        case let .truncated(message, offset, needed, available):
            "truncated \(message) message: needed \(needed) bytes at offset \(offset), \(available) left"
        case let .unterminatedString(message, offset):
            "unterminated string in \(message) message at offset \(offset)"
        case let .unknownMessageType(type):
            "unknown message type \(Self.describe(type))"
        case let .invalidValue(message, field, value):
            "invalid \(field) \(value) in \(message) message"
        case let .trailingBytes(message, count):
            "\(count) unexpected trailing bytes after \(message) message"
        }
    }

    static func describe(_ byte: UInt8) -> String {
        (0x20..<0x7F).contains(byte) ? "'\(Character(UnicodeScalar(byte)))'" : "0x" + String(byte, radix: 16)
    }
}
