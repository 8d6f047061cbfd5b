/// One row image in a pgoutput Insert/Update/Delete (`TupleData`). The column values are
/// kept in one byte array with ranges into it: one allocation per row, not per column.
public struct TupleData: Equatable, Sendable {
    public enum Column: Equatable, Sendable {
        case null
        /// An unchanged TOASTed value: PostgreSQL does not send it (`'u'`).
        case unchangedToast
        /// Text output format (`'t'`): the range of its bytes in `storage`.
        case text(Range<Int>)
        /// Binary format (`'b'`, only with the `binary` option).
        case binary(Range<Int>)
    }

    public var columns: [Column]
    public var storage: [UInt8]

    public init(columns: [Column], storage: [UInt8]) {
        self.columns = columns
        self.storage = storage
    }

    /// The bytes of a text or binary column; `nil` for null, unchanged TOAST or a missing index.
    public func bytes(at index: Int) -> ArraySlice<UInt8>? {
        guard columns.indices.contains(index) else { return nil }
        switch columns[index] {
        case let .text(range), let .binary(range): return storage[range]
        case .null, .unchangedToast: return nil
        }
    }

    public func string(at index: Int) -> String? {
        bytes(at: index).map { String(decoding: $0, as: UTF8.self) }
    }

    static func decode(from reader: inout ByteReader) throws(DecodingError) -> TupleData {
        let count = Int(try reader.readUInt16())
        let start = reader.offset
        var columns: [Column] = []
        columns.reserveCapacity(count)
        for _ in 0..<count {
            let kind = try reader.readUInt8()
            switch kind {
            case UInt8(ascii: "n"): columns.append(.null)
            case UInt8(ascii: "u"): columns.append(.unchangedToast)
            case UInt8(ascii: "t"), UInt8(ascii: "b"):
                let length = try reader.readInt32()
                guard length >= 0 else {
                    throw .invalidValue(message: "TupleData", field: "column length", value: UInt64(UInt32(bitPattern: length)))
                }
                let valueStart = reader.offset - start
                _ = try reader.readBytes(Int(length))
                let range = valueStart..<valueStart + Int(length)
                columns.append(kind == UInt8(ascii: "t") ? .text(range) : .binary(range))
            default:
                throw .invalidValue(message: "TupleData", field: "column kind", value: UInt64(kind))
            }
        }
        let storage = [UInt8](UnsafeRawBufferPointer(rebasing: reader.bytes[start..<reader.offset]))
        return TupleData(columns: columns, storage: storage)
    }
}
