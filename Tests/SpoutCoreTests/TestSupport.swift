import Foundation
import XCTest
@testable import SpoutCore

/// The captured pgoutput fixtures (Fixtures/pgoutput) and their expected values.
enum Fixtures {
    static func pgoutputDirectory() throws -> URL {
        let root = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures", withExtension: nil), "Fixtures resource missing")
        return root.appendingPathComponent("pgoutput", isDirectory: true)
    }

    static func bytes(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: pgoutputDirectory().appendingPathComponent(name)))
    }

    /// expected.json as a dictionary keyed by file name.
    static func expected() throws -> [String: Any] {
        let data = try Data(contentsOf: pgoutputDirectory().appendingPathComponent("expected.json"))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any], "expected.json is not an object")
    }

    /// The `.bin` files on disk, sorted.
    static func binNames() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: pgoutputDirectory().path)
            .filter { $0.hasSuffix(".bin") }.sorted()
    }

    /// Splits a session file: records of UInt32 big-endian length + payload.
    static func records(_ bytes: [UInt8]) throws -> [[UInt8]] {
        var records: [[UInt8]] = []
        var offset = 0
        while offset < bytes.count {
            guard offset + 4 <= bytes.count else { throw FixtureError("truncated record length at \(offset)") }
            let length = Int(bytes[offset]) << 24 | Int(bytes[offset + 1]) << 16 | Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
            offset += 4
            guard offset + length <= bytes.count else { throw FixtureError("truncated record at \(offset)") }
            records.append(Array(bytes[offset..<offset + length]))
            offset += length
        }
        return records
    }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Decodes without letting a typed throw escape through closures.
func decodeMessage(_ bytes: [UInt8], inStream: Bool = false) -> Result<PgOutputMessage, DecodingError> {
    bytes.withUnsafeBytes { buffer in
        do throws(DecodingError) {
            return .success(try PgOutputMessage.decode(buffer, inStream: inStream))
        } catch {
            return .failure(error)
        }
    }
}

func decodeFrame(_ bytes: [UInt8]) -> Result<ReplicationFrame, DecodingError> {
    bytes.withUnsafeBytes { buffer in
        do throws(DecodingError) {
            return .success(try ReplicationFrame.decode(buffer))
        } catch {
            return .failure(error)
        }
    }
}

/// Big-endian encoders for hand-built protocol messages.
extension Array where Element == UInt8 {
    mutating func be16(_ value: UInt16) { append(UInt8(value >> 8)); append(UInt8(truncatingIfNeeded: value)) }
    mutating func be32(_ value: UInt32) { for shift in stride(from: 24, through: 0, by: -8) { append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) } }
    mutating func be32(_ value: Int32) { be32(UInt32(bitPattern: value)) }
    mutating func be64(_ value: UInt64) { for shift in stride(from: 56, through: 0, by: -8) { append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) } }
    mutating func be64(_ value: Int64) { be64(UInt64(bitPattern: value)) }
    mutating func cString(_ text: String) { append(contentsOf: text.utf8); append(0) }
    mutating func ascii(_ character: Unicode.Scalar) { append(UInt8(ascii: character)) }
}

func hexBytes(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex {
        let next = text.index(index, offsetBy: 2)
        bytes.append(UInt8(text[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}

func lsn(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> LSN {
    guard let value = LSN(text) else {
        XCTFail("invalid LSN literal \(text)", file: file, line: line)
        return .zero
    }
    return value
}

extension Sink {
    /// Polls once; returns what was reported.
    func completions() throws -> [SinkCompletion] {
        var reported: [SinkCompletion] = []
        try poll { reported.append($0) }
        return reported
    }
}

/// The tickets reported delivered, in order.
func delivered(_ completions: [SinkCompletion]) -> [UInt64] {
    completions.compactMap { if case let .delivered(ticket) = $0 { ticket } else { nil } }
}
