#!/usr/bin/env python3
"""A TCP proxy for tests that the test can cut: scripts/tcp-proxy.py LISTEN_PORT TARGET_PORT

Forwards 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT. SIGUSR1 cuts: every connection is
reset (RST on both sides) and the port refuses new ones; SIGUSR2 accepts again. Prints
"ready" once listening, "cut" and "open" after each signal is handled."""
import os
import selectors
import signal
import socket
import struct
import sys

listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
selector = selectors.DefaultSelector()
peers = {}  # socket -> its other end
listener = None
wake_read, wake_write = os.pipe()
os.set_blocking(wake_write, False)
pending = []


def say(text):
    print(text, flush=True)


def open_listener():
    global listener
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(64)
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ)


def reset(sock):
    try:
        selector.unregister(sock)
    except (KeyError, ValueError):
        pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def close_pair(sock):
    other = peers.pop(sock, None)
    reset(sock)
    if other is not None:
        peers.pop(other, None)
        reset(other)


def cut():
    global listener
    if listener is not None:
        selector.unregister(listener)
        listener.close()
        listener = None
    for sock in list(peers):
        if sock in peers:
            close_pair(sock)


def on_signal(number, _frame):
    pending.append(number)
    try:
        os.write(wake_write, b"x")
    except BlockingIOError:
        pass


signal.signal(signal.SIGUSR1, on_signal)
signal.signal(signal.SIGUSR2, on_signal)
selector.register(wake_read, selectors.EVENT_READ)
open_listener()
say("ready")

while True:
    for key, _ in selector.select():
        sock = key.fileobj
        if sock == wake_read:
            os.read(wake_read, 1024)
            while pending:
                number = pending.pop(0)
                if number == signal.SIGUSR1:
                    cut()
                    say("cut")
                elif listener is None:
                    open_listener()
                    say("open")
        elif sock is listener:
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            server = socket.socket()
            try:
                server.connect(("127.0.0.1", target_port))
            except OSError:
                reset(client)
                continue
            for end in (client, server):
                end.setblocking(False)
                selector.register(end, selectors.EVENT_READ)
            peers[client], peers[server] = server, client
        elif sock in peers:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                close_pair(sock)
                continue
            other = peers[sock]
            try:
                other.setblocking(True)
                other.sendall(data)
                other.setblocking(False)
            except OSError:
                close_pair(sock)
