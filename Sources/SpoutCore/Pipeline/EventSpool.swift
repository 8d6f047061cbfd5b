import Foundation

/// The events between the replication stream and the sink, in commit order: those of the
/// transaction being received and those committed but not yet handed to the sink.
///
/// Memory is bounded: past `memoryLimit` bytes, events go to an unlinked temporary file
/// and come back in order, so a million-row transaction or a long backlog takes the same
/// memory as a small one. Events of the open transaction do not know their commit LSN yet;
/// `commit(endLSN:)` records it and `popCommitted()` stamps it on the way out.
final class EventSpool {
    private let memoryLimit: Int

    // Oldest to newest: front (memory) → file → back (memory, written to the file in batches).
    private var front: [OutboxEvent] = []
    private var frontHead = 0
    private var back: [OutboxEvent] = []
    private var backBytes = 0
    private var memoryBytes = 0

    private var file: Int32 = -1
    private var fileEvents = 0
    private var readOffset: off_t = 0
    private var writeOffset: off_t = 0
    private var readBuffer: [UInt8] = []
    private var readBufferHead = 0

    /// Committed transactions not yet fully popped: how many events each has left, and its LSN.
    private var commits: [(remaining: Int, endLSN: LSN)] = []
    private var commitsHead = 0
    /// Events appended since the last commit (the open transaction).
    private(set) var openCount = 0
    /// Committed events not yet popped.
    private(set) var committedCount = 0

    private static let backBatchBytes = 1 << 20

    init(memoryLimit: Int) {
        self.memoryLimit = max(memoryLimit, 1 << 16)
    }

    deinit {
        if file >= 0 { close(file) }
    }

    /// Appends an event of the open transaction.
    func append(_ event: OutboxEvent) throws(SpoutError) {
        let size = event.approximateSize
        openCount += 1
        if fileEvents == 0, back.isEmpty, memoryBytes + size <= memoryLimit {
            front.append(event)
            memoryBytes += size
            return
        }
        back.append(event)
        backBytes += size
        if backBytes >= Self.backBatchBytes { try flushBack() }
    }

    /// The open transaction committed with this end LSN.
    func commit(endLSN: LSN) {
        if openCount > 0 { commits.append((openCount, endLSN)) }
        committedCount += openCount
        openCount = 0
    }

    /// The oldest committed event, stamped with its transaction's commit LSN; nil when none.
    func popCommitted() throws(SpoutError) -> OutboxEvent? {
        guard committedCount > 0, commitsHead < commits.count else { return nil }
        if frontHead == front.count { try refillFront() }
        guard frontHead < front.count else { return nil }
        var event = front[frontHead]
        front[frontHead] = Self.placeholder
        frontHead += 1
        memoryBytes -= event.approximateSize
        if frontHead == front.count {
            front.removeAll(keepingCapacity: front.capacity <= 65_536)
            frontHead = 0
        } else if frontHead >= 4096, frontHead * 2 > front.count {
            // The open transaction keeps `front` from emptying: drop the popped slots.
            front.removeFirst(frontHead)
            frontHead = 0
        }
        event.lsn = commits[commitsHead].endLSN
        commits[commitsHead].remaining -= 1
        if commits[commitsHead].remaining == 0 {
            commitsHead += 1
            if commitsHead == commits.count {
                commits.removeAll(keepingCapacity: true)
                commitsHead = 0
            } else if commitsHead >= 4096, commitsHead * 2 > commits.count {
                commits.removeFirst(commitsHead)
                commitsHead = 0
            }
        }
        committedCount -= 1
        return event
    }

    private static let placeholder = OutboxEvent(id: "", topic: "", key: nil, type: nil, payload: [], payloadFormat: .text,
                                                 headers: [], lsn: .zero, committedAt: PostgresTimestamp(rawValue: 0))

    // MARK: The file

    private func flushBack() throws(SpoutError) {
        guard !back.isEmpty else { return }
        if file < 0 { try openFile() }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(backBytes + back.count * 32)
        for event in back { SpooledEvent.encode(event, into: &bytes) }
        var written = 0
        while written < bytes.count {
            let result = bytes.withUnsafeBytes { pwrite(file, $0.baseAddress! + written, $0.count - written, writeOffset + off_t(written)) }
            guard result > 0 else {
                if result < 0, errno == EINTR { continue }
                throw .spoolFailed("cannot write the event spool: \(String(cString: strerror(errno)))")
            }
            written += result
        }
        writeOffset += off_t(bytes.count)
        fileEvents += back.count
        back.removeAll(keepingCapacity: true)
        backBytes = 0
    }

    private func refillFront() throws(SpoutError) {
        if fileEvents == 0 {
            // Nothing on disk: the back buffer is next in line.
            swap(&front, &back)
            frontHead = 0
            memoryBytes = backBytes
            backBytes = 0
            return
        }
        var loadedBytes = 0
        while fileEvents > 0, loadedBytes < memoryLimit / 2 || front.isEmpty {
            let event = try readEvent()
            front.append(event)
            loadedBytes += event.approximateSize
            fileEvents -= 1
        }
        memoryBytes = loadedBytes
        if fileEvents == 0 {
            // Drained: start the file over.
            readOffset = 0
            writeOffset = 0
            readBuffer.removeAll(keepingCapacity: true)
            readBufferHead = 0
            _ = ftruncate(file, 0)
        }
    }

    private func readEvent() throws(SpoutError) -> OutboxEvent {
        while true {
            var reader = SpooledEvent.Reader(bytes: readBuffer, offset: readBufferHead)
            if let event = reader.decode() {
                readBufferHead = reader.offset
                return event
            }
            // Need more bytes: keep the unread tail and read the next block.
            readBuffer.removeFirst(readBufferHead)
            readBufferHead = 0
            let oldCount = readBuffer.count
            let want = max(1 << 20, reader.needed)
            readBuffer.append(contentsOf: repeatElement(0, count: want))
            let result = readBuffer.withUnsafeMutableBytes { pread(file, $0.baseAddress! + oldCount, want, readOffset) }
            guard result > 0 else {
                throw .spoolFailed("cannot read the event spool: \(result < 0 ? String(cString: strerror(errno)) : "unexpected end")")
            }
            readBuffer.removeLast(want - result)
            readOffset += off_t(result)
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

/// The spool file's record of one event: length-prefixed fields, little-endian.
enum SpooledEvent {
    static func encode(_ event: OutboxEvent, into bytes: inout [UInt8]) {
        func integer<T: FixedWidthInteger>(_ value: T) {
            withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
        }
        func field(_ value: some Collection<UInt8>) {
            integer(UInt32(value.count))
            bytes.append(contentsOf: value)
        }
        func optional(_ value: String?) {
            if let value { bytes.append(1); field(value.utf8) } else { bytes.append(0) }
        }
        let start = bytes.count
        integer(UInt32(0))  // record length, patched below
        field(event.id.utf8)
        field(event.topic.utf8)
        optional(event.key)
        optional(event.type)
        bytes.append(event.payloadFormat == .json ? 0 : event.payloadFormat == .text ? 1 : 2)
        field(event.payload)
        integer(UInt32(event.headers.count))
        for header in event.headers {
            field(header.name.utf8)
            field(header.value.utf8)
        }
        integer(event.committedAt.rawValue)
        let length = UInt32(bytes.count - start - 4).littleEndian
        withUnsafeBytes(of: length) { bytes.replaceSubrange(start..<start + 4, with: $0) }
    }

    /// Decodes from bytes Spout wrote itself; `nil` (with `needed`) when the record is incomplete.
    struct Reader {
        let bytes: [UInt8]
        var offset: Int
        var needed = 0

        init(bytes: [UInt8], offset: Int) {
            self.bytes = bytes
            self.offset = offset
        }

        mutating func decode() -> OutboxEvent? {
            guard bytes.count - offset >= 4 else { needed = 4; return nil }
            let length = Int(integer(at: offset, as: UInt32.self))
            guard bytes.count - offset - 4 >= length else { needed = length + 4; return nil }
            var cursor = offset + 4
            func next<T: FixedWidthInteger>(_ type: T.Type) -> T {
                defer { cursor += MemoryLayout<T>.size }
                return integer(at: cursor, as: T.self)
            }
            func string() -> String {
                let count = Int(next(UInt32.self))
                defer { cursor += count }
                return String(decoding: bytes[cursor..<cursor + count], as: UTF8.self)
            }
            func optional() -> String? {
                let present = bytes[cursor]
                cursor += 1
                return present == 1 ? string() : nil
            }
            let id = string()
            let topic = string()
            let key = optional()
            let type = optional()
            let format: OutboxEvent.PayloadFormat = switch bytes[cursor] { case 0: .json; case 1: .text; default: .binary }
            cursor += 1
            let payloadCount = Int(next(UInt32.self))
            let payload = Array(bytes[cursor..<cursor + payloadCount])
            cursor += payloadCount
            let headerCount = Int(next(UInt32.self))
            var headers: [OutboxEvent.Header] = []
            headers.reserveCapacity(headerCount)
            for _ in 0..<headerCount { headers.append(OutboxEvent.Header(name: string(), value: string())) }
            let committedAt = PostgresTimestamp(rawValue: next(Int64.self))
            offset += 4 + length
            return OutboxEvent(id: id, topic: topic, key: key, type: type, payload: payload, payloadFormat: format,
                               headers: headers, lsn: .zero, committedAt: committedAt)
        }

        private func integer<T: FixedWidthInteger>(at position: Int, as: T.Type) -> T {
            var value = T.zero
            withUnsafeMutableBytes(of: &value) { target in
                for index in 0..<MemoryLayout<T>.size { target[index] = bytes[position + index] }
            }
            return T(littleEndian: value)
        }
    }
}
