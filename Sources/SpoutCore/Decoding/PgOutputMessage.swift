/// A message of PostgreSQL's `pgoutput` logical replication protocol, versions 1–4
/// (`src/backend/replication/logical/proto.c`).
public enum PgOutputMessage: Equatable, Sendable {
    case begin(Begin)
    case commit(Commit)
    case origin(Origin)
    case relation(Relation)
    case type(TypeInfo)
    case insert(Insert)
    case update(Update)
    case delete(Delete)
    case truncate(Truncate)
    case message(LogicalMessage)
    case streamStart(StreamStart)
    case streamStop
    case streamCommit(StreamCommit)
    case streamAbort(StreamAbort)
    case beginPrepare(BeginPrepare)
    case prepare(Prepare)
    case commitPrepared(CommitPrepared)
    case rollbackPrepared(RollbackPrepared)
    case streamPrepare(Prepare)

    public struct Begin: Equatable, Sendable {
        /// LSN of the commit record (not its end).
        public var finalLSN: LSN
        public var commitTime: PostgresTimestamp
        public var xid: UInt32
    }

    public struct Commit: Equatable, Sendable {
        public var flags: UInt8
        public var commitLSN: LSN
        /// End of the commit record: the position to confirm once the transaction is delivered.
        public var endLSN: LSN
        public var commitTime: PostgresTimestamp
    }

    public struct Origin: Equatable, Sendable {
        public var commitLSN: LSN
        public var name: String
    }

    public struct Relation: Equatable, Sendable {
        public struct Column: Equatable, Sendable {
            /// Bit 0: part of the replica identity key.
            public var flags: UInt8
            public var name: String
            public var typeOID: UInt32
            public var typeModifier: Int32
            public var isKey: Bool { flags & 1 != 0 }
        }
        public var xid: UInt32?
        public var oid: UInt32
        /// Empty for `pg_catalog`.
        public var namespace: String
        public var name: String
        public var replicaIdentity: UInt8
        public var columns: [Column]
    }

    public struct TypeInfo: Equatable, Sendable {
        public var xid: UInt32?
        public var oid: UInt32
        public var namespace: String
        public var name: String
    }

    public struct Insert: Equatable, Sendable {
        public var xid: UInt32?
        public var relationOID: UInt32
        public var new: TupleData
    }

    public struct Update: Equatable, Sendable {
        public enum OldKind: UInt8, Equatable, Sendable {
            case key = 0x4B  // 'K': replica identity columns only
            case full = 0x4F  // 'O': the whole old row (REPLICA IDENTITY FULL)
        }
        public var xid: UInt32?
        public var relationOID: UInt32
        public var old: (kind: OldKind, tuple: TupleData)?
        public var new: TupleData

        public static func == (lhs: Update, rhs: Update) -> Bool {
            lhs.xid == rhs.xid && lhs.relationOID == rhs.relationOID && lhs.new == rhs.new
                && lhs.old?.kind == rhs.old?.kind && lhs.old?.tuple == rhs.old?.tuple
        }
    }

    public struct Delete: Equatable, Sendable {
        public var xid: UInt32?
        public var relationOID: UInt32
        public var oldKind: Update.OldKind
        public var old: TupleData
    }

    public struct Truncate: Equatable, Sendable {
        public var xid: UInt32?
        /// Bit 0: CASCADE, bit 1: RESTART IDENTITY.
        public var options: UInt8
        public var relationOIDs: [UInt32]
    }

    public struct LogicalMessage: Equatable, Sendable {
        public var xid: UInt32?
        /// Bit 0: transactional.
        public var flags: UInt8
        public var lsn: LSN
        public var prefix: String
        public var content: [UInt8]
        public var isTransactional: Bool { flags & 1 != 0 }
    }

    public struct StreamStart: Equatable, Sendable {
        public var xid: UInt32
        public var isFirstSegment: Bool
    }

    public struct StreamCommit: Equatable, Sendable {
        public var xid: UInt32
        public var flags: UInt8
        public var commitLSN: LSN
        public var endLSN: LSN
        public var commitTime: PostgresTimestamp
    }

    public struct StreamAbort: Equatable, Sendable {
        public var xid: UInt32
        public var subtransactionXID: UInt32
        /// Only with protocol version 4 and parallel streaming.
        public var abortLSN: LSN?
        public var abortTime: PostgresTimestamp?
    }

    public struct BeginPrepare: Equatable, Sendable {
        public var prepareLSN: LSN
        public var endLSN: LSN
        public var prepareTime: PostgresTimestamp
        public var xid: UInt32
        public var gid: String
    }

    /// Prepare (`'P'`) and Stream Prepare (`'p'`) share this layout.
    public struct Prepare: Equatable, Sendable {
        public var flags: UInt8
        public var prepareLSN: LSN
        public var endLSN: LSN
        public var prepareTime: PostgresTimestamp
        public var xid: UInt32
        public var gid: String
    }

    public struct CommitPrepared: Equatable, Sendable {
        public var flags: UInt8
        public var commitLSN: LSN
        public var endLSN: LSN
        public var commitTime: PostgresTimestamp
        public var xid: UInt32
        public var gid: String
    }

    public struct RollbackPrepared: Equatable, Sendable {
        public var flags: UInt8
        public var prepareEndLSN: LSN
        public var rollbackEndLSN: LSN
        public var prepareTime: PostgresTimestamp
        public var rollbackTime: PostgresTimestamp
        public var xid: UInt32
        public var gid: String
    }
}

extension PgOutputMessage {
    /// Decodes one message (the payload of one XLogData). `inStream` tells whether the
    /// message arrived between Stream Start and Stream Stop, where data messages carry the
    /// transaction id of the streamed transaction first.
    public static func decode(_ bytes: UnsafeRawBufferPointer, inStream: Bool = false) throws(DecodingError) -> PgOutputMessage {
        guard let type = bytes.first else { throw .empty }
        var reader = ByteReader(UnsafeRawBufferPointer(rebasing: bytes.dropFirst()), message: Self.name(of: type))
        func streamedXID() throws(DecodingError) -> UInt32? { inStream ? try reader.readUInt32() : nil }

        let message: PgOutputMessage
        switch type {
        case UInt8(ascii: "B"):
            message = .begin(Begin(finalLSN: try reader.readLSN(), commitTime: try reader.readTimestamp(), xid: try reader.readUInt32()))
        case UInt8(ascii: "C"):
            message = .commit(Commit(flags: try reader.readUInt8(), commitLSN: try reader.readLSN(),
                                     endLSN: try reader.readLSN(), commitTime: try reader.readTimestamp()))
        case UInt8(ascii: "O"):
            message = .origin(Origin(commitLSN: try reader.readLSN(), name: try reader.readCString()))
        case UInt8(ascii: "R"):
            let xid = try streamedXID()
            let oid = try reader.readUInt32()
            let namespace = try reader.readCString()
            let name = try reader.readCString()
            let identity = try reader.readUInt8()
            let count = Int(try reader.readUInt16())
            var columns: [Relation.Column] = []
            columns.reserveCapacity(count)
            for _ in 0..<count {
                columns.append(Relation.Column(flags: try reader.readUInt8(), name: try reader.readCString(),
                                               typeOID: try reader.readUInt32(), typeModifier: try reader.readInt32()))
            }
            message = .relation(Relation(xid: xid, oid: oid, namespace: namespace, name: name,
                                         replicaIdentity: identity, columns: columns))
        case UInt8(ascii: "Y"):
            message = .type(TypeInfo(xid: try streamedXID(), oid: try reader.readUInt32(),
                                     namespace: try reader.readCString(), name: try reader.readCString()))
        case UInt8(ascii: "I"):
            let xid = try streamedXID()
            let oid = try reader.readUInt32()
            try expectTupleMarker(&reader, allowed: [UInt8(ascii: "N")])
            message = .insert(Insert(xid: xid, relationOID: oid, new: try TupleData.decode(from: &reader)))
        case UInt8(ascii: "U"):
            let xid = try streamedXID()
            let oid = try reader.readUInt32()
            var marker = try expectTupleMarker(&reader, allowed: [UInt8(ascii: "K"), UInt8(ascii: "O"), UInt8(ascii: "N")])
            var old: (kind: Update.OldKind, tuple: TupleData)?
            if let kind = Update.OldKind(rawValue: marker) {
                old = (kind, try TupleData.decode(from: &reader))
                marker = try expectTupleMarker(&reader, allowed: [UInt8(ascii: "N")])
            }
            message = .update(Update(xid: xid, relationOID: oid, old: old, new: try TupleData.decode(from: &reader)))
        case UInt8(ascii: "D"):
            let xid = try streamedXID()
            let oid = try reader.readUInt32()
            let marker = try expectTupleMarker(&reader, allowed: [UInt8(ascii: "K"), UInt8(ascii: "O")])
            message = .delete(Delete(xid: xid, relationOID: oid, oldKind: Update.OldKind(rawValue: marker) ?? .key,
                                     old: try TupleData.decode(from: &reader)))
        case UInt8(ascii: "T"):
            let xid = try streamedXID()
            let count = try reader.readInt32()
            guard count >= 0, Int(count) <= reader.remaining / 4 else {
                throw .invalidValue(message: "Truncate", field: "relation count", value: UInt64(UInt32(bitPattern: count)))
            }
            let options = try reader.readUInt8()
            var oids: [UInt32] = []
            oids.reserveCapacity(Int(count))
            for _ in 0..<count { oids.append(try reader.readUInt32()) }
            message = .truncate(Truncate(xid: xid, options: options, relationOIDs: oids))
        case UInt8(ascii: "M"):
            let xid = try streamedXID()
            let flags = try reader.readUInt8()
            let lsn = try reader.readLSN()
            let prefix = try reader.readCString()
            let length = try reader.readInt32()
            guard length >= 0 else {
                throw .invalidValue(message: "Message", field: "content length", value: UInt64(UInt32(bitPattern: length)))
            }
            let content = [UInt8](try reader.readBytes(Int(length)))
            message = .message(LogicalMessage(xid: xid, flags: flags, lsn: lsn, prefix: prefix, content: content))
        case UInt8(ascii: "S"):
            message = .streamStart(StreamStart(xid: try reader.readUInt32(), isFirstSegment: try reader.readUInt8() == 1))
        case UInt8(ascii: "E"):
            message = .streamStop
        case UInt8(ascii: "c"):
            message = .streamCommit(StreamCommit(xid: try reader.readUInt32(), flags: try reader.readUInt8(),
                                                 commitLSN: try reader.readLSN(), endLSN: try reader.readLSN(),
                                                 commitTime: try reader.readTimestamp()))
        case UInt8(ascii: "A"):
            let xid = try reader.readUInt32()
            let subxid = try reader.readUInt32()
            // Protocol 4 with parallel streaming appends the abort LSN and time.
            if reader.remaining >= 16 {
                message = .streamAbort(StreamAbort(xid: xid, subtransactionXID: subxid,
                                                   abortLSN: try reader.readLSN(), abortTime: try reader.readTimestamp()))
            } else {
                message = .streamAbort(StreamAbort(xid: xid, subtransactionXID: subxid, abortLSN: nil, abortTime: nil))
            }
        case UInt8(ascii: "b"):
            message = .beginPrepare(BeginPrepare(prepareLSN: try reader.readLSN(), endLSN: try reader.readLSN(),
                                                 prepareTime: try reader.readTimestamp(), xid: try reader.readUInt32(),
                                                 gid: try reader.readCString()))
        case UInt8(ascii: "P"), UInt8(ascii: "p"):
            let prepare = Prepare(flags: try reader.readUInt8(), prepareLSN: try reader.readLSN(), endLSN: try reader.readLSN(),
                                  prepareTime: try reader.readTimestamp(), xid: try reader.readUInt32(),
                                  gid: try reader.readCString())
            message = type == UInt8(ascii: "P") ? .prepare(prepare) : .streamPrepare(prepare)
        case UInt8(ascii: "K"):
            message = .commitPrepared(CommitPrepared(flags: try reader.readUInt8(), commitLSN: try reader.readLSN(),
                                                     endLSN: try reader.readLSN(), commitTime: try reader.readTimestamp(),
                                                     xid: try reader.readUInt32(), gid: try reader.readCString()))
        case UInt8(ascii: "r"):
            message = .rollbackPrepared(RollbackPrepared(flags: try reader.readUInt8(), prepareEndLSN: try reader.readLSN(),
                                                         rollbackEndLSN: try reader.readLSN(),
                                                         prepareTime: try reader.readTimestamp(),
                                                         rollbackTime: try reader.readTimestamp(),
                                                         xid: try reader.readUInt32(), gid: try reader.readCString()))
        default:
            throw .unknownMessageType(type)
        }
        guard reader.isAtEnd else { throw .trailingBytes(message: "\(reader.message)", count: reader.remaining) }
        return message
    }

    @discardableResult
    private static func expectTupleMarker(_ reader: inout ByteReader, allowed: [UInt8]) throws(DecodingError) -> UInt8 {
        let marker = try reader.readUInt8()
        guard allowed.contains(marker) else {
            throw .invalidValue(message: "\(reader.message)", field: "tuple marker", value: UInt64(marker))
        }
        return marker
    }

    static func name(of type: UInt8) -> StaticString {
        switch type {
        case UInt8(ascii: "B"): "Begin"
        case UInt8(ascii: "C"): "Commit"
        case UInt8(ascii: "O"): "Origin"
        case UInt8(ascii: "R"): "Relation"
        case UInt8(ascii: "Y"): "Type"
        case UInt8(ascii: "I"): "Insert"
        case UInt8(ascii: "U"): "Update"
        case UInt8(ascii: "D"): "Delete"
        case UInt8(ascii: "T"): "Truncate"
        case UInt8(ascii: "M"): "Message"
        case UInt8(ascii: "S"): "Stream Start"
        case UInt8(ascii: "E"): "Stream Stop"
        case UInt8(ascii: "c"): "Stream Commit"
        case UInt8(ascii: "A"): "Stream Abort"
        case UInt8(ascii: "b"): "Begin Prepare"
        case UInt8(ascii: "P"): "Prepare"
        case UInt8(ascii: "K"): "Commit Prepared"
        case UInt8(ascii: "r"): "Rollback Prepared"
        case UInt8(ascii: "p"): "Stream Prepare"
        default: "unknown"
        }
    }
}
