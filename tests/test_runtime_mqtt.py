"""MQTT against a real Mosquitto on 127.0.0.1: every NG event arrives at least once and in
order across a broker stopped and restarted mid-run (repeats recognised by `id`), events
wait on disk while the broker is away at start and across a station restart, the status
is retained with an "offline" last word, and the URL and password rules hold."""

from __future__ import annotations

import threading
import time

import pytest
from brokers import Mosquitto, Subscriber
from station_fakes import PacedSource, ng_frames, pipeline, read_events

from edgeas.errors import ConfigError
from edgeas.runtime.events import EventLog, EventWriter
from edgeas.runtime.mqtt import MqttSink, parse_mqtt_url, read_password
from edgeas.runtime.outbox import Outbox

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt (the runtime extra) is not installed")


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker")
    yield b
    b.close()


def _sink(broker_port: int, queue, **kw) -> MqttSink:
    target = parse_mqtt_url(f"mqtt://127.0.0.1:{broker_port}/factory")
    return MqttSink(target, Outbox(queue, 8 << 20), "line1", status_interval_s=0.2, **kw)


def _first_seen(messages: list[dict]) -> list[str]:
    seen: list[str] = []
    for m in messages:
        if m["id"] not in seen:
            seen.append(m["id"])
    return seen


def test_events_survive_a_broker_restart_mid_run_in_order(tmp_path, broker):
    sub = Subscriber(broker.port, "factory/line1/#")
    count = 60
    events = EventWriter(EventLog(tmp_path / "events"))
    sink = _sink(broker.port, tmp_path / "queue", drain_s=15)
    run = pipeline(PacedSource(count, period_s=0.05), [events, sink])

    def outage():  # the broker goes away for 1.5 s while frames keep coming
        time.sleep(0.8)
        broker.stop()
        time.sleep(1.5)
        broker.start()

    fault = threading.Thread(target=outage)
    fault.start()
    summary = run.run()
    fault.join()
    written = read_events(tmp_path / "events")
    assert [e["frame"] for e in written] == ng_frames(count)
    got = sub.wait_for("/events", len(written))
    sub.close()
    ids = [e["image"].rsplit(".", 1)[0] for e in written]
    # at least once, in the order decided; a repeat (a PUBACK lost in the outage) is
    # recognised by its id
    assert _first_seen(got) == ids
    assert all(m["station"] == "line1" and m["image"] for m in got)
    assert summary["mqtt"]["delivered"] == len(ids) and summary["mqtt"]["pending"] == 0
    assert summary["mqtt"]["connects"] >= 2  # it really reconnected
    assert not list((tmp_path / "queue").glob("*.json"))


def test_a_broker_absent_at_start_then_a_station_restart_lose_nothing(tmp_path, broker):
    broker.stop()
    # run 1: no broker at all; starting is not an error, the events stay queued on disk
    first = _sink(broker.port, tmp_path / "queue", drain_s=0.3)
    summary1 = pipeline(PacedSource(6), [first]).run()
    assert summary1["mqtt"]["delivered"] == 0 and summary1["mqtt"]["pending"] == 3
    broker.start()
    sub = Subscriber(broker.port, "factory/line1/events")
    # run 2 (a restarted station): the earlier run's events go first, then its own
    second = _sink(broker.port, tmp_path / "queue", drain_s=10)
    summary2 = pipeline(PacedSource(4), [second]).run()
    got = sub.wait_for("/events", 5)
    sub.close()
    frames = [m["frame"] for m in got]
    assert frames[:3] == [0, 2, 4] and frames[3:] == [0, 2]
    assert len({m["id"] for m in got}) == 5
    assert summary2["mqtt"]["carried"] == 3 and summary2["mqtt"]["pending"] == 0
    assert "image" not in got[0]  # no events folder: no file names that point at nothing


def test_status_is_retained_and_says_offline_at_the_end(tmp_path, broker):
    sink = _sink(broker.port, tmp_path / "queue")
    pipeline(PacedSource(20, period_s=0.05), [sink]).run()
    # a late subscriber gets the retained status: the station said goodbye
    late = Subscriber(broker.port, "factory/line1/status", client_id="late", clean=True)
    got = late.wait_for("/status", 1, timeout=5)
    late.close()
    assert got and got[-1]["state"] == "offline" and got[-1]["frames"] == 20
    assert got[-1]["ng_frames"] == 10 and got[-1]["source"]["state"] == "ended"


def test_a_station_killed_leaves_offline_as_its_last_will(tmp_path, broker):
    sub = Subscriber(broker.port, "factory/line1/status", client_id="will", clean=True)
    sink = _sink(broker.port, tmp_path / "queue")
    sink.start()
    assert sink.connected.wait(10)
    time.sleep(0.5)
    assert sub.of("/status")[-1]["state"] == "running"
    # the socket dies without a DISCONNECT (a crash, a pulled cable): the broker publishes
    # the will
    sink.client._sock.close()  # noqa: SLF001 - the only way to die uncleanly in-process
    sink._status_stop.set()  # noqa: SLF001
    sink.client.loop_stop()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sub.of("/status")[-1]["state"] != "offline":
        time.sleep(0.1)
    sub.close()
    assert sub.of("/status")[-1]["state"] == "offline"


@pytest.mark.parametrize("url, message", [
    ("http://broker/x", "must start with mqtt://"),
    ("mqtt://u:secret@broker/x", "password in the URL"),
    ("mqtt://broker:99999/x", "port must be a number"),
    ("mqtt://broker", "topic prefix"),
    ("mqtt://broker/a/#", "topic prefix"),
    ("mqtt:///x", "no broker host"),
])
def test_bad_urls_are_one_line_errors_without_the_password(url, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_mqtt_url(url)
    assert "secret" not in str(info.value)


def test_passwords_come_from_a_file_or_the_environment_and_are_never_shown(
        tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEAS_MQTT_PASSWORD", raising=False)
    assert read_password(None) is None
    monkeypatch.setenv("EDGEAS_MQTT_PASSWORD", "from-env")
    assert read_password(None) == "from-env"
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    assert read_password(str(pw)) == "from-file"
    with pytest.raises(ConfigError, match="cannot read"):
        read_password(str(tmp_path / "missing"))


def test_a_password_protected_broker(tmp_path):
    import shutil
    import subprocess

    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package `mosquitto`)")
    pwfile = tmp_path / "passwords"
    subprocess.run([passwd, "-b", "-c", str(pwfile), "edge", "s3cret-pw"], check=True,
                   capture_output=True)
    pwfile.chmod(0o600)
    broker = Mosquitto(tmp_path / "broker", password_file=pwfile)
    try:
        secret = tmp_path / "pw"
        secret.write_text("s3cret-pw\n")
        target = parse_mqtt_url(f"mqtt://edge@127.0.0.1:{broker.port}/factory")
        sink = MqttSink(target, Outbox(tmp_path / "queue", 1 << 20), "line1",
                        password=read_password(str(secret)), drain_s=10)
        summary = pipeline(PacedSource(4), [sink]).run()
        assert summary["mqtt"]["delivered"] == 2
        assert "s3cret" not in repr(summary) and summary["mqtt"]["password"] == "***"
    finally:
        broker.close()


def test_without_paho_mqtt_is_a_clear_error_naming_the_package(tmp_path):
    from blocked_python import run_without

    run = run_without(("paho",), f"""
        from edgeas.errors import DependencyError
        from edgeas.runtime.mqtt import MqttSink, parse_mqtt_url
        from edgeas.runtime.outbox import Outbox
        try:
            MqttSink(parse_mqtt_url("mqtt://127.0.0.1/x"), Outbox({str(tmp_path)!r}, 1000), "s")
        except DependencyError as exc:
            print(exc)
    """)
    assert run.returncode == 0, run.stderr
    assert "paho-mqtt" in run.stdout and "edgeas[runtime]" in run.stdout


@pytest.mark.parametrize("flags, culprit", [
    (["--mqtt", "mqtt://edge:hunter2@broker/f"], "password in the URL"),
    (["--webhook", "mes.local/ng"], "--webhook mes.local/ng"),
    (["--on-ng", "/no/such/gate"], "/no/such/gate"),
    (["--metrics", "127.0.0.1:http"], "--metrics 127.0.0.1:http"),
    (["--station", "line/3", "--mqtt", "mqtt://b/f"], "--station 'line/3'"),
    (["--mqtt", "mqtt://b/f", "--mqtt-password-file", "pw"], "needs a user in the URL"),
    (["--mqtt", "mqtt://u@b/f", "--mqtt-ca", "ca.crt"], "only mqtts:// uses a CA file"),
])
def test_bad_integration_flags_fail_before_the_model_is_opened(tmp_path, flags, culprit):
    import subprocess
    import sys

    # the model does not exist either: the flag is what the user hears about first
    run = subprocess.run([sys.executable, "-m", "edgeas", "stream", "--model",
                          str(tmp_path / "missing.onnx"), str(tmp_path), *flags],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert culprit in run.stderr and "hunter2" not in run.stderr + run.stdout
    assert "Traceback" not in run.stderr


def test_the_station_file_and_flags_build_the_mqtt_sink(tmp_path, monkeypatch):
    from station_fakes import PacedSource

    from edgeas.runtime.command import build_options
    from edgeas.runtime.sinks import build_sinks

    monkeypatch.setenv("EDGEAS_MQTT_PASSWORD", "from-env")
    station = tmp_path / "station.yaml"
    station.write_text("model: m.onnx\nsource: frames\nstation: line7\n"
                       "mqtt: {url: 'mqtt://edge@127.0.0.1:1/plant'}\nqueue: {dir: q}\n")
    options = build_options(station, {"queue_budget_mb": 3.0})
    (sink,) = build_sinks(options, PacedSource(1))
    try:
        assert sink.events_topic == "plant/line7/events" and sink.password_set
        assert sink.outbox.dir == tmp_path / "q" / "mqtt" and sink.outbox.budget == 3 << 20
    finally:
        sink.close()


def test_mqtts_verifies_the_broker_against_the_ca_file(tmp_path, caplog):
    from brokers import make_certificates

    ca, cert, key = make_certificates(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker", tls=(ca, cert, key))
    try:
        url = f"mqtts://127.0.0.1:{broker.port}/factory"
        good = MqttSink(parse_mqtt_url(url), Outbox(tmp_path / "q1", 1 << 20), "line1",
                        ca_file=str(ca), drain_s=10)
        assert pipeline(PacedSource(4), [good]).run()["mqtt"]["delivered"] == 2
        # a broker whose certificate the CA did not sign is never sent a thing
        other, _, _ = make_certificates(tmp_path / "other")
        wrong = MqttSink(parse_mqtt_url(url), Outbox(tmp_path / "q2", 1 << 20), "line1",
                         ca_file=str(other), drain_s=1)
        summary = pipeline(PacedSource(4), [wrong]).run()["mqtt"]
        assert summary["delivered"] == 0 and summary["pending"] == 2
        assert summary["connects"] == 0
        assert "is --mqtt-ca the CA that signed" in caplog.text
    finally:
        broker.close()


def test_an_optional_thumbnail_rides_in_the_message(tmp_path, broker):
    import base64

    import cv2
    import numpy as np

    sub = Subscriber(broker.port, "factory/line1/events")
    sink = _sink(broker.port, tmp_path / "queue", drain_s=10, with_thumbnail=True)
    pipeline(PacedSource(2), [sink]).run()
    (msg,) = sub.wait_for("/events", 1)
    sub.close()
    jpeg = np.frombuffer(base64.b64decode(msg["thumbnail"]), np.uint8)
    thumb = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    assert thumb is not None and thumb.shape[1] <= 160 and thumb.mean() > 200  # bright = NG
    from edgeas.runtime.delivery import thumbnail

    wide = cv2.imdecode(np.frombuffer(base64.b64decode(thumbnail(
        np.zeros((720, 1280, 3), np.uint8))), np.uint8), cv2.IMREAD_COLOR)
    assert wide.shape == (90, 160, 3)  # a 720p frame, 160 px wide, its aspect kept
