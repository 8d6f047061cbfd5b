import SpoutCore
import Foundation

/// `spout check` for a `redis://` or `rediss://` sink: the server answers (AUTH, SELECT and PING as the sink
/// does them), and the user may XADD to the stream, asked with `ACL DRYRUN` (Redis 7+) so
/// that nothing is written. The sink's own `RedisConnection`, waited on with a timeout: the
/// check runs before any relay, and must never hang on a dead host.
public enum RedisProbe {
    public static func check(url text: String, options: SinkOptions = SinkOptions(), topic: TopicTemplate,
                             timeoutSeconds: Int = 5) throws(SpoutError) -> [CheckResult] {
        let url = try RedisURL(parsing: text)
        let tls = url.tls ? try TLSClient(options.tls) : nil
        let server = "Redis at \(url.address)"
        let session: Session
        do {
            session = try Session(url: url, tls: tls, timeoutSeconds: timeoutSeconds)
        } catch {
            return [Self.unreachable(server, error), .skip("sink_write", because: "Redis is not reachable")]
        }
        do {
            if let password = url.password {
                if case let .error(message) = try session.command(["AUTH"] + (url.user.map { [$0] } ?? []) + [password]) {
                    return [.fail("sink", "\(server) rejected the login (\(message))", fix: "fix the user and password in --sink (redis://user:password@host)"),
                            .skip("sink_write", because: "Redis refused the login")]
                }
            }
            if url.database != 0, case let .error(message) = try session.command(["SELECT", String(url.database)]) {
                return [.fail("sink", "\(server) cannot select database \(url.database) (\(message))", fix: "use a number below its \"databases\" setting"),
                        .skip("sink_write", because: "Redis refused the database")]
            }
            if case let .error(message) = try session.command(["PING"]) {
                let fix = message.hasPrefix("NOAUTH") ? "give the password in --sink: redis://:password@\(url.address)" : nil
                return [.fail("sink", "\(server) refused PING (\(message))", fix: fix), .skip("sink_write", because: "Redis did not answer PING")]
            }
            var version = ""
            if case let .text(info) = try session.command(["INFO", "server"]),
               let line = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("redis_version:") }) {
                version = " " + line.dropFirst("redis_version:".count)
            }
            let reachable = CheckResult.pass("sink", "Redis\(version) at \(url.address) answers PING")
            return [reachable, try writable(session, url: url, topic: topic, ids: options.redisIDs)]
        } catch {
            // A TLS 1.3 server refuses a client certificate after the handshake: the first read tells.
            if error.isCertificateProblem { return [Self.unreachable(server, error), .skip("sink_write", because: "Redis is not reachable")] }
            return [.fail("sink", "\(server): \(error.reason)", fix: "check that redis-server at \(url.address) is running and answering"),
                    .skip("sink_write", because: "Redis did not answer")]
        }
    }

    /// No connection: a TLS certificate problem (its reason names the fix) or an outage.
    private static func unreachable(_ server: String, _ error: RedisConnection.Failure) -> CheckResult {
        guard error.isCertificateProblem else {
            return .fail("sink", "cannot connect to \(server): \(error.reason)",
                         fix: "check the host and port in --sink and that redis-server is running and reachable from here")
        }
        return .fail("sink", "cannot connect to \(server): \(error.reason)",
                     fix: "see the reason: --sink-ca-file, --sink-cert-file and --sink-key-file, or the host name in --sink")
    }

    /// `ACL DRYRUN user COMMAND …` for each command the sink sends (MULTI, XADD, EXEC; with
    /// `--redis-ids lsn` also XINFO STREAM and XRANGE): whether the ACL lets the sink's user append.
    private static func writable(_ session: Session, url: RedisURL, topic: TopicTemplate,
                                 ids: SinkOptions.RedisIDs) throws(RedisConnection.Failure) -> CheckResult {
        let user = url.user ?? "default"
        let stream = topic.fixedTopic ?? topic.pattern(placeholder: "check")
        let target = topic.fixedTopic.map { "stream \($0)" } ?? "the streams of --topic \(topic) (tried as \(stream))"
        var commands = [["MULTI"], ["XADD", stream, "*", "id", "spout-check"], ["EXEC"]]
        if ids == .lsn { commands += [["XINFO", "STREAM", stream], ["XRANGE", stream, "-", "+"]] }
        let names = commands.map { $0[0] == "XINFO" ? "XINFO STREAM" : $0[0] }
        var denied: [(command: String, reason: String)] = []
        for (name, command) in zip(names, commands) {
            switch try session.command(["ACL", "DRYRUN", user] + command) {
            case let .text(answer) where answer == "OK": continue
            case let .text(denial): denied.append((name, denial))
            case let .error(message) where message.hasPrefix("NOPERM"):
                return .warn("sink_write", "not checked: user \(user) may not run ACL DRYRUN (\(message))",
                             fix: "to have spout check it: ACL SETUSER \(user) +acl|dryrun")
            case let .error(message):
                // Before Redis 7 there is no ACL DRYRUN.
                return .warn("sink_write", "not checked: this Redis has no ACL DRYRUN (Redis 7+): \(message)")
            }
        }
        guard !denied.isEmpty else { return .pass("sink_write", "user \(user) may \(names.joined(separator: ", ")) on \(target)") }
        let detail = "user \(user) may not write to \(target): " + denied.map { "\($0.command): \($0.reason)" }.joined(separator: "; ")
        let grants = names.map { "+" + $0.lowercased().replacingOccurrences(of: " ", with: "|") }.joined(separator: " ")
        let fix = "ACL SETUSER \(user) \(grants) ~\(topic.fixedTopic ?? topic.pattern(placeholder: "*"))"
        // A template is tried with a made-up stream name, which the ACL's key patterns may not mean.
        return topic.fixedTopic == nil ? .warn("sink_write", detail, fix: fix) : .fail("sink_write", detail, fix: fix)
    }

    private enum Reply {
        case text(String)
        case error(String)
    }

    /// One connection used blocking: each wait is bounded by the timeout.
    private struct Session {
        let connection: RedisConnection
        let timeoutSeconds: Int

        init(url: RedisURL, tls: TLSClient?, timeoutSeconds: Int) throws(RedisConnection.Failure) {
            connection = try RedisConnection(connectingTo: url.host, port: url.port, tls: tls)
            self.timeoutSeconds = timeoutSeconds
            guard try connection.awaitConnected(within: .seconds(timeoutSeconds)) else {
                throw connection.connectTimedOut(after: .seconds(timeoutSeconds), server: url.address)
            }
        }

        /// Sends one command and waits for its reply.
        func command(_ arguments: [String]) throws(RedisConnection.Failure) -> Reply {
            var command = RedisCommand()
            for argument in arguments { command.add(argument) }
            try connection.append(&command)
            let deadline = ContinuousClock.now + .seconds(timeoutSeconds)
            while try !connection.write() {
                guard let left = Self.milliseconds(until: deadline) else { throw RedisConnection.Failure(reason: "no answer within \(timeoutSeconds) s") }
                _ = try connection.waitFor(Int16(POLLOUT), milliseconds: left)
            }
            var reply: Reply?
            while true {
                try connection.read()
                if try connection.withNextReply({ reply = $0.kind == .error ? .error($0.text) : .text($0.text) }), let reply { return reply }
                guard let left = Self.milliseconds(until: deadline) else { throw RedisConnection.Failure(reason: "no answer within \(timeoutSeconds) s") }
                _ = try connection.waitFor(Int16(POLLIN), milliseconds: left)
            }
        }

        /// What is left until `deadline` for a wait; nil once it has passed.
        private static func milliseconds(until deadline: ContinuousClock.Instant) -> Int32? {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return nil }
            return Int32(clamping: max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
        }
    }
}
