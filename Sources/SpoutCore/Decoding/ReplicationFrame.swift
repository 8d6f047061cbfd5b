/// One CopyData message of a logical replication stream (walsender → client).
public enum ReplicationFrame: Equatable, Sendable {
    /// `'w'`: WAL data; `payload` is one pgoutput message. Both LSNs are 0 for messages
    /// that are not the last of a WAL record (Relation, Type, a Begin before Origin).
    case xLogData(dataStart: LSN, walEnd: LSN, sendTime: PostgresTimestamp, payloadOffset: Int)
    /// `'k'`: the server's position; `replyRequested` asks for a status update at once.
    case keepalive(walEnd: LSN, sendTime: PostgresTimestamp, replyRequested: Bool)

    /// XLogData header: type byte + three Int64.
    public static let xLogDataHeaderSize = 25

    /// Decodes the frame header; for XLogData the pgoutput message is
    /// `bytes[payloadOffset...]`, left undecoded so the caller can decode it in place.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(DecodingError) -> ReplicationFrame {
        guard let type = bytes.first else { throw .empty }
        switch type {
        case UInt8(ascii: "w"):
            var reader = ByteReader(UnsafeRawBufferPointer(rebasing: bytes.dropFirst()), message: "XLogData")
            return .xLogData(dataStart: try reader.readLSN(), walEnd: try reader.readLSN(),
                             sendTime: try reader.readTimestamp(), payloadOffset: xLogDataHeaderSize)
        case UInt8(ascii: "k"):
            var reader = ByteReader(UnsafeRawBufferPointer(rebasing: bytes.dropFirst()), message: "Primary keepalive")
            let frame = ReplicationFrame.keepalive(walEnd: try reader.readLSN(), sendTime: try reader.readTimestamp(),
                                                   replyRequested: try reader.readUInt8() != 0)
            guard reader.isAtEnd else { throw .trailingBytes(message: "Primary keepalive", count: reader.remaining) }
            return frame
        default:
            throw .unknownMessageType(type)
        }
    }
}

/// `'r'` Standby status update (client → walsender). Only `flush` moves a logical slot.
public struct StandbyStatusUpdate: Equatable, Sendable {
    public var write: LSN
    public var flush: LSN
    public var apply: LSN
    public var sendTime: PostgresTimestamp
    public var replyRequested: Bool

    public init(write: LSN, flush: LSN, apply: LSN, sendTime: PostgresTimestamp, replyRequested: Bool = false) {
        self.write = write
        self.flush = flush
        self.apply = apply
        self.sendTime = sendTime
        self.replyRequested = replyRequested
    }

    public static let size = 34

    public func encode() -> [UInt8] {
        var bytes: [UInt8] = [UInt8(ascii: "r")]
        bytes.reserveCapacity(Self.size)
        for value in [write.rawValue, flush.rawValue, apply.rawValue, UInt64(bitPattern: sendTime.rawValue)] {
            for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
        }
        bytes.append(replyRequested ? 1 : 0)
        return bytes
    }
}
