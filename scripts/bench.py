#!/usr/bin/env python3
"""Spout's benchmark (`make bench`): drain, latency and footprint, each Spout figure next to
pg_recvlogical (the decoding limit of one slot) measured in the same run.

Starts its own PostgreSQL, Redis (plain, and a second one with TLS: redis-tls, rediss:// with the
throwaway CA of scripts/tls-certs), NATS JetStream, mock Kafka cluster, RabbitMQ (AMQP and
STOMP) and a webhook receiver (HTTP) on loopback, prints one table and writes it as JSON (bench/results.json by default).

    scripts/bench.py [--events 200000] [--footprint-events 1000000] [--latency-seconds 30]
                     [--rate 5000] [--light-rate 1000] [--sinks stdout,redis,redis-tls,nats,kafka,amqp,stomp,http] [--json FILE]
                     [--baseline GIT-REF]

--baseline builds that commit too (in .run/baseline) and runs it next to this checkout's spout in
the same run, row after row, so a change is compared with what came before on the same machine state.
A baseline that does not know a sink's URL (rediss:// before issue 15) skips that sink.
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, ".run")


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Servers:
    """The servers this run started; stopped (by PID) on exit."""

    def __init__(self):
        self.processes = []
        self.tmp = tempfile.mkdtemp(prefix="spout-bench-")
        self.pg_started = False
        self.rabbitmq_started = False

    def postgres(self):
        subprocess.run([os.path.join(ROOT, "scripts/pg-start"), "bench"], check=True)
        self.pg_started = True
        env = dict(line.strip().split("=", 1) for line in open(os.path.join(RUN, "bench.env")) if "=" in line)
        return env["SPOUT_TEST_DATABASE_URL"], env["SPOUT_PG_BIN"]

    def spawn(self, args, port, **kwargs):
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        self.processes.append(process)
        wait_port(port)
        return process

    def redis(self):
        port = free_port()
        self.spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", self.tmp], port)
        return f"redis://127.0.0.1:{port}"

    def redis_tls(self):
        """A second redis-server with TLS (issue 15): rediss:// for spout, verified against the
        throwaway CA; its plain port is the latency consumer's. Returns (rediss URL, CA file, redis URL)."""
        certificates = os.path.join(self.tmp, "certs")
        subprocess.run([os.path.join(ROOT, "scripts", "tls-certs"), certificates], check=True, stdout=subprocess.DEVNULL)
        port, tls_port = free_port(), free_port()
        directory = os.path.join(self.tmp, "redis-tls")
        os.makedirs(directory, exist_ok=True)
        self.spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", directory, "--tls-port", str(tls_port),
                    "--tls-cert-file", os.path.join(certificates, "server.crt"),
                    "--tls-key-file", os.path.join(certificates, "server.key"),
                    "--tls-ca-cert-file", os.path.join(certificates, "ca.crt"), "--tls-auth-clients", "no"], port)
        wait_port(tls_port)
        return f"rediss://127.0.0.1:{tls_port}", os.path.join(certificates, "ca.crt"), f"redis://127.0.0.1:{port}"

    def nats(self):
        port = free_port()
        store = os.path.join(self.tmp, "nats")
        self.spawn(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "--store_dir", store], port)
        return f"nats://127.0.0.1:{port}"

    def rabbitmq(self):
        """scripts/rabbitmq-start bench; the queues AMQP and STOMP deliver to, bounded so the
        broker's memory stays flat (the oldest messages are dropped; confirms are unaffected)."""
        subprocess.run([os.path.join(ROOT, "scripts/rabbitmq-start"), "bench"], check=True, stdout=sys.stderr)
        self.rabbitmq_started = True
        env = dict(line.strip().split("=", 1) for line in open(os.path.join(RUN, "rabbitmq-bench.env")) if "=" in line)
        python_path = subprocess.run([os.path.join(ROOT, "scripts/py-deps")], check=True, capture_output=True, text=True).stdout.strip()
        os.environ["PYTHONPATH"] = python_path
        sys.path.insert(0, python_path)
        import pika  # scripts/py-deps (PyPI): the AMQP client for the queues and the consumer
        connection = pika.BlockingConnection(pika.URLParameters(env["SPOUT_TEST_AMQP_URL"]))
        channel = connection.channel()
        channel.exchange_declare(RABBITMQ_EXCHANGE, exchange_type="topic", durable=True)
        for queue in [AMQP_QUEUE, STOMP_QUEUE]:
            channel.queue_declare(queue, durable=True, arguments={"x-max-length": 100_000})
        channel.queue_bind(AMQP_QUEUE, RABBITMQ_EXCHANGE, routing_key="#")
        connection.close()
        return env["SPOUT_TEST_AMQP_URL"], env["SPOUT_TEST_STOMP_URL"]

    def http(self):
        """The webhook receiver the drains POST to (bench_consumer.py http); the latency run
        replaces it with a consumer on the same port, which records as it receives."""
        self.http_port = free_port()
        self.http_receiver = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "bench_consumer.py"), "http",
                                               str(self.http_port)], stdout=subprocess.DEVNULL)
        self.processes.append(self.http_receiver)
        wait_port(self.http_port)
        return f"http://127.0.0.1:{self.http_port}/events"

    def stop_http_receiver(self):
        if self.http_receiver.poll() is None:
            self.http_receiver.send_signal(signal.SIGTERM)
            self.http_receiver.wait(timeout=10)

    def kafka(self, binary):
        process = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.processes.append(process)
        self.kafka_mock = process
        line = process.stdout.readline().strip()
        match = re.search(r"(\d+\.\d+\.\d+\.\d+:\d+)", line)
        if not match:
            raise RuntimeError(f"spout-kafka-mock printed {line!r}")
        return f"kafka://{match.group(1)}"

    def kafka_command(self, command):
        """A fault-injection or admin command to the mock cluster (see spout-kafka-mock)."""
        self.kafka_mock.stdin.write(command + "\n")
        self.kafka_mock.stdin.flush()
        reply = self.kafka_mock.stdout.readline().strip()
        if not reply.startswith("OK"):
            raise RuntimeError(f"spout-kafka-mock: {command}: {reply}")

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        if self.pg_started:
            subprocess.run([os.path.join(ROOT, "scripts/pg-stop"), "bench"])
        if self.rabbitmq_started:
            subprocess.run([os.path.join(ROOT, "scripts/rabbitmq-stop"), "bench", "--remove"])
        shutil.rmtree(self.tmp, ignore_errors=True)


class Database:
    def __init__(self, url):
        self.url = url

    def sql(self, statement):
        result = subprocess.run(["psql", "-qAtX", "-v", "ON_ERROR_STOP=1", self.url, "-c", statement],
                                check=True, capture_output=True, text=True)
        return result.stdout.strip()

    def wal_insert_lsn(self):
        return self.sql("SELECT pg_current_wal_insert_lsn()")

    def wait_flushed(self, lsn):
        # The walsender sends only flushed WAL: the backlog is complete once the flush position
        # passed its end.
        while self.sql(f"SELECT pg_current_wal_flush_lsn() >= '{lsn}'::pg_lsn") != "t":
            time.sleep(0.05)

    def reset(self):
        self.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")
        self.sql("DROP TABLE IF EXISTS public.outbox CASCADE")
        # Spout's record of the slots it created: a slot dropped here is not a lost slot.
        self.sql("DROP TABLE IF EXISTS public.spout_slots")
        self.sql("DROP PUBLICATION IF EXISTS spout")
        subprocess.run(["psql", "-qX", "-v", "ON_ERROR_STOP=1", self.url, "-f", os.path.join(ROOT, "sql/outbox.sql")],
                       check=True, capture_output=True)
        self.sql("CREATE PUBLICATION spout FOR TABLE public.outbox WITH (publish = 'insert')")
        self.sql("CHECKPOINT")

    def create_slot(self, name):
        self.sql(f"SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')")

    PAYLOAD = """jsonb_build_object('order_id', i, 'amount', 1999, 'currency', 'EUR', 'customer', 'c-' || (i % 1000))"""

    def backlog_single_row_transactions(self, count):
        # One transaction per row: a procedure-style DO block may COMMIT in its loop.
        self.sql(f"""DO $$ BEGIN FOR i IN 1..{count} LOOP
            INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
                 VALUES ('order', (i % 100)::text, 'OrderPlaced', {self.PAYLOAD});
            COMMIT; END LOOP; END $$""")

    def backlog_one_transaction(self, count):
        self.sql(f"""INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
                     SELECT 'order', (i % 100)::text, 'OrderPlaced', {self.PAYLOAD} FROM generate_series(1, {count}) i""")


def recvlogical(pg_bin, url, slot, *arguments):
    """pg_recvlogical reading `slot` with pgoutput (protocol 1) on the bench publication."""
    return [os.path.join(pg_bin, "pg_recvlogical"), "-d", url, "-S", slot, "--start",
            "-o", "proto_version=1", "-o", "publication_names=spout", *arguments]


def timed(args, stdout=subprocess.DEVNULL, env=None):
    """Runs a command to completion: wall seconds, peak RSS (KiB), CPU seconds, stderr."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(args, stdout=stdout, stderr=errors, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.monotonic() - started
        errors.seek(0)
        text = errors.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(args[:3])} … exited {code}: {text.strip()[-500:]}")
    return elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--footprint-events", type=int, default=1_000_000)
    parser.add_argument("--latency-seconds", type=int, default=30)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--light-rate", type=int, default=1000,
                        help="a second latency run at this rate, where the machine has CPU to spare (0: none)")
    parser.add_argument("--sinks", default="stdout,redis,redis-tls,nats,kafka,amqp,stomp,http")
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "results.json"))
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: drain,latency,footprint")
    parser.add_argument("--repeat", type=int, default=1, help="drain each runner this many times, alternating; report the median")
    parser.add_argument("--baseline", default=None, help="a git commit to build and measure alongside (drain and latency)")
    options = parser.parse_args()
    sinks = [s for s in options.sinks.split(",") if s]
    skip = set(options.skip.split(","))

    subprocess.run(["make", "-s", "-C", ROOT, "deps"], check=True)
    log("building spout (release)")
    subprocess.run(["swift", "build", "-c", "release", "--product", "spout"], cwd=ROOT, check=True, stdout=sys.stderr)
    bin_path = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    spout = os.path.join(bin_path, "spout")
    runners = [("spout", spout)]
    if options.baseline:
        runners.append((f"spout@{options.baseline[:12]}", build_baseline(options.baseline)))
    kafka_mock = None
    if "kafka" in sinks:
        subprocess.run(["swift", "build", "-c", "release", "--product", "spout-kafka-mock"], cwd=ROOT, check=True, stdout=sys.stderr)
        kafka_mock = os.path.join(bin_path, "spout-kafka-mock")

    servers = Servers()
    results = {"machine": machine(), "events": options.events, "drain": [], "latency": [], "footprint": []}
    try:
        url, pg_bin = servers.postgres()
        db = Database(url)
        targets = {"stdout": "stdout://"}
        if "redis" in sinks:
            targets["redis"] = servers.redis()
        plain_of = {}  # a TLS target's plain-text port, for the latency consumer
        if "redis-tls" in sinks:
            targets["redis-tls"], redis_ca, plain_of["redis-tls"] = servers.redis_tls()
        if "nats" in sinks:
            targets["nats"] = servers.nats()
        if "kafka" in sinks:
            targets["kafka"] = servers.kafka(kafka_mock)
            # Created up front with a known partition count, which the latency consumer assigns.
            servers.kafka_command(f"create-topic {LATENCY_TOPIC} {KAFKA_PARTITIONS}")
        if "amqp" in sinks or "stomp" in sinks:
            targets["amqp"], targets["stomp"] = servers.rabbitmq()
        if "http" in sinks:
            targets["http"] = servers.http()
        targets = {name: targets[name] for name in sinks if name in targets}
        extra = {"nats": ["--nats-create-stream", "OUTBOX"], "amqp": ["--amqp-exchange", RABBITMQ_EXCHANGE],
                 "stomp": ["--stomp-destination", f"/amq/queue/{STOMP_QUEUE}"]}
        if "redis-tls" in targets:
            extra["redis-tls"] = ["--sink-ca-file", redis_ca]
        # Which runner knows which sink (a baseline from before rediss:// does not).
        knows = {(index, name): index == 0 or supports(binary, url, target, extra.get(name, []))
                 for index, (_, binary) in enumerate(runners) for name, target in targets.items()}

        if "drain" not in skip:
            for backlog, make in [("200k single-row transactions", db.backlog_single_row_transactions),
                                  ("one 200k-row transaction", db.backlog_one_transaction)]:
                backlog = backlog.replace("200k", f"{options.events // 1000}k")
                db.reset()
                db.create_slot("warmup")
                db.create_slot("recvlogical")
                repeats = max(1, options.repeat)
                for name in targets:
                    for index, _ in enumerate(runners):
                        for rep in range(repeats):
                            db.create_slot(f"spout_{name.replace('-', '_')}_{index}_{rep}")
                log(f"drain: writing {backlog}")
                make(options.events)
                # Autovacuum would otherwise start on the new rows during the first measured run.
                db.sql("VACUUM ANALYZE public.outbox")
                db.sql("CHECKPOINT")
                end = db.wal_insert_lsn()
                db.wait_flushed(end)
                # An unmeasured first pass reads the WAL into the page cache, so no runner pays for it.
                timed(recvlogical(pg_bin, url, "warmup", "-E", end, "-f", "/dev/null"))
                elapsed, _, _, _ = timed(recvlogical(pg_bin, url, "recvlogical", "-E", end, "-f", "/dev/null"))
                reference = options.events / elapsed
                results["drain"].append({"backlog": backlog, "runner": "pg_recvlogical", "seconds": elapsed,
                                         "events_per_s": reference, "ratio": 1.0})
                log(f"drain {backlog}: pg_recvlogical {reference:,.0f} ev/s")
                for name, target in targets.items():
                    # Runners alternate, so a change in the machine's load hits each of them alike.
                    samples = {index: [] for index, _ in enumerate(runners)}
                    for rep in range(repeats):
                        for index, (label, binary) in enumerate(runners):
                            if not knows[(index, name)]:
                                continue
                            elapsed, rss, cpu, _ = timed([binary, "run", "--database-url", url, "--slot", f"spout_{name.replace('-', '_')}_{index}_{rep}",
                                                          "--no-create", "--sink", target, "--end-lsn", end, "--log-level", "warning"]
                                                         + extra.get(name, []))
                            samples[index].append((elapsed, rss, cpu))
                            log(f"drain {backlog}: {label} → {name} {options.events / elapsed:,.0f} ev/s")
                    for index, (label, _) in enumerate(runners):
                        if not knows[(index, name)]:
                            log(f"drain: {label} does not know {name}, skipped")
                            continue
                        runs = sorted(samples[index])
                        elapsed, rss, cpu = runs[len(runs) // 2]
                        rate = options.events / elapsed
                        results["drain"].append({"backlog": backlog, "runner": f"{label} → {name}", "seconds": elapsed,
                                                 "events_per_s": rate, "ratio": rate / reference, "peak_rss_kib": rss, "cpu_s": cpu,
                                                 "runs": len(runs), "all_seconds": [r[0] for r in samples[index]],
                                                 "all_cpu_s": [r[2] for r in samples[index]]})
                        log(f"drain {backlog}: {label} → {name} median {rate:,.0f} ev/s ({rate / reference:.2f}×)")

        if "latency" not in skip:
            for rate in [options.rate] + ([options.light_rate] if options.light_rate > 0 else []):
                results["latency"] += latency(db, url, pg_bin, runners, targets, extra, rate, options.latency_seconds, servers,
                                              knows, plain_of)

        if "footprint" not in skip:
            for backlog, make in [(f"{options.footprint_events // 1000}k single-row transactions", db.backlog_single_row_transactions),
                                  (f"one {options.footprint_events // 1000}k-row transaction", db.backlog_one_transaction)]:
                db.reset()
                db.create_slot("recvlogical")
                db.create_slot("spout_stdout")
                log(f"footprint: writing {backlog}")
                make(options.footprint_events)
                end = db.wal_insert_lsn()
                db.wait_flushed(end)
                ref_elapsed, ref_rss, ref_cpu, _ = timed(recvlogical(pg_bin, url, "recvlogical", "-E", end, "-f", "/dev/null"))
                elapsed, rss, cpu, _ = timed([spout, "run", "--database-url", url, "--slot", "spout_stdout", "--no-create",
                                              "--end-lsn", end, "--log-level", "warning"])
                per = options.footprint_events / 100_000
                results["footprint"].append({"backlog": backlog, "peak_rss_mib": rss / 1024, "cpu_s_per_100k": cpu / per,
                                             "seconds": elapsed, "pg_recvlogical_peak_rss_mib": ref_rss / 1024,
                                             "pg_recvlogical_cpu_s_per_100k": ref_cpu / per,
                                             "ratio_to_pg_recvlogical": (options.footprint_events / elapsed) / (options.footprint_events / ref_elapsed)})
                log(f"footprint {backlog}: {rss / 1024:.1f} MiB peak, {cpu / per:.3f} CPU s per 100k")
    finally:
        servers.stop()

    os.makedirs(os.path.dirname(options.json), exist_ok=True)
    with open(options.json, "w") as out:
        json.dump(results, out, indent=2)
    print_table(results)
    log(f"wrote {options.json}")


LATENCY_TOPIC = "outbox.event.order"
KAFKA_PARTITIONS = 4
# RabbitMQ: AMQP publishes to this exchange, bound to AMQP_QUEUE for every topic; STOMP sends to
# the existing STOMP_QUEUE (/amq/queue/…). The latency consumers read those queues.
RABBITMQ_EXCHANGE = "outbox"
AMQP_QUEUE = "bench.amqp"
STOMP_QUEUE = "bench.stomp"


def cpu_times():
    """The machine's CPU time so far (/proc/stat, in ticks): busy, steal, total."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle, steal = values[3] + values[4], values[7] if len(values) > 7 else 0
    total = sum(values[:8])
    return total - idle - steal, steal, total


def build_baseline(ref):
    """The spout binary of another commit, built in .run/baseline (a detached git worktree)."""
    source = os.path.join(RUN, "baseline")
    if os.path.isdir(source):
        subprocess.run(["git", "-C", source, "checkout", "-q", "--detach", ref], check=True)
    else:
        os.makedirs(RUN, exist_ok=True)
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "-q", "--detach", source, ref], check=True)
    log(f"building spout at {ref} (release) in {source}")
    subprocess.run(["swift", "build", "-c", "release", "--product", "spout"], cwd=source, check=True, stdout=sys.stderr)
    bin_path = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], cwd=source, check=True,
                              capture_output=True, text=True).stdout.strip()
    return os.path.join(bin_path, "spout")


def supports(binary, database_url, target, extra):
    """Whether this spout takes the sink URL (`run --check-config` connects to nothing)."""
    check = subprocess.run([binary, "run", "--check-config", "--database-url", database_url, "--sink", target] + extra,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return check.returncode == 0


def latency(db, url, pg_bin, runners, targets, extra, target_rate, seconds, servers, knows, plain_of):
    """A steady rate from several connections (pgbench --rate). Spout records commit → broker
    acknowledgement (--report-latency); a consumer records commit → receive, from the
    insert time pgbench writes into each payload."""
    rows = []
    script = os.path.join(servers.tmp, "insert.sql")
    with open(script, "w") as out:
        out.write("\\set id random(1, 1000)\n"
                  "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) "
                  "VALUES ('order', :id, 'OrderPlaced', "
                  "jsonb_build_object('id', :id, 't', extract(epoch FROM clock_timestamp())));\n")
    consumer_script = os.path.join(ROOT, "scripts", "bench_consumer.py")
    def report(consumer):
        """The consumer's JSON summary (its last line), once it exits."""
        received = json.loads(consumer.stdout.read().strip().splitlines()[-1])
        consumer.wait(timeout=30)
        return received

    def steady_load(name):
        # Warm-up: the first events create the topic/stream and fetch metadata; a second of
        # that would otherwise be the p99.
        db.sql("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) "
               "SELECT 'order', i::text, 'Warmup', '{}' FROM generate_series(1, 10) i")
        time.sleep(3)
        log(f"latency: {target_rate} events/s for {seconds} s → {name}")
        before = cpu_times()
        bench = subprocess.run([os.path.join(pg_bin, "pgbench"), "-n", "-c", "4", "-j", "2", "-R", str(target_rate),
                                "-T", str(seconds), "-f", script, url], capture_output=True, text=True)
        after = cpu_times()
        time.sleep(2)
        tps = re.search(r"tps = ([\d.]+)", bench.stdout)
        total = max(1, after[2] - before[2])
        # How loaded the machine was while the load ran (everything on it, not just spout).
        machine = {"busy_percent": round(100 * (after[0] - before[0]) / total, 1),
                   "steal_percent": round(100 * (after[1] - before[1]) / total, 1)}
        return (float(tps.group(1)) if tps else None), machine

    # The reference: PostgreSQL's own client on the same load, commit → received.
    db.reset()
    db.create_slot("lat_recvlogical")
    reference = subprocess.Popen(recvlogical(pg_bin, url, "lat_recvlogical", "-f", "-"),
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    consumer = subprocess.Popen([sys.executable, consumer_script, "recvlogical"], stdin=reference.stdout,
                                stdout=subprocess.PIPE, text=True)
    reference.stdout.close()
    if consumer.stdout.readline().strip() != "ready":
        raise RuntimeError("the pg_recvlogical reader did not start")
    rate, machine = steady_load("pg_recvlogical")
    reference.send_signal(signal.SIGINT)
    reference.wait(timeout=60)
    received = report(consumer)
    rows.append({"sink": "pg_recvlogical", "target_rate": target_rate, "events": None, "rate": rate, "machine": machine,
                 "p50_ms": None, "p99_ms": None, "p99_9_ms": None, "max_ms": None, "consumer": received,
                 "decoded_p50_ms": None, "decoded_p99_ms": None})
    db.sql("SELECT pg_drop_replication_slot('lat_recvlogical')")

    for (index, (label, spout)), (name, target) in ((runner, item) for item in targets.items() for runner in enumerate(runners)):
        if not knows[(index, name)]:
            continue
        db.reset()
        spout_run = [spout, "run", "--database-url", url, "--slot", f"lat_{name.replace('-', '_')}", "--sink", target,
                     "--report-latency", "--log-level", "info"] + extra.get(name, [])
        if name == "stdout":
            spout_process = subprocess.Popen(spout_run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            consumer = subprocess.Popen([sys.executable, consumer_script, "stdout"], stdin=spout_process.stdout,
                                        stdout=subprocess.PIPE, text=True)
            spout_process.stdout.close()
        else:
            arguments = {"redis": [target, LATENCY_TOPIC], "redis-tls": [plain_of.get(name), LATENCY_TOPIC], "nats": [target, LATENCY_TOPIC],
                         "kafka": [target, LATENCY_TOPIC, str(KAFKA_PARTITIONS)],
                         "amqp": [targets.get("amqp"), AMQP_QUEUE], "stomp": [targets.get("amqp"), STOMP_QUEUE],
                         "http": [str(getattr(servers, "http_port", 0))]}[name]
            if name == "http":
                servers.stop_http_receiver()  # the consumer is the receiver now, on the same port
            name_for_consumer = {"stomp": "amqp", "redis-tls": "redis"}.get(name, name)
            consumer = subprocess.Popen([sys.executable, consumer_script, name_for_consumer] + arguments, stdout=subprocess.PIPE, text=True)
        if consumer.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {name} consumer did not start")
        if name != "stdout":
            spout_process = subprocess.Popen(spout_run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        while db.sql(f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'lat_{name.replace('-', '_')}' AND active") != "1":
            if time.time() > deadline or spout_process.poll() is not None:
                spout_process.kill()
                raise RuntimeError(f"spout → {name} did not start: {spout_process.stderr.read()[-1000:]}")
            time.sleep(0.1)
        rate, machine = steady_load(name)
        spout_process.send_signal(signal.SIGTERM)
        errors = spout_process.stderr.read()
        _, _, usage = os.wait4(spout_process.pid, 0)
        spout_process.returncode = 0
        cpu = usage.ru_utime + usage.ru_stime
        if name != "stdout":
            consumer.send_signal(signal.SIGTERM)
        received = report(consumer)
        match = re.search(r"commit→ack: count=(\d+) p50=(\d+)us p99=(\d+)us p99\.9=(\d+)us max=(\d+)us", errors)
        decoded = re.search(r"commit→decoded: count=\d+ p50=(\d+)us p99=(\d+)us", errors)
        if not match:
            raise RuntimeError(f"no latency report from spout → {name}: {errors[-500:]}")
        count, p50, p99, p999, worst = (int(v) for v in match.groups())
        rows.append({"sink": name if label == "spout" else f"{name} ({label})", "target_rate": target_rate, "events": count, "rate": rate, "machine": machine,
                     "spout_cpu_s_per_1k": 1000 * cpu / max(count, 1),
                     "p50_ms": p50 / 1000, "p99_ms": p99 / 1000, "p99_9_ms": p999 / 1000, "max_ms": worst / 1000,
                     "consumer": received,
                     "decoded_p50_ms": int(decoded.group(1)) / 1000 if decoded else None,
                     "decoded_p99_ms": int(decoded.group(2)) / 1000 if decoded else None})
        db.sql(f"SELECT pg_drop_replication_slot('lat_{name.replace('-', '_')}')")
    return rows


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory, 1), "os": platform.platform(),
            "date": time.strftime("%Y-%m-%d")}


def print_table(results):
    m = results["machine"]
    print(f"\nSpout benchmark — {m['date']}, {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB")
    if results["drain"]:
        print("\nDrain (backlog in the WAL before start; until the last event is acknowledged and confirmed)")
        print(f"{'backlog':34} {'runner':36} {'events/s':>12} {'× pg_recvlogical':>17}")
        for row in results["drain"]:
            print(f"{row['backlog']:34} {row['runner']:36} {row['events_per_s']:>12,.0f} {row['ratio']:>17.2f}")
    if results["latency"]:
        def ms(value):
            return f"{value:.2f}" if value is not None else "-"
        print("\nLatency: commit → broker acknowledgement (Spout's HDR histogram) | commit → consumer receives"
              " | commit → decoded by Spout | machine CPU busy (steal) while the load ran")
        print(f"{'sink':30} {'events':>8} {'rate/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} | "
              f"{'received':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} | {'p50 ms':>7} {'p99 ms':>7} | {'busy':>11}")
        shown_rate = None
        for row in results["latency"]:
            if row.get("target_rate") != shown_rate:
                shown_rate = row.get("target_rate")
                print(f"— at {shown_rate} events/s")
            busy = row.get("machine") or {}
            rate = f"{row['rate']:.0f}" if row["rate"] else "-"
            c = row.get("consumer") or {}
            print(f"{row['sink']:30} {row['events'] or '-':>8} {rate:>8} {ms(row['p50_ms']):>8} {ms(row['p99_ms']):>8} "
                  f"{ms(row['p99_9_ms']):>9} {ms(row['max_ms']):>8} | {c.get('count', 0):>8} {ms(c.get('p50_ms')):>8} "
                  f"{ms(c.get('p99_ms')):>8} {ms(c.get('p99_9_ms')):>9} {ms(c.get('max_ms')):>8} | "
                  f"{ms(row.get('decoded_p50_ms')):>7} {ms(row.get('decoded_p99_ms')):>7} | "
                  f"{busy.get('busy_percent', 0):>4.0f}% ({busy.get('steal_percent', 0):.0f}%)")
    if results["footprint"]:
        print("\nFootprint, stdout sink (pg_recvlogical alongside)")
        print(f"{'backlog':34} {'peak RSS MiB':>13} {'CPU s/100k':>11} {'× pg_recvlogical speed':>23} {'recvlogical RSS':>16}")
        for row in results["footprint"]:
            print(f"{row['backlog']:34} {row['peak_rss_mib']:>13.1f} {row['cpu_s_per_100k']:>11.3f} "
                  f"{row['ratio_to_pg_recvlogical']:>23.2f} {row['pg_recvlogical_peak_rss_mib']:>16.1f}")


if __name__ == "__main__":
    main()
