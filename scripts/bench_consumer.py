#!/usr/bin/env python3
"""A consumer for the latency part of `make bench`: receives the events Spout delivers and
records commit → receive latency, taken from the `t` field (clock_timestamp() as Unix
seconds) that the bench's pgbench script writes into every payload.

    bench_consumer.py stdout                      (events on stdin: Spout's stdout)
    bench_consumer.py recvlogical                 (pgoutput on stdin: pg_recvlogical -f -)
    bench_consumer.py redis  redis://HOST:PORT  STREAM
    bench_consumer.py nats   nats://HOST:PORT   SUBJECT
    bench_consumer.py kafka  kafka://HOST:PORT  TOPIC PARTITIONS
    bench_consumer.py amqp   amqp://USER:PASSWORD@HOST:PORT/  QUEUE   (AMQP and STOMP: RabbitMQ's queue)
    bench_consumer.py http   PORT                 (the webhook receiver itself: answers 204 to every POST)

Prints `ready` on stdout once subscribed; on SIGTERM prints one JSON object with count and
p50/p99/p99.9/max in milliseconds, then exits. The Python standard library (librdkafka through
ctypes for Kafka), and pika for RabbitMQ (scripts/py-deps; bench.py sets PYTHONPATH).
"""
import ctypes
import json
import signal
import socket
import sys
import time

latencies = []
stopping = False


def record(payload):
    """`payload`: the event's payload, as bytes or already parsed."""
    received = time.time()
    try:
        sent = (json.loads(payload) if isinstance(payload, bytes) else payload)["t"]
        latencies.append(received - float(sent))
    except (ValueError, KeyError, TypeError):
        pass  # warm-up events carry no timestamp


def stop(*_):
    global stopping
    stopping = True


def report():
    values = sorted(latencies)

    def percentile(p):
        if not values:
            return None
        return round(values[min(len(values) - 1, int(len(values) * p))] * 1000, 3)

    print(json.dumps({"count": len(values), "p50_ms": percentile(0.5), "p99_ms": percentile(0.99),
                      "p99_9_ms": percentile(0.999), "max_ms": round(values[-1] * 1000, 3) if values else None}), flush=True)


def host_port(url):
    rest = url.split("://", 1)[1].split("/", 1)[0]
    host, port = rest.rsplit(":", 1)
    return host, int(port)


def consume_stdout():
    # Reads until Spout exits and its stdout closes.
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            record(json.loads(line)["payload"])
        except (ValueError, KeyError):
            continue


def consume_recvlogical():
    """pg_recvlogical writes each pgoutput message (protocol 1) followed by a newline; the
    messages are parsed by their layout, since their bytes may contain newlines too."""
    stream = sys.stdin.buffer
    payload_column = {}  # relation id → index of the payload column

    def take(count):
        data = stream.read(count)
        if len(data) < count:
            raise EOFError
        return data

    def cstring():
        out = b""
        while (byte := take(1)) != b"\0":
            out += byte
        return out

    print("ready", flush=True)
    while True:
        kind = take(1)
        if kind == b"B":
            take(20)
        elif kind == b"C":
            take(25)
        elif kind == b"R":
            relation = int.from_bytes(take(4), "big")
            cstring(), cstring(), take(1)
            for index in range(int.from_bytes(take(2), "big")):
                take(1)
                if cstring() == b"payload":
                    payload_column[relation] = index
                take(8)
        elif kind == b"Y":
            take(4), cstring(), cstring()
        elif kind == b"O":
            take(8), cstring()
        elif kind == b"I":
            relation = int.from_bytes(take(4), "big")
            take(1)
            for index in range(int.from_bytes(take(2), "big")):
                if take(1) == b"t":
                    value = take(int.from_bytes(take(4), "big"))
                    if index == payload_column.get(relation):
                        record(value)
        else:
            raise RuntimeError(f"unexpected pgoutput message {kind!r}")
        if take(1) != b"\n":
            raise RuntimeError("pgoutput message not followed by a newline")


class Lines:
    """Buffered reads of a socket: CRLF lines and counted byte blocks (RESP, NATS)."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        self.offset = 0

    def fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buffer = self.buffer[self.offset:] + chunk
        self.offset = 0

    def line(self):
        while (end := self.buffer.find(b"\r\n", self.offset)) < 0:
            self.fill()
        line = self.buffer[self.offset:end]
        self.offset = end + 2
        return line

    def block(self, count):
        while len(self.buffer) - self.offset < count + 2:
            self.fill()
        data = self.buffer[self.offset:self.offset + count]
        self.offset += count + 2
        return data


def resp(lines):
    line = lines.line()
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b":"):
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"$":
        return None if int(rest) < 0 else lines.block(int(rest))
    if kind == b"*":
        return None if int(rest) < 0 else [resp(lines) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected RESP {line!r}")


def command(sock, *words):
    out = b"*%d\r\n" % len(words)
    for word in words:
        word = word if isinstance(word, bytes) else str(word).encode()
        out += b"$%d\r\n%s\r\n" % (len(word), word)
    sock.sendall(out)


def consume_redis(url, stream):
    sock = socket.create_connection(host_port(url))
    lines = Lines(sock)
    last = b"$"
    print("ready", flush=True)
    while not stopping:
        command(sock, "XREAD", "COUNT", 1000, "BLOCK", 200, "STREAMS", stream, last)
        reply = resp(lines)
        if not reply:
            continue
        for _, entries in reply:
            for entry_id, fields in entries:
                last = entry_id
                values = dict(zip(fields[::2], fields[1::2]))
                record(values.get(b"payload", b""))


def consume_nats(url, subject):
    sock = socket.create_connection(host_port(url))
    lines = Lines(sock)
    lines.line()  # INFO
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n')
    sock.sendall(b"SUB %s 1\r\nPING\r\n" % subject.encode())
    while lines.line() != b"PONG":
        pass
    print("ready", flush=True)
    sock.settimeout(0.2)
    while not stopping:
        try:
            line = lines.line()
        except socket.timeout:
            continue
        if line.startswith(b"PING"):
            sock.sendall(b"PONG\r\n")
        elif line.startswith(b"HMSG"):
            words = line.split()
            header_length, total = int(words[-2]), int(words[-1])
            record(lines.block(total)[header_length:])
        elif line.startswith(b"MSG"):
            record(lines.block(int(line.split()[-1])))


class KafkaMessage(ctypes.Structure):
    _fields_ = [("err", ctypes.c_int), ("rkt", ctypes.c_void_p), ("partition", ctypes.c_int32),
                ("payload", ctypes.c_void_p), ("len", ctypes.c_size_t), ("key", ctypes.c_void_p),
                ("key_len", ctypes.c_size_t), ("offset", ctypes.c_int64), ("_private", ctypes.c_void_p)]


class KafkaPartition(ctypes.Structure):
    _fields_ = [("topic", ctypes.c_char_p), ("partition", ctypes.c_int32), ("offset", ctypes.c_int64),
                ("metadata", ctypes.c_void_p), ("metadata_size", ctypes.c_size_t), ("opaque", ctypes.c_void_p),
                ("err", ctypes.c_int), ("_private", ctypes.c_void_p)]


def consume_kafka(url, topic, partitions):
    lib = ctypes.CDLL("librdkafka.so.1")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_poll_set_consumer.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_topic_partition_list_new.restype = ctypes.c_void_p
    lib.rd_kafka_topic_partition_list_add.restype = ctypes.POINTER(KafkaPartition)
    lib.rd_kafka_topic_partition_list_add.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32]
    lib.rd_kafka_assign.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.rd_kafka_consumer_poll.restype = ctypes.POINTER(KafkaMessage)
    lib.rd_kafka_consumer_poll.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_message_destroy.argtypes = [ctypes.POINTER(KafkaMessage)]
    lib.rd_kafka_consumer_close.argtypes = [ctypes.c_void_p]
    conf = lib.rd_kafka_conf_new()
    errors = ctypes.create_string_buffer(512)
    for name, value in [("bootstrap.servers", url.split("://", 1)[1]), ("group.id", "spout-bench"),
                        ("fetch.wait.max.ms", "1"), ("fetch.error.backoff.ms", "10"), ("enable.auto.commit", "false")]:
        if lib.rd_kafka_conf_set(conf, name.encode(), value.encode(), errors, 512) != 0:
            raise RuntimeError(errors.value.decode())
    handle = lib.rd_kafka_new(1, conf, errors, 512)  # RD_KAFKA_CONSUMER
    if not handle:
        raise RuntimeError(errors.value.decode())
    lib.rd_kafka_poll_set_consumer(handle)
    assignment = lib.rd_kafka_topic_partition_list_new(partitions)
    for partition in range(partitions):
        lib.rd_kafka_topic_partition_list_add(assignment, topic.encode(), partition).contents.offset = -1  # OFFSET_END
    if lib.rd_kafka_assign(handle, assignment) != 0:
        raise RuntimeError("rd_kafka_assign failed")
    print("ready", flush=True)
    while not stopping:
        message = lib.rd_kafka_consumer_poll(handle, 100)
        if not message:
            continue
        if message.contents.err == 0 and message.contents.payload:
            record(ctypes.string_at(message.contents.payload, message.contents.len))
        lib.rd_kafka_message_destroy(message)
    lib.rd_kafka_consumer_close(handle)


def consume_amqp(url, queue):
    import pika
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_purge(queue)  # what earlier runs left
    print("ready", flush=True)
    for method, _, body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.2):
        if stopping:
            break
        if method is not None:
            record(body)
    channel.cancel()
    connection.close()


def consume_http(port):
    """A keep-alive HTTP/1.1 receiver on 127.0.0.1:PORT: every POSTed event (or JSON array of
    them, --http-batch) recorded by its payload, answered 204."""
    import http.server
    import threading

    class Receiver(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            for event in parsed if isinstance(parsed, list) else [parsed]:
                if isinstance(event, dict):
                    record(event.get("payload"))
            self.send_response(204)
            self.end_headers()

        def do_OPTIONS(self):
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Receiver)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    while not stopping:
        time.sleep(0.1)
    server.shutdown()


def main():
    signal.signal(signal.SIGTERM, stop)
    kind = sys.argv[1]
    try:
        if kind == "stdout":
            consume_stdout()
        elif kind == "recvlogical":
            consume_recvlogical()
        elif kind == "redis":
            consume_redis(sys.argv[2], sys.argv[3])
        elif kind == "nats":
            consume_nats(sys.argv[2], sys.argv[3])
        elif kind == "kafka":
            consume_kafka(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        elif kind == "amqp":
            consume_amqp(sys.argv[2], sys.argv[3])
        elif kind == "http":
            consume_http(sys.argv[2])
        else:
            raise SystemExit(f"unknown sink {kind}")
    except (EOFError, InterruptedError):
        pass
    report()


if __name__ == "__main__":
    main()
