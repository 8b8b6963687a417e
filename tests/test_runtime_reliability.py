"""A station under faults, with real components: SIGTERM mid-run loses no NG event already
decided (events.jsonl, MQTT and the webhook queue all have each one), and a flood of NG
frames keeps the events folder and the queues within their budgets. The password given
to the station never shows in its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from brokers import Mosquitto, Subscriber, free_port
from station_fakes import PacedSource, pipeline, read_events

from edgeas.runtime.events import EventLog, EventWriter
from edgeas.runtime.outbox import Outbox
from edgeas.runtime.webhook import WebhookSink

TESTS = Path(__file__).resolve().parent
SECRET = "pw-that-must-not-show"
# A station in its own process (the pipeline's signal handler needs a main thread): the
# fake model behind a paced source, events + MQTT + a webhook whose receiver is down,
# built from StreamOptions like `edgeas stream` does; the summary on stdout at the end.
STATION = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from station_fakes import PacedSource, pipeline
from edgeas.runtime.command import console, print_summary, setup_logging
from edgeas.runtime.sinks import build_sinks
from edgeas.runtime.station import StreamOptions

setup_logging()
options = StreamOptions(events_dir=sys.argv[2], mqtt=sys.argv[3], webhook=sys.argv[4],
                        queue_dir=sys.argv[5], station="line1")
source = PacedSource(100000, period_s=0.02)
summary = pipeline(source, build_sinks(options, source, console)).run()
print_summary(summary)
print("SUMMARY " + json.dumps(summary, default=str), flush=True)
"""


def test_sigterm_mid_run_loses_no_decided_event(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    sub = Subscriber(broker.port, "factory/line1/events")
    try:
        env = dict(os.environ, EDGEAS_MQTT_PASSWORD=SECRET)
        args = [sys.executable, "-c", STATION, str(TESTS), str(tmp_path / "events"),
                f"mqtt://edge@127.0.0.1:{broker.port}/factory",
                f"http://127.0.0.1:{free_port()}/ng", str(tmp_path / "queue")]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        time.sleep(3.0)  # well into the run: tens of NG frames decided
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        summary = json.loads(out.split("SUMMARY ", 1)[1])
        assert summary["stopped"] and summary["ng_frames"] >= 10
        ids = [e["image"].rsplit(".", 1)[0] for e in read_events(tmp_path / "events")]
        assert len(ids) == summary["ng_frames"] == summary["events"]["written"]
        # the webhook's receiver never answered: every event waits in its queue, in order
        queued = sorted((tmp_path / "queue" / "webhook").glob("*.json"))
        assert [json.loads(p.read_bytes())["id"] for p in queued] == ids
        # MQTT: each event was delivered or is still queued for the next run
        got = {m["id"] for m in sub.wait_for("/events", len(ids), timeout=10)}
        left = {json.loads(p.read_bytes())["id"]
                for p in (tmp_path / "queue" / "mqtt").glob("*.json")}
        assert got | left == set(ids)
        assert summary["mqtt"]["delivered"] + summary["mqtt"]["pending"] == len(ids)
        # the password reached the broker's client, never the output
        assert summary["mqtt"]["password"] == "***"
        assert SECRET not in out and SECRET not in err
        assert "SIGTERM: finishing the frames in flight" in err
        assert f"webhook: 0 of {len(ids)} events delivered, {len(ids)} waiting in" in err
    finally:
        sub.close()
        broker.close()


def test_a_flood_of_ng_frames_stays_within_the_budgets(tmp_path):
    events = EventWriter(EventLog(tmp_path / "events", budget_mb=0.05))
    queue_budget = 20_000
    hook = WebhookSink(f"http://127.0.0.1:{free_port()}/ng",
                       Outbox(tmp_path / "queue", queue_budget), "s1", drain_s=0.1)
    summary = pipeline(PacedSource(400, every=1), [events, hook]).run()  # every frame NG
    assert summary["ng_frames"] == 400
    folder = sum(p.stat().st_size for p in (tmp_path / "events").iterdir())
    assert folder <= 0.05 * 2**20 and summary["events"]["deleted"] > 0
    kept = read_events(tmp_path / "events")
    assert kept and kept[-1]["frame"] == 399  # the newest are the ones kept
    queue = sorted((tmp_path / "queue").glob("*.json"))
    assert sum(p.stat().st_size for p in queue) <= queue_budget
    assert summary["webhook"]["dropped"] > 0 and summary["webhook"]["dropped"] + len(queue) == 400
    assert json.loads(queue[-1].read_bytes())["frame"] == 399
    # every file the events wrote is inside its folder (names are frame number and time)
    assert all(p.parent == tmp_path / "events" for p in (tmp_path / "events").rglob("*"))
