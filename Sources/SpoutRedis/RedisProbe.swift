import SpoutCore
import CHiredis
import Foundation

/// `spout check` for a `redis://` sink: the server answers (AUTH, SELECT and PING as the sink
/// does them), and the user may XADD to the stream, asked with `ACL DRYRUN` (Redis 7+) so
/// that nothing is written. A blocking hiredis connection with a timeout: the check runs
/// before any relay, and must never hang on a dead host.
public enum RedisProbe {
    public static func check(url text: String, options: SinkOptions = SinkOptions(), topic: TopicTemplate,
                             timeoutSeconds: Int = 5) throws(SpoutError) -> [CheckResult] {
        let url = try RedisURL(parsing: text)
        let server = "Redis at \(url.address)"
        let timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        guard let context = redisConnectWithTimeout(url.host, url.port, timeout) else {
            return [.fail("sink", "\(server): out of memory", fix: nil), .skip("sink_write", because: "Redis is not reachable")]
        }
        defer { redisFree(context) }
        if context.pointee.err != 0 {
            return [.fail("sink", "cannot connect to \(server): \(errorText(context))",
                          fix: "check the host and port in --sink and that redis-server is running and reachable from here"),
                    .skip("sink_write", because: "Redis is not reachable")]
        }
        redisSetTimeout(context, timeout)
        do {
            if let password = url.password {
                if case let .error(message) = try command(context, ["AUTH"] + (url.user.map { [$0] } ?? []) + [password]) {
                    return [.fail("sink", "\(server) rejected the login (\(message))", fix: "fix the user and password in --sink (redis://user:password@host)"),
                            .skip("sink_write", because: "Redis refused the login")]
                }
            }
            if url.database != 0, case let .error(message) = try command(context, ["SELECT", String(url.database)]) {
                return [.fail("sink", "\(server) cannot select database \(url.database) (\(message))", fix: "use a number below its \"databases\" setting"),
                        .skip("sink_write", because: "Redis refused the database")]
            }
            if case let .error(message) = try command(context, ["PING"]) {
                let fix = message.hasPrefix("NOAUTH") ? "give the password in --sink: redis://:password@\(url.address)" : nil
                return [.fail("sink", "\(server) refused PING (\(message))", fix: fix), .skip("sink_write", because: "Redis did not answer PING")]
            }
            var version = ""
            if case let .text(info) = try command(context, ["INFO", "server"]),
               let line = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("redis_version:") }) {
                version = " " + line.dropFirst("redis_version:".count)
            }
            let reachable = CheckResult.pass("sink", "Redis\(version) at \(url.address) answers PING")
            return [reachable, try writable(context, url: url, topic: topic, ids: options.redisIDs)]
        } catch {
            // hiredis reports its read timeout as the socket's EAGAIN.
            let reason = error.reason == String(cString: strerror(EAGAIN)) ? "no answer within \(timeoutSeconds) s" : error.reason
            return [.fail("sink", "\(server): \(reason)", fix: "check that redis-server at \(url.address) is running and answering"),
                    .skip("sink_write", because: "Redis did not answer")]
        }
    }

    /// `ACL DRYRUN user COMMAND …` for each command the sink sends (MULTI, XADD, EXEC; with
    /// `--redis-ids lsn` also XINFO STREAM and XRANGE): whether the ACL lets the sink's user append.
    private static func writable(_ context: UnsafeMutablePointer<redisContext>, url: RedisURL, topic: TopicTemplate,
                                 ids: SinkOptions.RedisIDs) throws(Failure) -> CheckResult {
        let user = url.user ?? "default"
        let stream = topic.fixedTopic ?? topic.pattern(placeholder: "check")
        let target = topic.fixedTopic.map { "stream \($0)" } ?? "the streams of --topic \(topic) (tried as \(stream))"
        var commands = [["MULTI"], ["XADD", stream, "*", "id", "spout-check"], ["EXEC"]]
        if ids == .lsn { commands += [["XINFO", "STREAM", stream], ["XRANGE", stream, "-", "+"]] }
        let names = commands.map { $0[0] == "XINFO" ? "XINFO STREAM" : $0[0] }
        var denied: [(command: String, reason: String)] = []
        for (name, command) in zip(names, commands) {
            switch try self.command(context, ["ACL", "DRYRUN", user] + command) {
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

    private struct Failure: Error {
        var reason: String
    }

    private static func command(_ context: UnsafeMutablePointer<redisContext>, _ arguments: [String]) throws(Failure) -> Reply {
        var copies = arguments.map { strdup($0) }
        defer { copies.forEach { free($0) } }
        let lengths = arguments.map { $0.utf8.count }
        let raw = copies.withUnsafeMutableBufferPointer { pointers in
            pointers.withMemoryRebound(to: UnsafePointer<CChar>?.self) { argv in
                lengths.withUnsafeBufferPointer { redisCommandArgv(context, Int32(arguments.count), argv.baseAddress, $0.baseAddress) }
            }
        }
        guard let raw else { throw Failure(reason: errorText(context)) }
        defer { freeReplyObject(raw) }
        let reply = raw.assumingMemoryBound(to: redisReply.self).pointee
        let text = reply.str.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: reply.len), as: UTF8.self) } ?? ""
        return reply.type == REDIS_REPLY_ERROR ? .error(text) : .text(text)
    }

    private static func errorText(_ context: UnsafeMutablePointer<redisContext>) -> String {
        let text = withUnsafeBytes(of: context.pointee.errstr) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return text.isEmpty ? "I/O error" : text
    }
}
