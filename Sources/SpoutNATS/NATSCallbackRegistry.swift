import SpoutCore
import Synchronization

/// Lets libnats callbacks find their connection by a number rather than by a pointer to a
/// Swift object: a callback may still run on a libnats thread after
/// `NATSConnection.close()`. It then finds no entry and does nothing.
enum NATSCallbackRegistry {
    private struct Entries {
        var next = 1
        var connections: [Int: NATSConnectionEvents] = [:]
    }

    private static let entries = Mutex(Entries())

    static func register(_ events: NATSConnectionEvents) -> UnsafeMutableRawPointer? {
        let key = entries.withLock { entries -> Int in
            let key = entries.next
            entries.next += 1
            entries.connections[key] = events
            return key
        }
        return UnsafeMutableRawPointer(bitPattern: key)
    }

    static func remove(_ closure: UnsafeMutableRawPointer?) {
        let key = Int(bitPattern: closure)
        _ = entries.withLock { $0.connections.removeValue(forKey: key) }
    }

    static func events(_ closure: UnsafeMutableRawPointer?) -> NATSConnectionEvents? {
        let key = Int(bitPattern: closure)
        return entries.withLock { $0.connections[key] }
    }
}
