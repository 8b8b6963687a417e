"""Prometheus metrics of a station: on the live page's `/metrics` (`--serve`), or on their
own `--metrics HOST:PORT` (127.0.0.1 unless another address is named) without the page.

    edgeas_frames_total{source}                 frames decided
    edgeas_ng_frames_total{source}              of which NG
    edgeas_dropped_frames_total{source}         frames a live source replaced unread
    edgeas_source_reconnects_total{source}      times a live source came back
    edgeas_source_up{source}                    1 while it delivers (live/reading), else 0
    edgeas_last_frame_timestamp_seconds{source} when the newest frame was decided: a dark
                                                camera shows as this standing still
    edgeas_fps                                  the pipeline's rolling rate
    edgeas_stage_seconds{stage}                 histogram per stage (capture, infer, ...,
                                                `sink:NAME`, and `latency` end to end)
    edgeas_queue_depth{sink}, edgeas_queue_bytes{sink}, edgeas_events_delivered_total{sink}
                                                the MQTT and webhook queues
    edgeas_events_disk_bytes{dir}, edgeas_events_disk_budget_bytes{dir}
    edgeas_model_info{model, preset, precision, backend, device}, edgeas_threshold

Each sink has its own registry (no process-wide state, so two runs in one process do
not mix). Counts are kept by on_frame (a few increments); everything that other parts
already know (queues, disk use, reconnects) is read when Prometheus scrapes, so nothing
is copied per frame. prometheus_client (the `runtime` extra) is imported on first use.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgeas.errors import require
from edgeas.runtime.live_http import start_http
from edgeas.runtime.sink import FrameResult, Sink, SinkContext

log = logging.getLogger("edgeas.stream")
# seconds: from 1 ms (a sink, an aggregation) to 10 s (a stalled capture)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_UP_STATES = ("live", "reading")


class MetricsSink(Sink):
    """Counts frames and observes stage times; `exposition()` is the /metrics body. With
    `listen` ((host, port)) it also serves /metrics itself."""

    name = "metrics"

    def __init__(self, listen: tuple[str, int] | None = None) -> None:
        self.prom = require("prometheus_client", "prometheus-client", "runtime")
        self.families = require("prometheus_client.core", "prometheus-client", "runtime")
        reg = self.registry = self.prom.CollectorRegistry(auto_describe=True)
        self.frames = self.prom.Counter("edgeas_frames", "Frames decided", ["source"],
                                        registry=reg)
        self.ng = self.prom.Counter("edgeas_ng_frames", "Frames decided NG", ["source"],
                                    registry=reg)
        self.stages = self.prom.Histogram("edgeas_stage_seconds", "Time per stage and frame",
                                          ["stage"], buckets=BUCKETS, registry=reg)
        self._fps: float | None = None
        self._last: dict[int, tuple[float, int]] = {}  # stream -> (decided at, dropped so far)
        self.context: SinkContext | None = None
        reg.register(_Scraped(self))
        self.httpd: ThreadingHTTPServer | None = None
        if listen is not None:
            self._serve(*listen)

    def _serve(self, host: str, port: int) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    body, kind = owner.exposition()
                    self.send_response(200)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        self.httpd, _ = start_http(host, port, Handler, "--metrics", "edgeas-metrics")
        self.address = (host, int(self.httpd.server_address[1]))

    @property
    def url(self) -> str | None:
        if self.httpd is None:
            return None
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def exposition(self) -> tuple[bytes, str]:
        return self.prom.generate_latest(self.registry), self.prom.CONTENT_TYPE_LATEST

    # ---------------------------------------------------------------- the sink

    def open(self, context: SinkContext) -> None:
        self.context = context
        if context.stats is not None:
            context.stats.observers.append(self._observe)

    def _observe(self, stage: str, seconds: float) -> None:
        self.stages.labels(stage).observe(seconds)

    def _source(self, stream: int) -> str:
        sources = self.context.sources if self.context is not None else ()
        return sources[stream].name if stream < len(sources) else str(stream)

    def on_frame(self, result: FrameResult) -> None:
        name = self._source(result.stream)
        self.frames.labels(name).inc()
        if result.is_ng:
            self.ng.labels(name).inc()
        self._fps = result.fps
        self._last[result.stream] = (time.time(), result.dropped)

    def close(self, error: BaseException | None = None) -> None:
        if self.context is not None and self.context.stats is not None:
            with contextlib.suppress(ValueError):
                self.context.stats.observers.remove(self._observe)
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


class _Scraped:
    """What is read at scrape time from the parts that already know it."""

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink

    def describe(self) -> list:
        return []  # nothing fixed to describe: families depend on the run

    def collect(self) -> Iterator[Any]:
        core = self.sink.families
        ctx = self.sink.context
        gauge, counter = core.GaugeMetricFamily, core.CounterMetricFamily
        dropped = counter("edgeas_dropped_frames", "Frames a live source dropped", None,
                          ["source"])
        reconnects = counter("edgeas_source_reconnects", "Reconnects of a live source", None,
                             ["source"])
        up = gauge("edgeas_source_up", "1 while the source delivers frames", None, ["source"])
        last = gauge("edgeas_last_frame_timestamp_seconds", "When the newest frame was decided",
                     None, ["source"])
        for i, info in enumerate(ctx.sources if ctx is not None else ()):
            reconnects.add_metric([info.name], info.reconnects())
            up.add_metric([info.name], float(info.condition()[0] in _UP_STATES))
            if i in self.sink._last:
                when, lost = self.sink._last[i]
                last.add_metric([info.name], when)
                dropped.add_metric([info.name], lost)
        yield from (dropped, reconnects, up, last)
        if self.sink._fps is not None:
            yield gauge("edgeas_fps", "Frames per second of the pipeline", self.sink._fps)
        if ctx is None:
            return
        depth = gauge("edgeas_queue_depth", "Events waiting for delivery", None, ["sink"])
        qbytes = gauge("edgeas_queue_bytes", "Disk used by a delivery queue", None, ["sink"])
        delivered = counter("edgeas_events_delivered", "Events delivered", None, ["sink"])
        for q in ctx.queues:
            depth.add_metric([q.sink], q.depth())
            qbytes.add_metric([q.sink], q.used_bytes())
            delivered.add_metric([q.sink], q.delivered())
        used = gauge("edgeas_events_disk_bytes", "Disk used by the events folder", None, ["dir"])
        budget = gauge("edgeas_events_disk_budget_bytes", "The events folder's budget", None,
                       ["dir"])
        for store in ctx.event_stores:
            used.add_metric([str(store.folder)], store.used_bytes())
            budget.add_metric([str(store.folder)], store.budget_bytes)
        yield from (depth, qbytes, delivered, used, budget)
        station = ctx.station
        info = core.InfoMetricFamily("edgeas_model", "The model the station runs")
        info.add_metric([], {k: str(station.get(k) or "") for k in
                             ("model", "preset", "precision", "backend", "device")})
        yield info
        yield gauge("edgeas_threshold", "The decision threshold in use", ctx.threshold)
