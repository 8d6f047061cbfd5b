import SpoutCore
import CNats

/// The C callbacks libnats calls; their closure (and event-loop) argument is a registry key.
enum NATSCallbacks {
    static let closed: natsConnectionHandler = { connection, closure in
        guard let events = NATSCallbackRegistry.events(closure), let connection else { return }
        events.connectionClosed(reason: NATSConnection.lostText(connection))
    }

    static let error: natsErrHandler = { connection, _, status, closure in
        guard let events = NATSCallbackRegistry.events(closure) else { return }
        var text: UnsafePointer<CChar>?
        _ = natsConnection_GetLastError(connection, &text)
        events.asynchronousError(text.map { String(cString: $0) } ?? String(cString: natsStatus_GetText(status)))
    }

    // The external event loop: `loop` is the registry key, kept as the user data.
    static let attach: natsEvLoop_Attach = { userData, loop, _, socket in
        userData?.pointee = loop
        return NATSCallbackRegistry.events(loop)?.loop.attach(socket: Int32(socket), owner: Int(bitPattern: loop)) ?? NATS_OK
    }

    static let read: natsEvLoop_ReadAddRemove = { userData, add in
        NATSCallbackRegistry.events(userData)?.loop.setReading(add, owner: Int(bitPattern: userData)) ?? NATS_OK
    }

    static let write: natsEvLoop_WriteAddRemove = { userData, add in
        NATSCallbackRegistry.events(userData)?.loop.setWriting(add, owner: Int(bitPattern: userData)) ?? NATS_OK
    }

    static let detach: natsEvLoop_Detach = { userData in
        NATSCallbackRegistry.events(userData)?.loop.detach(owner: Int(bitPattern: userData)) ?? NATS_OK
    }
}
