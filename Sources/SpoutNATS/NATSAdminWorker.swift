import SpoutCore
import CNats
import Dispatch
import Synchronization

/// Runs the NATS work that can block for seconds on a thread of its own: connecting (a server
/// that accepts TCP but does not answer holds a connect for its whole timeout, per server),
/// JetStream API requests on the admin connection (up to their timeout), and closing an
/// abandoned connection (libnats flushes and may wait for a PONG). The relay thread must send
/// PostgreSQL a status update every second (the walsender drops a silent client), so it only
/// hands jobs over here and collects their results, announced through the sink's wakeup.
///
/// One serial queue: jobs run in the order given, so a connection handed to `close` is no
/// longer in use by an earlier job, and a new connection is made only after the old one is gone.
final class NATSAdminWorker: Sendable {
    enum SubjectCheck: Sendable {
        /// A stream captures the subject; `note` says what was created or extended for it.
        case ready(note: String?)
        case permanent(String)
        case transient(NATSFailure)
    }

    enum Result: Sendable {
        case connected(NATSConnection)
        case connectFailed(NATSFailure)
        /// The answer for `subject`, asked on the connection the sink numbered `generation`.
        case subjectChecked(String, SubjectCheck, generation: Int)
    }

    private struct State {
        var results: [Result] = []
        var shutDown = false
    }

    private let endpoint: NATSEndpoint
    private let createStream: String?
    private let maxPendingAcks: Int
    private let loop: NATSEventLoop
    private let queue = DispatchQueue(label: "spout.nats.admin")
    private let state = Mutex(State())

    init(endpoint: NATSEndpoint, createStream: String?, maxPendingAcks: Int, loop: NATSEventLoop) {
        self.endpoint = endpoint
        self.createStream = createStream
        self.maxPendingAcks = maxPendingAcks
        self.loop = loop
    }

    /// Opens a new connection pair; the result is `.connected` or `.connectFailed`.
    func connect() {
        queue.async { [self] in
            do throws(NATSFailure) {
                let connection = try NATSConnection(endpoint: endpoint, maxPendingAcks: maxPendingAcks, loop: loop)
                deliver(.connected(connection), orClose: connection)
            } catch {
                deliver(.connectFailed(error), orClose: nil)
            }
        }
    }

    /// Looks up (and with `--nats-create-stream` creates or extends) the stream for `subject`.
    /// The sink detached nothing of `connection` yet: its admin side is used here only.
    func checkSubject(_ subject: String, on connection: NATSConnection, generation: Int) {
        queue.async { [self] in
            deliver(.subjectChecked(subject, check(subject, on: connection), generation: generation), orClose: nil)
        }
    }

    /// Closes a connection the sink abandoned (after `detach()` on the relay thread).
    func close(_ connection: NATSConnection) {
        queue.async { connection.close() }
    }

    /// Closes the sink's last connection behind every job still using it (a stream look-up
    /// may be using its admin side for seconds), waiting at most `timeout`: destroying it on
    /// the relay thread meanwhile would pull it from under that job.
    func closeWhenIdle(_ connection: NATSConnection, timeout: Duration) {
        let closed = DispatchSemaphore(value: 0)
        queue.async {
            connection.close()
            closed.signal()
        }
        _ = closed.wait(timeout: .now() + .milliseconds(Int(timeout.wholeMilliseconds)))
    }

    /// The results so far, in the order the jobs finished.
    func takeResults(into results: inout [Result]) {
        state.withLock { state in
            results.append(contentsOf: state.results)
            state.results.removeAll(keepingCapacity: true)
        }
    }

    /// The sink closed: a connection that a job opens from now on is closed at once.
    func shutDown() {
        let pending = state.withLock { state -> [Result] in
            state.shutDown = true
            defer { state.results.removeAll() }
            return state.results
        }
        for case let .connected(connection) in pending { close(connection) }
    }

    private func deliver(_ result: Result, orClose connection: NATSConnection?) {
        let accepted = state.withLock { state in
            guard !state.shutDown else { return false }
            state.results.append(result)
            return true
        }
        if accepted {
            loop.wakeup.signal()
        } else {
            connection?.close()
        }
    }

    /// A subject is usable when a stream captures it (created or extended with
    /// `--nats-create-stream`).
    private func check(_ subject: String, on connection: NATSConnection) -> SubjectCheck {
        do {
            if try connection.streamExists(capturing: subject) { return .ready(note: nil) }
            guard let createStream else {
                let suggestion = NATSWireRules.suggestedStreamSubject(for: subject)
                return .permanent("no JetStream stream captures subject \"\(subject)\": create one, e.g. nats stream add OUTBOX --subjects '\(suggestion)' --storage file --defaults, or run spout with --nats-create-stream NAME")
            }
            switch try connection.addSubject(subject, toStream: createStream) {
            case .created: return .ready(note: "created JetStream stream \(createStream) (file storage) for subject \(subject)")
            case .extended: return .ready(note: "added subject \(subject) to JetStream stream \(createStream)")
            }
        } catch {
            if error.isConnectivityProblem { return .transient(error) }
            if error.status == NATS_NO_RESPONDERS {
                return .permanent("JetStream is not enabled on the NATS server at \(endpoint.redacted): start nats-server with -js")
            }
            if let createStream {
                return .permanent("cannot create or extend JetStream stream \(createStream) to capture subject \"\(subject)\": \(error)")
            }
            return .permanent("cannot look up the JetStream stream for subject \"\(subject)\": \(error)")
        }
    }
}
