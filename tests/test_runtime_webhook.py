"""Webhook against a local HTTP receiver (stdlib, 127.0.0.1) that fails on purpose: every
NG event arrives, in order, despite 503s, a receiver that is down at first and one that
answers too slowly; a slow receiver never stalls the pipeline; a 4xx goes to rejected/;
the station file and flags build it, and bad URLs are one-line errors."""

from __future__ import annotations

import json
import time

import pytest
from brokers import Receiver, free_port
from station_fakes import PacedSource, ng_frames, pipeline

from edgeas.errors import ConfigError
from edgeas.runtime.bench import MemorySource
from edgeas.runtime.outbox import Outbox
from edgeas.runtime.sinks import build_sinks
from edgeas.runtime.station import load_station
from edgeas.runtime.webhook import WebhookSink, check_webhook_url


def _first_seen(bodies: list[dict]) -> list[int]:
    seen: list[str] = []
    frames = []
    for b in bodies:
        if b["id"] not in seen:
            seen.append(b["id"])
            frames.append(b["frame"])
    return frames


def test_every_event_arrives_in_order_through_a_receiver_that_fails_sometimes(tmp_path):
    receiver = Receiver(fail=lambda n: n % 3 == 0)  # every third request: 503
    try:
        sink = WebhookSink(receiver.url, Outbox(tmp_path / "q", 1 << 20), "line1", drain_s=20)
        summary = pipeline(PacedSource(20), [sink]).run()
        assert _first_seen(receiver.bodies) == ng_frames(20)
        assert all(b["_header_id"] == b["id"] and b["station"] == "line1"
                   for b in receiver.bodies)
        hook = summary["webhook"]
        assert hook["delivered"] == 10 and hook["pending"] == 0 and hook["failures"] >= 3
    finally:
        receiver.close()


def test_a_receiver_down_at_start_gets_everything_once_it_is_up(tmp_path):
    port = free_port()  # nobody listens yet
    sink = WebhookSink(f"http://127.0.0.1:{port}/ng", Outbox(tmp_path / "q", 1 << 20), "s1",
                       drain_s=0.2)
    summary = pipeline(PacedSource(6), [sink]).run()
    assert summary["webhook"]["pending"] == 3  # kept on disk, nothing lost
    receiver = Receiver()
    try:
        again = WebhookSink(receiver.url, Outbox(tmp_path / "q", 1 << 20), "s1", drain_s=10)
        again.start()
        assert again.outbox.wait_empty(10)
        again.close()
        assert [b["frame"] for b in receiver.bodies] == [0, 2, 4]
    finally:
        receiver.close()


def test_a_slow_receiver_times_out_and_never_stalls_the_pipeline(tmp_path):
    receiver = Receiver(delay_s=1.0)  # slower than the timeout: every request fails
    try:
        sink = WebhookSink(receiver.url, Outbox(tmp_path / "q", 1 << 20), "s1", timeout_s=0.2,
                           drain_s=0.5)
        t0 = time.monotonic()
        summary = pipeline(PacedSource(40, period_s=0.01), [sink]).run()
        # 20 events queued while the receiver hung: the run took its own time only
        # (0.4 s of frames + the 0.5 s drain), not 20 x the receiver's
        assert time.monotonic() - t0 < 3.0
        assert summary["webhook"]["queued"] == 20 and summary["webhook"]["pending"] >= 19
        # each call is a queue write on disk, far from the receiver's 1 s
        assert summary["stages"]["sink:webhook"]["p99_ms"] < 500
    finally:
        receiver.close()


def test_a_receiver_that_refuses_for_good_moves_the_event_aside(tmp_path):
    receiver = Receiver(fail=lambda n: 400 if n == 1 else False)
    try:
        sink = WebhookSink(receiver.url, Outbox(tmp_path / "q", 1 << 20), "s1", drain_s=5)
        summary = pipeline(PacedSource(4), [sink]).run()
        # the first is refused for good (retrying would block every later one), the
        # second goes through
        assert [b["frame"] for b in receiver.bodies] == [2]
        assert summary["webhook"]["rejected"] == 1 and summary["webhook"]["delivered"] == 1
        (kept,) = (tmp_path / "q" / "rejected").iterdir()
        assert json.loads(kept.read_text())["frame"] == 0
    finally:
        receiver.close()


@pytest.mark.parametrize("url", ["ftp://x/y", "http://", "mes.local/ng",
                                 "http://mes:port/ng"])
def test_bad_webhook_urls_are_one_line_errors(url):
    with pytest.raises(ConfigError, match="--webhook"):
        check_webhook_url(url)


def test_the_station_file_builds_the_webhook_and_its_queue(tmp_path):
    station = tmp_path / "station.yaml"
    station.write_text("model: m.onnx\nsource: clip.mp4\nstation: line7\n"
                       "webhook: {url: 'http://127.0.0.1:9/ng', timeout_s: 0.5}\n"
                       "queue: {dir: q, budget_mb: 2}\n")
    options = load_station(station)
    assert options.webhook == "http://127.0.0.1:9/ng" and options.webhook_timeout_s == 0.5
    assert options.queue_dir == str(tmp_path / "q") and options.station == "line7"
    sinks = build_sinks(options, MemorySource([], 0))
    try:
        hook = next(s for s in sinks if s.name == "webhook")
        assert hook.outbox.dir == tmp_path / "q" / "webhook"
        assert hook.outbox.budget == 2 << 20 and hook.timeout_s == 0.5
    finally:
        for s in sinks:
            s.close()
    station.write_text("model: m.onnx\nwebhook: {url: x, timeout: 1}\n")
    with pytest.raises(ConfigError, match="timeout"):
        load_station(station)


def test_the_message_is_the_event_record_with_its_id(tmp_path):
    receiver = Receiver()
    try:
        sink = WebhookSink(receiver.url, Outbox(tmp_path / "q", 1 << 20), "s1", drain_s=5)
        pipeline(PacedSource(2), [sink]).run()
        (body,) = receiver.bodies
        assert set(body) == {"id", "station", "source_name", "time", "frame", "source", "score",
                             "threshold", "regions", "_header_id"}
        # the fake's constant map of 1, smoothed: 1 up to float32 rounding
        assert body["id"].startswith("00000000_")
        assert body["score"] == pytest.approx(1.0, abs=1e-6)
    finally:
        receiver.close()
