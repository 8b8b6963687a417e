"""Real servers for the delivery tests, on 127.0.0.1 only: a Mosquitto broker (Debian's
`mosquitto`, which CI installs from the Makefile's APT_PACKAGES) that a test can stop and
start again on the same port, an MQTT subscriber that collects what arrives, and an HTTP
receiver that fails on purpose."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, up: bool, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not come {'up' if up else 'down'} in {timeout} s")


class Mosquitto:
    """A broker with persistence on, so that a subscriber's session (its subscription and
    the QoS 1 messages queued for it) survives a restart, as on a real line."""

    def __init__(self, folder: Path, password_file: Path | None = None,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        """`tls`: (CA, certificate, key) files: the listener speaks TLS only."""
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (Debian package `mosquitto`; `make "
                        "system-packages` installs it as root)")
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "persistence true",
                 f"persistence_location {folder}/", "log_dest none"]
        if os.geteuid() == 0:
            # as root mosquitto would switch to the `mosquitto` user, which cannot read the
            # test's files: stay who we are (CI runs as root)
            lines.append("user root")
        if tls is not None:
            lines += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        if password_file is not None:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, up=True)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.proc.wait(timeout=10)
            self.proc = None
        wait_port(self.port, up=False)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class Subscriber:
    """Collects the messages of `topic` (QoS 1, persistent session) in arrival order."""

    def __init__(self, port: int, topic: str, client_id: str = "edgeas-test-sub",
                 clean: bool = False) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean)
        client.reconnect_delay_set(min_delay=0.2, max_delay=1)

        def on_connect(c, userdata, flags, reason, properties):
            c.subscribe(topic, qos=1)

        def on_subscribe(c, userdata, mid, reasons, properties):
            subscribed.set()

        def on_message(c, userdata, msg):
            with self.lock:
                self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

        client.on_connect, client.on_subscribe = on_connect, on_subscribe
        client.on_message = on_message
        client.connect("127.0.0.1", port, keepalive=5)
        client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("the test subscriber could not subscribe")
        self.client = client

    def of(self, suffix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for t, m, _ in self.messages if t.endswith(suffix)]

    def wait_for(self, suffix: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.of(suffix)
            if len({m.get("id", i) for i, m in enumerate(got)}) >= count:
                return got
            time.sleep(0.05)
        return self.of(suffix)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Receiver:
    """An HTTP server that takes POSTed JSON; `fail` decides per request (its number from
    1) whether to answer 503 instead (True) or another status (a number), `delay_s` how
    long to think first."""

    def __init__(self, fail=lambda n: False, delay_s: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.requests = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner.lock:
                    owner.requests += 1
                    n = owner.requests
                time.sleep(owner.delay_s)
                failed = owner.fail(n)
                if failed:
                    self.send_response(503 if failed is True else int(failed))
                    self.end_headers()
                    return
                with owner.lock:
                    owner.bodies.append(dict(json.loads(body),
                                             _header_id=self.headers.get("X-Edgeas-Event-Id")))
                self.send_response(204)
                self.end_headers()

        self.delay_s = delay_s
        self.fail = fail
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ng"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it (openssl CLI):
    (CA, certificate, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (Debian package `openssl`)")
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr = folder / "server.crt", folder / "server.key", folder / "server.csr"
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=edgeas-test-ca", "-keyout", ca_key, "-out", ca],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key,
         "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days",
         "1", "-out", cert, "-extfile", ext],
    ):
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)
    return ca, cert, key
