"""Prometheus metrics, scraped over HTTP while a station runs: on `--metrics HOST:PORT` and
on the live page's /metrics; frames, NG frames, drops, reconnects, stage histograms,
the queue and events disk use, model and threshold; 127.0.0.1 unless told."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from brokers import free_port
from station_fakes import PacedSource, pipeline

from edgeas.errors import ConfigError
from edgeas.runtime.events import EventLog, EventWriter
from edgeas.runtime.outbox import Outbox
from edgeas.runtime.sinks import build_sinks
from edgeas.runtime.station import StreamOptions, load_station
from edgeas.runtime.webhook import WebhookSink

prom = pytest.importorskip("prometheus_client",
                           reason="prometheus-client (the runtime extra) is not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _scrape_when(url: str, ready, timeout: float = 10.0) -> dict:
    """Scrape `url` once `ready(samples)` holds (the run is under way)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with urllib.request.urlopen(url, timeout=2) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            got = _samples(r.read().decode())
        if ready(got):
            return got
        time.sleep(0.05)
    raise AssertionError(f"never ready: {sorted(k[0] for k in got)}")


class Reconnecting(PacedSource):
    reconnects = 3  # as if a camera had come back three times


def _frames(samples, name="edgeas_frames_total"):
    return next((v for (n, _), v in samples.items() if n == name), 0)


def test_metrics_are_scraped_while_the_station_runs(tmp_path):
    from edgeas.runtime.metrics import MetricsSink

    metrics = MetricsSink(("127.0.0.1", 0))
    assert metrics.address[0] == "127.0.0.1"
    events = EventWriter(EventLog(tmp_path / "events"))
    # a webhook to nobody: its events pile up in the queue, which the metrics show
    hook = WebhookSink(f"http://127.0.0.1:{free_port()}/x", Outbox(tmp_path / "q", 1 << 20),
                       "s1", drain_s=0.1)
    run = pipeline(Reconnecting(60, period_s=0.03), [events, hook, metrics])
    got: dict = {}
    scraper = threading.Thread(target=lambda: got.update(_scrape_when(
        metrics.url, lambda s: _frames(s) >= 20)))
    scraper.start()
    run.run()
    scraper.join()
    frames, ng = _frames(got), _frames(got, "edgeas_ng_frames_total")
    assert frames >= 20 and 0 < ng <= frames
    src = (("source", "memory"),)
    assert got[("edgeas_source_reconnects_total", src)] == 3
    assert got[("edgeas_source_up", src)] == 1.0
    assert got[("edgeas_dropped_frames_total", src)] == 0
    assert abs(got[("edgeas_last_frame_timestamp_seconds", src)] - time.time()) < 30
    assert got[("edgeas_stage_seconds_count", (("stage", "infer"),))] >= 20
    assert ("edgeas_stage_seconds_bucket", (("le", "0.001"), ("stage", "sink:webhook"))) in got
    assert got[("edgeas_queue_depth", (("sink", "webhook"),))] >= 1
    assert got[("edgeas_queue_bytes", (("sink", "webhook"),))] > 0
    assert got[("edgeas_events_delivered_total", (("sink", "webhook"),))] == 0
    disk = (("dir", str(tmp_path / "events")),)
    assert got[("edgeas_events_disk_bytes", disk)] > 0
    assert got[("edgeas_events_disk_budget_bytes", disk)] == 1024 * 2**20
    assert got[("edgeas_threshold", ())] == 0.5
    assert any(n == "edgeas_model_info" for n, _ in got)
    # the run is over: the port is closed again (no thread or socket left behind)
    url = f"http://127.0.0.1:{metrics.address[1]}/metrics"
    assert metrics.url is None
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=1)


def test_the_live_page_serves_metrics_and_the_queues_too(tmp_path):
    # a webhook to nobody: its queue shows on the page's status.json too
    options = StreamOptions(serve="127.0.0.1:0", webhook=f"http://127.0.0.1:{free_port()}/x",
                            queue_dir=str(tmp_path / "q"))
    source = PacedSource(40, period_s=0.03)
    sinks = build_sinks(options, source)
    live = next(s for s in sinks if s.name == "live")
    assert live.metrics is not None and live.metrics in sinks
    got: dict = {}
    status: dict = {}

    def watch() -> None:  # while the run goes on: the metrics, then the status
        got.update(_scrape_when(f"{live.url}metrics", lambda s: _frames(s) >= 10))
        with urllib.request.urlopen(f"{live.url}status.json", timeout=5) as r:
            status.update(json.loads(r.read()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    pipeline(source, sinks).run()
    watcher.join()
    assert _frames(got) >= 10
    (queue,) = status["events"]["queues"]
    assert queue["sink"] == "webhook" and queue["dir"] == str(tmp_path / "q" / "webhook")
    assert queue["depth"] >= 1 and queue["delivered"] == 0 and queue["budget_bytes"] > 0


def test_metrics_bind_127_0_0_1_unless_another_address_is_named(tmp_path):
    port = free_port()
    sinks = build_sinks(StreamOptions(metrics=str(port)), PacedSource(1))
    try:
        (metrics,) = sinks
        assert metrics.address == ("127.0.0.1", port)
    finally:
        for s in sinks:
            s.close()
    with pytest.raises(ConfigError, match="--metrics 127.0.0.1:http"):
        build_sinks(StreamOptions(metrics="127.0.0.1:http"), PacedSource(1))
    station = tmp_path / "station.yaml"
    station.write_text("model: m.onnx\nmetrics: true\n")
    assert load_station(station).metrics == "127.0.0.1:9100"
