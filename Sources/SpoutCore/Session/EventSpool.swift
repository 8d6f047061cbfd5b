import Foundation

/// The events between the replication stream and a sink that needs their commit LSN, in
/// commit order: those of the transaction being received and those committed but not yet
/// handed to the sink. The session knows which are committed and their LSNs; the spool only
/// keeps them, first in, first out, each with a tag (the session's topic index) it hands back.
///
/// It keeps either events (`append(_:tag:)`, `pop`) or a sink's own records of them
/// (`append(tag:encoding:)`, `popRecord`, for a `PreCommitEncoding` sink); the relay uses
/// one kind throughout. Events are kept as values while they fit in `memoryLimit` bytes (by
/// `approximateSize`), so the common case costs no encoding at all; beyond it they are encoded
/// (`SpooledEvent`) and decoded on their way out. Records are kept as bytes up to
/// `memoryLimit`. What does not fit goes to an unlinked temporary file, so a million-row
/// transaction or a long backlog takes the same memory as a small one.
final class EventSpool {
    private let memoryLimit: Int

    // Oldest to newest: values (memory) → front (records in memory, or read back from the
    // file) → file → back (records written to the file in batches). Once anything is encoded,
    // new events are encoded too until the encoded part has drained, so order holds. A record
    // is framed as its length (UInt32) and tag (Int32), little-endian, then its bytes.
    private var values: [(event: OutboxEvent, size: Int, tag: Int32)] = []
    private var valuesHead = 0
    private var valueBytes = 0
    private var encodedCount = 0

    private var front: [UInt8] = []
    private var frontHead = 0
    private var back: [UInt8] = []

    private var file: Int32 = -1
    private var readOffset: off_t = 0
    private var writeOffset: off_t = 0

    /// Events in the spool.
    var count: Int { values.count - valuesHead + encodedCount }

    /// Bytes the spool holds, in memory and on disk (a gauge, not exact).
    var bytes: Int { valueBytes + front.count - frontHead + back.count + Int(writeOffset - readOffset) }

    private static let backBatchBytes = 1 << 20

    /// Clamped so that sizes derived from it (`2 * memoryLimit + backBatchBytes`) cannot
    /// overflow, whatever a caller passes; spout checks the option's range, this is the floor.
    init(memoryLimit: Int) {
        self.memoryLimit = min(max(memoryLimit, 1 << 16), Self.largestMemoryLimit)
    }

    static let largestMemoryLimit = 1 << 60

    deinit {
        if file >= 0 { close(file) }
    }

    func append(_ event: consuming OutboxEvent, tag: Int32 = -1) throws(SpoutError) {
        let size = event.approximateSize
        if encodedCount == 0, valueBytes + size <= memoryLimit || valuesHead == values.count {
            if valuesHead == values.count, valuesHead > 0 {
                values.removeAll(keepingCapacity: true)
                valuesHead = 0
            }
            values.append((event, size, tag))
            valueBytes += size
            return
        }
        try append(tag: tag) { SpooledEvent.encode(event, into: &$0) }
    }

    /// Appends a record that `encode` appends to the bytes it is given (a sink's
    /// `PreCommitEncoding.encode`).
    func append(tag: Int32, encoding encode: (inout [UInt8]) -> Void) throws(SpoutError) {
        releasePopped()
        // In memory while nothing older waits on disk and the memory part has room.
        if valuesHead == values.count, readOffset == writeOffset, back.isEmpty, front.count - frontHead < memoryLimit {
            try Self.frame(into: &front, tag: tag, encode)
        } else {
            try Self.frame(into: &back, tag: tag, encode)
            if back.count >= Self.backBatchBytes { try flushBack() }
        }
        encodedCount += 1
    }

    /// Hands the oldest record (`append(tag:encoding:)`) and its tag to `body`; false when the
    /// spool is empty. The bytes are valid only inside `body`.
    func popRecord(_ body: (UnsafeRawBufferPointer, Int32) throws(SpoutError) -> Void) throws(SpoutError) -> Bool {
        guard let (range, tag) = try nextEncoded() else { return false }
        let result: Result<Void, SpoutError> = front.withUnsafeBytes { bytes in
            do throws(SpoutError) {
                try body(UnsafeRawBufferPointer(rebasing: bytes[range]), tag)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
        return true
    }

    /// The oldest event, its `approximateSize` (taken once, here) and its tag; nil when the
    /// spool is empty.
    func pop() throws(SpoutError) -> (event: OutboxEvent, size: Int, tag: Int32)? {
        if valuesHead < values.count {
            var event = Self.placeholder
            swap(&event, &values[valuesHead].event)
            let size = values[valuesHead].size
            let tag = values[valuesHead].tag
            valuesHead += 1
            valueBytes -= size
            if valuesHead == values.count {
                values.removeAll(keepingCapacity: values.capacity <= 1 << 16)
                valuesHead = 0
                valueBytes = 0
            } else if valuesHead >= 4096, valuesHead * 2 > values.count {
                values.removeFirst(valuesHead)
                valuesHead = 0
            }
            return (event, size, tag)
        }
        guard let (range, tag) = try nextEncoded() else { return nil }
        let event = front.withUnsafeBytes { SpooledEvent.decode(UnsafeRawBufferPointer(rebasing: $0[range]), lsn: .zero) }
        guard let event else {
            throw .spoolFailed("the event spool is damaged (a record of \(range.count) bytes does not decode)")
        }
        return (event, range.count + 64, tag)
    }

    /// The byte range (in `front`) and tag of the oldest record, taken out of the spool; nil
    /// when no record is left.
    private func nextEncoded() throws(SpoutError) -> (range: Range<Int>, tag: Int32)? {
        guard encodedCount > 0 else { return nil }
        releasePopped()
        guard let record = try nextRecord() else {
            throw .spoolFailed("the event spool lost \(encodedCount) events")
        }
        encodedCount -= 1
        return record
    }

    /// What a popped slot holds until the array is compacted: no storage of its own.
    private static let placeholder = OutboxEvent(id: "", topic: "", key: nil, type: nil, payload: [], payloadFormat: .json,
                                                 headers: [], lsn: .zero, committedAt: PostgresTimestamp(rawValue: 0))

    /// A record's length and tag.
    private static let headerBytes = 8

    private static func frame(into buffer: inout [UInt8], tag: Int32, _ write: (inout [UInt8]) -> Void) throws(SpoutError) {
        let start = buffer.count
        buffer.append(contentsOf: [0, 0, 0, 0, 0, 0, 0, 0] as [UInt8])
        write(&buffer)
        guard buffer.count - start - headerBytes <= Int(UInt32.max) else {
            let size = buffer.count - start - headerBytes
            buffer.removeSubrange(start...)
            throw .spoolFailed("an event of \(size) bytes is too large for the event spool (at most 4 GiB)")
        }
        let length = UInt32(buffer.count - start - headerBytes)
        let tag = UInt32(bitPattern: tag)
        for index in 0..<4 {
            buffer[start + index] = UInt8(truncatingIfNeeded: length >> (8 * index))
            buffer[start + 4 + index] = UInt8(truncatingIfNeeded: tag >> (8 * index))
        }
    }

    private static func uint32(_ buffer: [UInt8], at offset: Int) -> UInt32 {
        UInt32(buffer[offset]) | UInt32(buffer[offset + 1]) << 8 | UInt32(buffer[offset + 2]) << 16 | UInt32(buffer[offset + 3]) << 24
    }

    /// Forgets popped records at the front: all of them once the front is used up, or the
    /// popped half when the open transaction keeps the front from emptying.
    private func releasePopped() {
        if frontHead == front.count {
            if frontHead > 0 {
                front.removeAll(keepingCapacity: front.capacity <= 2 * memoryLimit + Self.backBatchBytes)
                frontHead = 0
            }
        } else if frontHead >= 1 << 20, frontHead * 2 > front.count {
            front.removeFirst(frontHead)
            frontHead = 0
        }
    }

    /// The byte range (in `front`) and tag of the next record, loading it from the file or the
    /// back buffer when the front has no whole record; nil when the spool is empty.
    private func nextRecord() throws(SpoutError) -> (range: Range<Int>, tag: Int32)? {
        while true {
            let available = front.count - frontHead
            var needed = Self.headerBytes
            if available >= Self.headerBytes {
                let length = Int(Self.uint32(front, at: frontHead))
                if available - Self.headerBytes >= length {
                    let tag = Int32(bitPattern: Self.uint32(front, at: frontHead + 4))
                    let start = frontHead + Self.headerBytes
                    frontHead = start + length
                    return (start..<start + length, tag)
                }
                needed = Self.headerBytes + length
            }
            if readOffset < writeOffset {
                try readFile(needed: needed - available)
            } else if available == 0, !back.isEmpty {
                // Nothing on disk: the back buffer is next in line.
                swap(&front, &back)
                back.removeAll(keepingCapacity: true)
                frontHead = 0
            } else {
                return nil
            }
        }
    }

    // MARK: The file

    private func flushBack() throws(SpoutError) {
        guard !back.isEmpty else { return }
        if file < 0 { try openFile() }
        var written = 0
        while written < back.count {
            let result = back.withUnsafeBytes { pwrite(file, $0.baseAddress! + written, $0.count - written, writeOffset + off_t(written)) }
            guard result > 0 else {
                if result < 0, errno == EINTR { continue }
                throw .spoolFailed("cannot write the event spool: \(String(cString: strerror(errno)))")
            }
            written += result
        }
        writeOffset += off_t(back.count)
        back.removeAll(keepingCapacity: true)
    }

    /// Moves at least `needed` more bytes (half the memory limit when there are) from the
    /// file to the end of the front.
    private func readFile(needed: Int) throws(SpoutError) {
        if frontHead > 0 {
            front.removeFirst(frontHead)
            frontHead = 0
        }
        let want = Int(min(off_t(max(needed, memoryLimit / 2)), writeOffset - readOffset))
        let oldCount = front.count
        front.append(contentsOf: repeatElement(0, count: want))
        var loaded = 0
        while loaded < want {
            let result = front.withUnsafeMutableBytes { pread(file, $0.baseAddress! + oldCount + loaded, want - loaded, readOffset + off_t(loaded)) }
            guard result > 0 else {
                if result < 0, errno == EINTR { continue }
                throw .spoolFailed("cannot read the event spool: \(result < 0 ? String(cString: strerror(errno)) : "unexpected end")")
            }
            loaded += result
        }
        readOffset += off_t(want)
        if readOffset == writeOffset {
            // Drained: start the file over.
            readOffset = 0
            writeOffset = 0
            _ = ftruncate(file, 0)
        }
    }

    private func openFile() throws(SpoutError) {
        let directory = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array("\(directory)/spout-spool-XXXXXX".utf8CString)
        let descriptor = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard descriptor >= 0 else {
            throw .spoolFailed("cannot create an event spool file in \(directory) (set TMPDIR): \(String(cString: strerror(errno)))")
        }
        // Unlinked at once: the file disappears with the process, however it ends.
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
        file = descriptor
    }
}

/// An event as the spool writes it to its file: length-prefixed fields, little-endian.
enum SpooledEvent {
    static func encode(_ event: OutboxEvent, into bytes: inout [UInt8]) {
        func integer<T: FixedWidthInteger>(_ value: T) {
            withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
        }
        func field(_ value: some Collection<UInt8>) {
            integer(UInt32(truncatingIfNeeded: value.count))
            bytes.append(contentsOf: value)
        }
        func optional(_ value: String?) {
            if let value { bytes.append(1); field(value.utf8) } else { bytes.append(0) }
        }
        field(event.id.utf8)
        field(event.topic.utf8)
        optional(event.key)
        optional(event.type)
        bytes.append(event.payloadFormat == .json ? 0 : event.payloadFormat == .text ? 1 : 2)
        field(event.payload)
        integer(UInt32(truncatingIfNeeded: event.headers.count))
        for header in event.headers {
            field(header.name.utf8)
            field(header.value.utf8)
        }
        integer(event.committedAt.rawValue)
        // Streamed events (all but dead letters, in the spool) end here; others say what they are.
        if event.source != .stream || event.route != nil { bytes.append(event.source.rawValue) }
        if let route = event.route { field(route.utf8) } // issue 14: several sinks
    }

    /// The event in a record `encode` wrote, with `lsn`; nil when the record is damaged.
    static func decode(_ record: UnsafeRawBufferPointer, lsn: LSN) -> OutboxEvent? {
        var cursor = 0
        func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
            guard record.count - cursor >= MemoryLayout<T>.size else { return nil }
            var value = T.zero
            withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: record[cursor..<cursor + MemoryLayout<T>.size])) }
            cursor += MemoryLayout<T>.size
            return T(littleEndian: value)
        }
        func bytes() -> UnsafeRawBufferPointer? {
            guard let count = integer(UInt32.self).map(Int.init), record.count - cursor >= count else { return nil }
            defer { cursor += count }
            return UnsafeRawBufferPointer(rebasing: record[cursor..<cursor + count])
        }
        func string() -> String? { bytes().map { String(decoding: $0, as: UTF8.self) } }
        func optional() -> String?? {
            guard let present = integer(UInt8.self) else { return nil }
            guard present == 1 else { return .some(nil) }
            return string().map { .some($0) }
        }
        guard let id = string(), let topic = string(), let key = optional(), let type = optional(),
              let format = integer(UInt8.self), let payload = bytes(), let headerCount = integer(UInt32.self) else { return nil }
        var headers: [OutboxEvent.Header] = []
        for _ in 0..<min(Int(headerCount), record.count) {
            guard let name = string(), let value = string() else { return nil }
            headers.append(OutboxEvent.Header(name: name, value: value))
        }
        guard headers.count == Int(headerCount), let committedAt = integer(Int64.self) else { return nil }
        var source = OutboxEvent.Source.stream
        var route: String?
        if cursor < record.count {
            guard let marked = integer(UInt8.self).flatMap(OutboxEvent.Source.init(rawValue:)) else { return nil }
            source = marked
            // A `stream` byte is written only before a route (issue 14: several sinks).
            if cursor < record.count || marked == .stream {
                guard let text = string() else { return nil }
                route = text
            }
        }
        guard cursor == record.count else { return nil }
        var event = OutboxEvent(id: id, topic: topic, key: key, type: type, payload: Array(payload),
                                payloadFormat: format == 0 ? .json : format == 1 ? .text : .binary,
                                headers: headers, lsn: lsn, committedAt: PostgresTimestamp(rawValue: committedAt), source: source)
        event.route = route
        return event
    }
}
