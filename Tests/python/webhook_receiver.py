#!/usr/bin/env python3
"""A webhook receiver for Tests/SpoutIntegrationTests/HTTPSinkTests: HTTP/1.1 with keep-alive
(http.server's ThreadingHTTPServer), answering POSTs by a script of failures, and writing one
JSON line per request to the log file as it answers it.

usage: webhook_receiver.py PORT LOGFILE [options]
  --secret whsec_…      verify every request's signature with the standardwebhooks package
  --cloudevents         parse every request with the cloudevents SDK's HTTP binding
  --fail N              answer the first N requests 500
  --stall N             do not answer request number N (counting from 1) until the client gives up
  --throttle N          answer request number N 429 with Retry-After (see --retry-after)
  --retry-after S       the Retry-After value (default 2)
  --reject WORD         answer 400 to every request whose body contains WORD
  --tls-cert F --tls-key F   serve HTTPS with this certificate and key
  --tls-client-ca F     with --tls-cert: require a client certificate signed by this CA
log lines: {"n": request number, "status": answered, "time": seconds, "ids": [event ids],
            "keys": [...], "signature": "ok"|"bad"|null, "content_type": …, "ce": {…}|null,
            "webhook_id": …}
A request the secret does not verify, or the SDK does not parse, is answered 400 and logged
with signature "bad" (or "ce_error").
"""
import argparse
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = None
lock = threading.Lock()
counter = [0]
log = None


def record(entry):
    with lock:
        log.write(json.dumps(entry) + "\n")
        log.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_OPTIONS(self):
        self.answer(204, headers=[("Allow", "POST, OPTIONS")])

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with lock:
            counter[0] += 1
            n = counter[0]
        entry = {"n": n, "time": time.time(), "content_type": self.headers.get("Content-Type"),
                 "webhook_id": self.headers.get("webhook-id"), "signature": None, "ce": None, "ids": [], "keys": []}
        status = 200
        if args.secret:
            from standardwebhooks.webhooks import Webhook
            try:
                Webhook(args.secret).verify(body, {k.lower(): v for k, v in self.headers.items()})
                entry["signature"] = "ok"
            except Exception as error:  # WebhookVerificationError and friends
                entry["signature"] = "bad: %s" % error
                status = 400
        if args.cloudevents and entry["content_type"] != "application/cloudevents-batch+json":
            from cloudevents.core.bindings import http
            from cloudevents.core.formats.json import JSONFormat
            try:
                headers = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("ce-") or k.lower() == "content-type"}
                event = http.from_binary(http.HTTPMessage(headers=headers, body=body), JSONFormat())
                attributes = dict(event.get_attributes())
                attributes.pop("time", None)
                entry["ce"] = attributes
                entry["ids"] = [attributes["id"]]
                entry["keys"] = [attributes.get("partitionkey")]
            except Exception as error:
                entry["ce"] = "ce_error: %s" % error
                status = 400
        else:
            try:
                parsed = json.loads(body)
                events = parsed if isinstance(parsed, list) else [parsed]
                entry["ids"] = [event["id"] for event in events]
                entry["keys"] = [event.get("key", event.get("partitionkey")) for event in events]
            except Exception as error:
                entry["parse_error"] = str(error)
                status = 400
        headers = []
        if status == 200:
            if n <= args.fail:
                status = 500
            elif n == args.throttle:
                status = 429
                headers.append(("Retry-After", str(args.retry_after)))
            elif args.reject and args.reject.encode() in body:
                status = 400
        if n == args.stall:
            entry["status"] = "stalled"
            record(entry)
            time.sleep(30)  # longer than the client's --http-timeout; it closes the connection
            self.close_connection = True
            return
        entry["status"] = status
        record(entry)
        self.answer(status, b"receiver says %d" % status if status != 200 else b"", headers)


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client that drops a connection (spout after --http-timeout, or killed) is expected.
        # A TLS client that fails verification (the TLS tests' point) is expected too.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


def main():
    global args, log
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("log")
    parser.add_argument("--secret")
    parser.add_argument("--cloudevents", action="store_true")
    parser.add_argument("--fail", type=int, default=0)
    parser.add_argument("--stall", type=int, default=0)
    parser.add_argument("--throttle", type=int, default=0)
    parser.add_argument("--retry-after", default="2")
    parser.add_argument("--reject")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-client-ca")
    args = parser.parse_args()
    log = open(args.log, "a", encoding="utf-8")
    server = Server(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            context.load_verify_locations(args.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        # The handshake happens on the first read, in the connection's own thread.
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
