"""`--mqtt mqtt://[user@]HOST[:PORT]/PREFIX`: NG events and the station's status to a broker.

    PREFIX/STATION/events   one JSON message per NG event (runtime/delivery.py), QoS 1,
                            in order, at least once: a receiver drops repeats by `id`;
                            with `thumbnail`, the frame as a 160 px JPEG in base64
    PREFIX/STATION/status   retained, every `status_interval_s` while connected:
                            state "running", frames, NG frames, FPS, last frame time,
                            the source's state; "offline" when the station stops, and
                            as the last will when it dies without a word

paho-mqtt (the `runtime` extra) is imported only when the sink is made. The client
connects in the background and reconnects by itself: a broker that is unreachable at
start is not an error, the events wait in the queue. One message is in flight at a time
(the next leaves after the PUBACK of the one before), which is what keeps them in order
across a reconnect, where paho resends the one in flight.

The password never goes in the URL (a URL shows in `ps`, shell history and logs): it is
read from `--mqtt-password-file` or the environment variable EDGEAS_MQTT_PASSWORD, and
nothing prints it. `mqtts://` verifies the broker against `--mqtt-ca FILE` (or the
system's CAs).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgeas.errors import ConfigError, require
from edgeas.runtime.delivery import OK, RETRY, WAIT, QueuedSink, thumbnail
from edgeas.runtime.events import utc_now
from edgeas.runtime.outbox import Outbox
from edgeas.runtime.sink import FrameResult, SinkContext
from edgeas.runtime.sources import redact

log = logging.getLogger("edgeas.stream")
PASSWORD_ENV = "EDGEAS_MQTT_PASSWORD"
STATUS_INTERVAL_S = 5.0
PUBACK_WAIT_S = 0.5  # per poll; a message waits for its PUBACK as long as the run lasts
_BAD_TOPIC = set("+#\0")


@dataclass(frozen=True)
class MqttTarget:
    tls: bool
    host: str
    port: int
    user: str | None
    prefix: str

    def url(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}/{self.prefix}"


def parse_mqtt_url(url: str) -> MqttTarget:
    """mqtt://[user@]HOST[:PORT]/PREFIX (mqtts:// for TLS) -> MqttTarget; ConfigError
    naming the URL (without a password) otherwise."""
    shown = redact(url)
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"--mqtt {shown}: the URL must start with mqtt:// or mqtts://",
                          hint="e.g. --mqtt mqtt://127.0.0.1:1883/factory")
    if parts.password is not None:
        raise ConfigError(f"--mqtt {shown}: a password in the URL would show in ps and logs",
                          hint=f"put it in a file (--mqtt-password-file) or in {PASSWORD_ENV}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--mqtt {shown}: the port must be a number 1..65535") from None
    if not parts.hostname:
        raise ConfigError(f"--mqtt {shown}: no broker host",
                          hint="e.g. --mqtt mqtt://broker.local/factory")
    prefix = parts.path.strip("/") + ("#" if "#" in url else "")  # `#` starts a fragment
    if not prefix or _BAD_TOPIC & set(prefix):
        raise ConfigError(f"--mqtt {shown}: the topic prefix '{prefix}' must be non-empty and "
                          "hold no + or #", hint="e.g. mqtt://broker/factory/line3")
    tls = parts.scheme == "mqtts"
    return MqttTarget(tls, parts.hostname, port or (8883 if tls else 1883),
                      parts.username or None, prefix)


def check_station_name(name: str) -> str:
    if not name or "/" in name or _BAD_TOPIC & set(name):
        raise ConfigError(f"--station '{name}': a station name is one MQTT topic level "
                          "(no /, + or #)", hint="e.g. --station line3-cam1")
    return name


def read_password(password_file: str | None) -> str | None:
    """The password from its file (first line) or EDGEAS_MQTT_PASSWORD; None: none."""
    if password_file:
        path = Path(password_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"--mqtt-password-file {path}: cannot read it "
                              f"({exc.strerror or exc})") from exc
        lines = text.splitlines()
        return lines[0] if lines else ""
    return os.environ.get(PASSWORD_ENV) or None


class MqttSink(QueuedSink):
    name = "mqtt"
    backoff_max_s = 5.0  # paho reconnects by itself; this only paces a broker that refuses

    def __init__(self, target: MqttTarget, outbox: Outbox, station: str,
                 password: str | None = None, ca_file: str | None = None,
                 status_interval_s: float = STATUS_INTERVAL_S, drain_s: float = 5.0,
                 with_thumbnail: bool = False) -> None:
        # checked before the base class starts its writer thread
        mqtt = require("paho.mqtt.client", "paho-mqtt", "runtime")
        if target.tls and ca_file and not Path(ca_file).is_file():
            raise ConfigError(f"--mqtt-ca {ca_file}: no such file")
        super().__init__(outbox, check_station_name(station), drain_s)
        self.target, self.status_interval_s = target, status_interval_s
        self.with_thumbnail = with_thumbnail
        self.password_set = password is not None
        base = f"{target.prefix}/{station}"
        self.events_topic, self.status_topic = f"{base}/events", f"{base}/status"
        self.connected = threading.Event()
        self.connects = 0
        self.frames = self.ng_frames = 0
        self._last: tuple[float, float | None] | None = None  # (time.time(), fps)
        self._context: SinkContext | None = None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"edgeas-{station}-{os.getpid()}")
        if target.user is not None:
            client.username_pw_set(target.user, password)
        if target.tls:
            client.tls_set(ca_certs=ca_file)
        client.will_set(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self._unreachable = False
        self.client = client
        self._status_stop = threading.Event()  # before the callbacks can run
        self._status_thread = threading.Thread(target=self._status_loop, daemon=True,
                                               name="edgeas-mqtt-status")
        # in the background: an unreachable broker at start only delays delivery
        client.connect_async(target.host, target.port, keepalive=15)
        client.loop_start()
        self._status_thread.start()

    # ---------------------------------------------------------------- paho callbacks

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.warning("mqtt: %s refused the connection: %s", self.target.url(), reason)
            return
        self.connects += 1
        self._unreachable = False
        if self.connects > 1:
            log.warning("mqtt: reconnected to %s", self.target.url())
        self.connected.set()
        self._publish_status("running")

    def _on_connect_fail(self, client, userdata) -> None:
        if not self._unreachable:  # once per outage: paho retries every few seconds
            self._unreachable = True
            tls = " (mqtts: is --mqtt-ca the CA that signed the broker's certificate?)"
            log.warning("mqtt: cannot connect to %s; retrying in the background, events "
                        "wait in %s%s", self.target.url(), self.outbox.dir,
                        tls if self.target.tls else "")

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if self.connected.is_set() and not self._status_stop.is_set():  # not our own goodbye
            log.warning("mqtt: lost %s (%s); events wait in %s", self.target.url(), reason,
                        self.outbox.dir)
        self.connected.clear()

    # ---------------------------------------------------------------- the sink

    def open(self, context: SinkContext) -> None:
        self._context = context
        super().open(context)

    def on_frame(self, result: FrameResult) -> None:
        self.frames += 1
        self.ng_frames += int(result.is_ng)
        self._last = (time.time(), result.fps)

    def on_event(self, result: FrameResult) -> None:
        msg = self.message(result)
        if self.with_thumbnail:
            msg["thumbnail"] = thumbnail(result.frame)
        self.enqueue(msg)

    def deliver(self, data: bytes) -> str:
        if not self.connected.wait(1.0):
            return WAIT
        info = self.client.publish(self.events_topic, data, qos=1)
        # paho keeps the message and resends it after a reconnect: wait for its PUBACK
        while not info.is_published():
            if self._stop.is_set():
                return RETRY  # left on disk: sent again by the next run
            if info.rc == 0:
                info.wait_for_publish(PUBACK_WAIT_S)
            else:  # published while the link dropped: paho sends it on reconnect
                time.sleep(PUBACK_WAIT_S)
        return OK

    def _status_payload(self, state: str) -> str:
        status: dict[str, Any] = {"state": state, "station": self.station, "time": utc_now()}
        if state != "offline" or self.frames:
            last = self._last
            status.update(frames=self.frames, ng_frames=self.ng_frames,
                          fps=last[1] if last else None,
                          last_frame_time=_iso(last[0]) if last else None,
                          queue=self.outbox.depth)
            sources = self._context.sources if self._context is not None else ()
            if sources:
                cond, since = sources[0].condition()
                status["source"] = {"name": sources[0].name, "state": cond,
                                    "since": _iso(since)}
        return json.dumps(status)

    def _publish_status(self, state: str) -> Any:
        return self.client.publish(self.status_topic, self._status_payload(state), qos=1,
                                   retain=True)

    def _status_loop(self) -> None:
        while not self._status_stop.wait(self.status_interval_s):
            if self.connected.is_set():
                self._publish_status("running")

    def shutdown(self) -> None:
        self._status_stop.set()
        self._status_thread.join(timeout=2)
        if self.connected.is_set():
            # a clean stop sends no last will: say "offline" ourselves, retained
            info = self._publish_status("offline")
            if info.rc == 0:
                info.wait_for_publish(2.0)
            self.client.disconnect()
        self.client.loop_stop()

    def describe(self) -> dict[str, Any]:
        return {"broker": self.target.url(), "topic": self.events_topic,
                "password": "***" if self.password_set else None,
                "connects": self.connects}


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="milliseconds")
