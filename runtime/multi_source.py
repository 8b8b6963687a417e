"""Several sources in one station, batched through one model.

    edgeas stream --model model.onnx file://left.mp4 file://right.mp4 rtsp://cam3/s
    station.yaml:  sources: [{name, uri, threshold, min_area, events}, ...]

Each source is a lane (runtime/pipeline.py `Lane`): its own frame numbers, threshold,
min_area, events folder, counts and latency. The reader thread goes round the lanes
and puts one frame of each into the batch, up to the model's batch (a dynamic-batch
model: one frame per source; a fixed batch B: B frames, the backend pads a short
one; a batch-1 model: the sources one after another), starting one lane further on
each round so that no source is always last when the batch is smaller than the
station. A file or folder is read in its turn, so none of its frames is dropped; a
camera is asked without waiting (its capture thread keeps only the newest frame and
reconnects on its own, runtime/sources.py), so a camera that is slow or lost never
holds back the others' batches. A source that raises is given up with an error in the
log and the summary; the others go on, and the run fails only when every source did.

The events writer and the ground-truth check are per source (`PerSource` hands each
only its lane's frames; event files start with the source's name, so that event ids
stay unique on the live page); the live page is one sink that shows a tile per source
(FrameResult.stream). A recording or a window would interleave the cameras into one
picture stream, so they are refused with several sources.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeas.errors import ConfigError, EdgeasError, StreamError
from edgeas.groundtruth import find_ground_truth
from edgeas.postprocess import resolve
from edgeas.runtime.events import EventLog, EventWriter, source_prefix
from edgeas.runtime.integrations import add_integration_sinks
from edgeas.runtime.pipeline import _END, Lane, Pipeline, _Batch
from edgeas.runtime.sink import FrameResult, Sink, SinkContext, SourceInfo
from edgeas.runtime.sinks import GroundTruthSink, add_live_page
from edgeas.runtime.sources import Source, SourceSpec, open_source, parse_source, redact
from edgeas.runtime.stats import Ring

if TYPE_CHECKING:
    import queue

    from rich.console import Console

    from edgeas.runtime.backends import Backend
    from edgeas.runtime.station import SourceEntry, StreamOptions

log = logging.getLogger("edgeas.stream")
IDLE_WAIT_S = 0.005  # no camera had a new frame: wait this long before asking again
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_name(spec: SourceSpec) -> str:
    """A file or folder by its name, a camera by its URI without a password."""
    return Path(spec.target).name if spec.kind in ("file", "folder") else redact(spec.uri)


def folder_name(name: str) -> str:
    """A source's name as one folder name (an RTSP URI has slashes and colons)."""
    return _UNSAFE.sub("_", name).strip("._") or "source"


def plan_sources(options: StreamOptions) -> list[tuple[SourceEntry, SourceSpec, str,
                                                       str | None]]:
    """(entry, spec, name, events folder) per source, checked before anything opens: two
    sources with one name (or one events folder) are a usage error naming it."""
    planned = []
    names: set[str] = set()
    folders: dict[str, str] = {}
    for entry in options.sources:
        spec = parse_source(entry.uri)
        name = entry.name if entry.name else default_name(spec)
        if name in names:
            raise ConfigError(f"two sources are named '{name}'",
                              hint="give each its own name (station file: sources: "
                              "[{name: ..., uri: ...}])")
        names.add(name)
        events = entry.events
        if events is None and options.events_dir is not None:
            events = str(Path(options.events_dir) / folder_name(name))
        if events is not None:
            key = str(Path(events).resolve())
            if key in folders:
                raise ConfigError(f"sources '{folders[key]}' and '{name}' would write their "
                                  f"events into the same folder {events}",
                                  hint="give each source its own events folder or name")
            folders[key] = name
        planned.append((entry, spec, name, events))
    return planned


class PerSource(Sink):
    """A sink that sees only the frames of one source (its events, its ground truth)."""

    def __init__(self, inner: Sink, stream: int, lane: str) -> None:
        self.inner, self.stream = inner, stream
        self.name = f"{inner.name}:{lane}"  # unique per run, as Fanout wants

    def open(self, context: SinkContext) -> None:
        self.inner.open(context)

    def on_frame(self, result: FrameResult) -> bool | None:
        return self.inner.on_frame(result) if result.stream == self.stream else None

    def on_event(self, result: FrameResult) -> None:
        if result.stream == self.stream:
            self.inner.on_event(result)

    def close(self, error: BaseException | None = None) -> None:
        self.inner.close(error)

    def summary(self) -> dict[str, Any]:
        return {}  # the lane's own summary holds the inner sink's (MultiPipeline.summary)


class MultiPipeline(Pipeline):
    """The pipeline's three threads over several lanes (see the module's docstring)."""

    def __init__(self, backend: Backend, lanes: list[Lane], station_settings,
                 sinks: list[Sink], max_frames: int | None = None,
                 model_label: str = "") -> None:
        super().__init__(backend, lanes[0].source, station_settings, sinks, max_frames,
                         model_label=model_label)
        self.lanes = lanes
        self.latency = [Ring() for _ in lanes]
        self.failed_at = [0.0 for _ in lanes]  # time.time() when a lane was given up
        # a dynamic batch takes one frame of every source; a fixed one its own size
        self.cap = backend.batch or len(lanes)

    def _reading(self, lane: Lane) -> bool:
        return not (lane.failed or lane.source.ended
                    or (self.max_frames and lane.frames >= self.max_frames))

    def _reader(self, out: queue.Queue) -> None:
        h, w = self.pre.input_hw
        turn = 0
        try:
            while not self.stop.is_set():
                active = [k for k, lane in enumerate(self.lanes) if self._reading(lane)]
                if not active:
                    break
                first = turn % len(active)
                turn += 1
                item = _Batch(np.empty((min(self.cap, len(active)), 3, h, w), np.float32))
                for k in active[first:] + active[:first]:
                    if len(item.frames) == item.data.shape[0] or self.stop.is_set():
                        break
                    self._take(k, item)
                if item.frames:
                    item.data = item.data[: len(item.frames)]
                    if not self._put(out, item):
                        return
                elif all(self.lanes[k].source.live for k in active):
                    self.stop.wait(IDLE_WAIT_S)
        except BaseException as exc:  # reported by run(); the other threads drain and stop
            self.errors.append(exc)
        finally:
            self._put(out, _END) or out.put(_END)

    def _take(self, k: int, item: _Batch) -> None:
        """The next frame of lane `k` into the batch, if it has one now."""
        lane = self.lanes[k]
        src = lane.source
        t0 = time.perf_counter()
        try:
            frame = src.read(timeout=0.0 if src.live else 0.5)
        except Exception as exc:  # one broken source is given up; the others go on
            lane.failed, self.failed_at[k] = str(exc) or type(exc).__name__, time.time()
            log.error("source %s failed and is given up: %s", lane.name, lane.failed)
            return
        t1 = time.perf_counter()
        if frame is None:
            return
        try:
            self.pre.into(frame, item.data[len(item.frames)])
        except EdgeasError as exc:
            lane.skipped += 1
            self.skipped += 1
            log.warning("%s: frame %d skipped: %s", lane.name, lane.frames, exc.message)
            return
        self.stats.add("capture", t1 - t0)
        self.stats.add("preprocess", time.perf_counter() - t1)
        self.stats.started(t0)
        current = getattr(src, "current", None)
        item.frames.append(frame)
        item.indices.append(lane.frames)  # frame numbers count per source
        item.labels.append(str(current) if current is not None else src.spec.uri)
        item.started.append(t0)
        item.streams.append(k)
        lane.frames += 1

    def _context(self) -> SinkContext:
        infos = tuple(SourceInfo(lane.name, redact(lane.source.spec.uri),
                                 lane.source.spec.kind, lane.source.live, lane.source.fps,
                                 self._condition(k), self._reconnects(lane),
                                 threshold=lane.settings.threshold,
                                 min_area=lane.settings.min_area)
                      for k, lane in enumerate(self.lanes))
        first = self.lanes[0].source
        return SinkContext(first.spec.uri, any(i.live for i in infos), first.fps,
                           self.model_label, self.settings.threshold,
                           station=self.station(), sources=infos, stats=self.stats)

    def _condition(self, k: int):
        """What the page shows of lane `k`: its source's state, or `failed` once given up
        (the source itself would still say `reading`)."""
        lane = self.lanes[k]
        return lambda: ("failed", self.failed_at[k]) if lane.failed else lane.source.condition()

    @staticmethod
    def _reconnects(lane: Lane):
        return lambda: lane.source.reconnects

    def _one(self, frame: np.ndarray, maps: list[np.ndarray], item: _Batch, j: int) -> bool:
        keep = super()._one(frame, maps, item, j)
        self.latency[item.streams[j]].add(self.last["latency_ms"] / 1e3)
        return keep

    def run(self) -> dict[str, Any]:
        summary = super().run()
        if all(lane.failed for lane in self.lanes):
            raise StreamError("every source failed: " + "; ".join(
                f"{lane.name}: {lane.failed}" for lane in self.lanes))
        return summary

    def summary(self, wall: float) -> dict[str, Any]:
        out = super().summary(wall)
        lanes = [self._lane_summary(k, lane) for k, lane in enumerate(self.lanes)]
        out.update(
            source=", ".join(lane.name for lane in self.lanes),
            dropped=sum(s["dropped"] for s in lanes),
            skipped=self.skipped + sum(lane.source.skipped for lane in self.lanes),
            reconnects=sum(s["reconnects"] for s in lanes),
            batch_cap=self.cap, sources=lanes)
        return out

    def _lane_summary(self, k: int, lane: Lane) -> dict[str, Any]:
        src, s = lane.source, lane.settings
        out = {"name": lane.name, "source": redact(src.spec.uri),
               "frames": self.latency[k].count, "ng_frames": lane.ng,
               "dropped": src.dropped, "skipped": lane.skipped + src.skipped,
               "unanswered": lane.unanswered, "reconnects": src.reconnects,
               "threshold": s.threshold, "threshold_origin": s.threshold_origin,
               "min_area": s.min_area, "state": self._condition(k)()[0], "failed": lane.failed,
               "latency": self.latency[k].percentiles()}
        for sink in self.sinks.sinks:
            if isinstance(sink, PerSource) and sink.stream == k:
                out.update(sink.inner.summary())
        return out


def _lane_sinks(k: int, name: str, spec: SourceSpec, events: str | None,
                options: StreamOptions, console: Console | None) -> list[Sink]:
    sinks: list[Sink] = []
    if events is not None:
        written = EventLog(events, options.events_budget_mb, spec.uri,
                           prefix=source_prefix(name))
        sinks.append(PerSource(EventWriter(written), k, name))
    truth = find_ground_truth(spec.kind, spec.target)
    if truth is not None:
        sinks.append(PerSource(GroundTruthSink(truth), k, name))
        if console is not None:
            console.print(f"{name}: ground truth {truth.origin}")
    return sinks


def run_sources(backend: Backend, options: StreamOptions, model_label: str,
                console: Console | None = None) -> dict[str, Any]:
    """Open every source (one that cannot open at start is an error naming it), make the
    sinks, run the lanes to their ends; returns the summary."""
    if options.record is not None or options.show:
        raise ConfigError("--record and --show take one source: several would interleave "
                          "into one picture stream",
                          hint="use --serve for a page with a tile per source")
    if options.batch != 1:
        raise ConfigError(f"--batch {options.batch} batches the frames of one source; with "
                          "several, a call takes one frame of each up to the model's batch",
                          hint="leave --batch out (export with --dynamic-batch to batch "
                          "every source)")
    planned = plan_sources(options)
    station = resolve(backend.record, options.threshold, options.min_area,
                      options.aggregation, options.model or "", cls=options.cls)
    lanes: list[Lane] = []
    sinks: list[Sink] = []
    try:
        for k, (entry, spec, name, events) in enumerate(planned):
            settings = resolve(backend.record,
                               entry.threshold if entry.threshold is not None
                               else options.threshold,
                               entry.min_area if entry.min_area is not None
                               else options.min_area,
                               options.aggregation, options.model or "", cls=options.cls)
            source: Source = open_source(spec)
            lanes.append(Lane(source, settings, name))
            sinks += _lane_sinks(k, name, spec, events, options, console)
        # MQTT, webhook, --on-ng and metrics serve the whole station (their records say
        # which source), as with one source
        add_integration_sinks(options, sinks, console)
        if options.serve is not None:
            add_live_page(options.serve, sinks, console)
        pipeline = MultiPipeline(backend, lanes, station, sinks, options.max_frames,
                                 model_label)
    except BaseException as exc:
        for sink in reversed(sinks):  # never opened: a running pipeline would close them
            with contextlib.suppress(Exception):
                sink.close(exc)
        for lane in lanes:
            lane.source.close()
        raise
    try:
        if console is not None:
            names = ", ".join(lane.name for lane in lanes)
            console.print(f"streaming {len(lanes)} sources ({names}) through {model_label} "
                          f"({backend.name}, {backend.device}), up to {pipeline.cap} frames "
                          "per call")
        return pipeline.run()
    finally:
        for lane in lanes:
            lane.source.close()


def describe_sources(summary: dict[str, Any]) -> str:
    """One line per source of the summary."""
    lines = []
    for s in summary.get("sources", []):
        lat = s.get("latency") or {}
        line = (f"{s['name']}: {s['frames']} frames ({s['ng_frames']} NG), {s['dropped']} "
                f"dropped, {s['skipped']} skipped, {s['reconnects']} reconnects; threshold "
                f"{s['threshold']:.5g}, min_area {s['min_area']}")
        if lat:
            line += f"; latency p50/p99 {lat['p50_ms']:.1f}/{lat['p99_ms']:.1f} ms"
        if "events" in s:
            line += f"; {s['events']['written']} events in {s['events']['dir']}"
        if s.get("failed"):
            line += f"; FAILED: {s['failed']}"
        lines.append(line)
    return "\n".join(lines)
