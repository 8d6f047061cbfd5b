import SpoutCore
import CNats

/// `spout check` for a `nats://` sink: connected (the sink's own connection pair, libnats'
/// connect timeout per server), JetStream enabled, and a stream capturing the subjects
/// (or `--nats-create-stream`, which makes one). It looks only: nothing is created.
public enum NATSProbe {
    public static func check(url: String, options: SinkOptions, topic: TopicTemplate) throws(SpoutError) -> [CheckResult] {
        let endpoint = try NATSJetStreamAdapter.endpoint(url, options: options)
        let wakeup: DeliveryWakeup
        do { wakeup = try DeliveryWakeup() } catch {
            return [.fail("sink", "cannot set up the NATS client: \(error)", fix: nil)]
        }
        let connection: NATSConnection
        do {
            connection = try NATSConnection(endpoint: endpoint, maxPendingAcks: 1, loop: NATSEventLoop(wakeup: wakeup))
        } catch {
            let fix = error.status == NATS_CONNECTION_AUTH_FAILED
                ? "fix the user and password or token in --sink"
                : error.certificateProblem ? "see the reason: --sink-ca-file, --sink-cert-file and --sink-key-file, or the URL in --sink"
                : "check the servers in --sink and that nats-server is running and reachable from here"
            let reason = error.certificateProblem ? error.description : "cannot connect to NATS at \(endpoint.redacted): \(error)"
            return [.fail("sink", reason, fix: fix),
                    .skip("sink_jetstream", because: "NATS is not reachable"), .skip("sink_write", because: "NATS is not reachable")]
        }
        defer { connection.close() }
        var results = [CheckResult.pass("sink", "connected to NATS at \(endpoint.redacted)")]
        do {
            try connection.checkJetStream()
            results.append(.pass("sink_jetstream", "JetStream is enabled"))
        } catch {
            if error.status == NATS_NO_RESPONDERS {
                results.append(.fail("sink_jetstream", "JetStream is not enabled on the NATS server at \(endpoint.redacted)",
                                     fix: "start nats-server with -js (or a jetstream block in its configuration)"))
            } else {
                results.append(.fail("sink_jetstream", "cannot read the JetStream account: \(error)", fix: nil))
            }
            results.append(.skip("sink_write", because: "JetStream is not available"))
            return results
        }
        let subject = topic.fixedTopic ?? topic.subjectPattern
        let subjects = topic.fixedTopic == nil ? "subjects \(subject) (from --topic \(topic))" : "subject \(subject)"
        do {
            if try connection.streamExists(capturing: subject) {
                results.append(.pass("sink_write", "a JetStream stream captures \(subjects)"))
            } else if let stream = options.natsCreateStream {
                results.append(.pass("sink_write", "no JetStream stream captures \(subjects): spout run creates or extends stream \(stream) (--nats-create-stream)"))
            } else {
                let suggestion = NATSWireRules.suggestedStreamSubject(for: topic.fixedTopic ?? subject)
                results.append(.fail("sink_write", "no JetStream stream captures \(subjects)",
                                     fix: "nats stream add OUTBOX --subjects '\(suggestion)' --storage file --defaults, or --nats-create-stream NAME"))
            }
        } catch {
            results.append(.fail("sink_write", "cannot look up the JetStream streams for \(subjects): \(error)", fix: nil))
        }
        return results
    }
}
