import SpoutCore

/// `spout check` for an `amqp://` sink: logged in (user, password, vhost), and the exchange
/// there (or `--amqp-declare`, which declares it). It looks only: the exchange is checked with
/// a passive declare, nothing is created. Whether a queue is bound for every topic cannot be
/// asked over AMQP 0-9-1; an unroutable event is a poison event when it happens.
public enum AMQPProbe {
    public static func check(url text: String, options: SinkOptions) throws(SpoutError) -> [CheckResult] {
        let url = try AMQPURL(parsing: text)
        try AMQPSink.validate(url: text, options: options)
        let exchange = options.amqpExchange
        let connection: AMQPConnection
        do throws(AMQPConnection.Failure) {
            connection = try AMQPConnection.open(url, tls: options.tls, exchange: exchange, declare: false, timeout: AMQPAdapter.connectTimeout)
        } catch {
            // The exchange step comes after the login: a 404 or a refusal naming the exchange means logged in.
            guard error.code == 404 || (error.code == 403 && error.reason.contains("exchange \"")) else {
                let fix = error.certificateProblem ? "see the reason: --sink-ca-file, --sink-cert-file and --sink-key-file, or the host name in --sink"
                    : error.permanent ? "fix the user, password or vhost in --sink (the error says which)"
                    : "check the host and port in --sink and that RabbitMQ is running and reachable from here"
                return [.fail("sink", "cannot log in to the AMQP broker at \(url.described): \(error.reason)", fix: fix),
                        .skip("sink_write", because: "the AMQP broker is not reachable")]
            }
            let connected = CheckResult.pass("sink", "logged in to the AMQP broker at \(url.described)")
            if error.code == 404, options.amqpDeclare {
                return [connected, .pass("sink_write", "exchange \"\(exchange)\" does not exist: spout run declares it (--amqp-declare)")]
            }
            let fix = error.code == 404 ? "declare it (a durable topic exchange), or start spout with --amqp-declare"
                : "grant the user configure and write permissions on the exchange (rabbitmqctl set_permissions)"
            return [connected, .fail("sink_write", error.reason, fix: fix)]
        }
        connection.closeGracefully()
        return [.pass("sink", "logged in to the AMQP broker at \(url.described)"),
                .pass("sink_write", "exchange \"\(exchange)\" exists; events are routed by topic (an event no queue is bound for is a poison event)")]
    }
}
