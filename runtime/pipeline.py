"""The inspection loop: capture -> preprocess -> infer -> aggregate -> decide -> render -> sinks.

Three threads overlap the stages so that inference (which releases the GIL in ONNX
Runtime and TensorRT) is rarely idle:

    reader:  source.read + preprocessing into a batch        -> queue (2 batches)
    infer:   backend.infer                                    -> queue (2 batches)
    post:    aggregation at model size, min-area, decision, render, fan-out to the sinks

Decisions are made at the model's input resolution whatever the camera delivers, so that
the threshold and `min_area` (model pixels) mean what they meant when the threshold was
fitted and in `edgeas eval`; the region boxes are then scaled to frame pixels
(runtime/render.py holds the one pixel mapping), and the overlay upsamples the map.

Queues are short so that a live camera never builds a backlog (its capture thread
already keeps only the newest frame). A stop request (SIGINT/SIGTERM, `--max-frames`,
the end of a file, a sink asking) stops the reader; the frames already read still flow
through, so every event is written and the recording is closed properly.

The post stage only decides and fans out: the outputs are `Sink`s (runtime/sink.py),
opened, fed and closed on the post thread, each timed into the stage stats; the
overlay is rendered once, and only when asked (`render=True`) or a sink needs it.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeas.aggregate import aggregate, clean_and_decide, image_score
from edgeas.decision_head import describe as describe_head
from edgeas.decision_head import head_map
from edgeas.errors import ConfigError, DependencyError, EdgeasError, StreamError
from edgeas.postprocess import Settings, smoothing_name
from edgeas.runtime.backends import Backend, NoAnswer
from edgeas.runtime.events import utc_now
from edgeas.runtime.preprocess import Preprocessor
from edgeas.runtime.render import boxes_to_frame, render
from edgeas.runtime.sink import Fanout, FrameResult, Sink, SinkContext, SourceInfo
from edgeas.runtime.sources import Source, redact
from edgeas.runtime.stats import RollingRate, StageStats, format_stages

log = logging.getLogger("edgeas.stream")
_END = object()


@dataclass
class _Batch:
    data: np.ndarray
    frames: list[np.ndarray] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    streams: list[int] = field(default_factory=list)  # which lane each frame came from


@dataclass
class Lane:
    """One source of a run, decided with its own settings and counted apart (several:
    runtime/multi_source.py; a one-source run is one lane)."""

    source: Source
    settings: Settings
    name: str = ""
    rate: RollingRate = field(default_factory=RollingRate)
    frames: int = 0  # read from the source (the lane's frame index of the next one)
    ng: int = 0
    skipped: int = 0
    unanswered: int = 0
    failed: str | None = None  # why the source was given up, when it was


class Pipeline:
    """`sinks`: the outputs, fed in this order (runtime/sinks.py build_sinks makes them);
    `render`: draw the overlay of every frame even when no sink needs it (benchmarks)."""

    def __init__(self, backend: Backend, source: Source, settings: Settings,
                 sinks: Sequence[Sink] = (), max_frames: int | None = None, batch: int = 1,
                 model_label: str = "", render: bool = False) -> None:
        if batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {batch}")
        if backend.batch is not None and batch > backend.batch:
            raise ConfigError(f"--batch {batch}: the model takes batches of {backend.batch}",
                              hint="export with --dynamic-batch for larger batches")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"--max-frames must be >= 1, got {max_frames}")
        self.backend, self.source, self.settings = backend, source, settings
        self.max_frames, self.batch, self.model_label = max_frames, batch, model_label
        self.render = render
        self.pre = Preprocessor(backend.recipe)
        self.stats = StageStats()
        self.sinks = Fanout(sinks, self.stats)
        self.lanes = [Lane(source, settings)]
        self.rate = self.lanes[0].rate  # the run's rate (one lane: that lane's)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.ng = self.skipped = self.unanswered = 0
        self.last: dict[str, Any] = {}
        self._gpu_agg = self._gpu_aggregator()

    def _gpu_aggregator(self):
        if self.settings.mode != "fused" or not hasattr(self.backend, "gpu_aggregator"):
            return None
        try:
            return self.backend.gpu_aggregator()
        except DependencyError as exc:
            log.warning("fused aggregation stays on the CPU: %s", exc.message)
            return None

    # ------------------------------------------------------------------ threads

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self.errors:
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _reader(self, out: queue.Queue) -> None:
        h, w = self.pre.input_hw
        count = 0
        try:
            while not self.stop.is_set() and not (self.max_frames and count >= self.max_frames):
                want = self.batch if not self.max_frames else min(self.batch,
                                                                    self.max_frames - count)
                item = _Batch(np.empty((want, 3, h, w), np.float32))
                while len(item.frames) < want and not self.stop.is_set():
                    t0 = time.perf_counter()
                    frame = self.source.read(timeout=0.5)
                    t1 = time.perf_counter()
                    if frame is None:
                        if self.source.ended:
                            break
                        continue  # a live source had no new frame yet
                    try:
                        self.pre.into(frame, item.data[len(item.frames)])
                    except EdgeasError as exc:
                        self.skipped += 1
                        log.warning("frame %d skipped: %s", count, exc.message)
                        continue
                    self.stats.add("capture", t1 - t0)
                    self.stats.add("preprocess", time.perf_counter() - t1)
                    self.stats.started(t0)
                    item.frames.append(frame)
                    item.indices.append(count)
                    item.labels.append(self._label())
                    item.started.append(t0)
                    item.streams.append(0)
                    count += 1
                if item.frames:
                    item.data = item.data[: len(item.frames)]
                    if not self._put(out, item):
                        return
                if self.source.ended:
                    break
        except BaseException as exc:  # reported by run(); the other threads drain and stop
            self.errors.append(exc)
        finally:
            self._put(out, _END) or out.put(_END)

    def _label(self) -> str:
        current = getattr(self.source, "current", None)
        return str(current) if current is not None else self.source.spec.uri

    def _infer(self, inp: queue.Queue, out: queue.Queue) -> None:
        try:
            while (item := inp.get()) is not _END:
                if self.errors:
                    continue  # drain so that the reader is never blocked
                t0 = time.perf_counter()
                try:
                    maps = self.backend.infer(item.data)
                except NoAnswer as exc:
                    # a remote model's server is away: these frames get no decision, the
                    # stream goes on (the summary counts them)
                    self.unanswered += len(item.frames)
                    for k in item.streams:
                        self.lanes[k].unanswered += 1
                    log.warning("frames %d-%d got no answer: %s", item.indices[0],
                                item.indices[-1], exc.message)
                    continue
                per_frame = (time.perf_counter() - t0) / len(item.frames)
                for _ in item.frames:
                    self.stats.add("infer", per_frame)
                self._put(out, (item, maps))
        except BaseException as exc:
            self.errors.append(exc)
            while inp.get() is not _END:
                pass
        finally:
            out.put(_END)

    def _post(self, inp: queue.Queue) -> None:
        try:
            self.sinks.open(self._context())
            while (got := inp.get()) is not _END:
                if self.errors:
                    continue
                item, maps = got
                for j, frame in enumerate(item.frames):
                    keep = self._one(frame, [m[j] for m in maps], item, j)
                    if not keep:
                        self.stop.set()
        except BaseException as exc:
            self.errors.append(exc)
            while inp.get() is not _END:
                pass
        finally:
            try:  # every sink, once (after a failed open too: that closed them already)
                self.sinks.close(self.errors[0] if self.errors else None)
            except BaseException as exc:
                self.errors.append(exc)

    def _context(self) -> SinkContext:
        src = self.source
        return SinkContext(src.spec.uri, src.live, src.fps, self.model_label,
                           self.settings.threshold, station=self.station(),
                           sources=(source_info(src),), stats=self.stats)

    def _one(self, frame: np.ndarray, maps: list[np.ndarray], item: _Batch, j: int) -> bool:
        stream = item.streams[j]
        lane = self.lanes[stream]
        s = lane.settings
        t0 = time.perf_counter()
        model_hw = self.pre.input_hw
        grid = None
        if s.head_sigma is not None:  # the last output is the decision head's
            maps, grid = maps[:-1], maps[-1]
        # with a head the threshold is in the head's units: the UniAS map gets no mask
        tau = s.threshold if grid is None else None
        if self._gpu_agg is not None:
            amap, mask = self._gpu_agg(maps, model_hw, tau, s.smoothing, s.levels)
        else:
            amap, mask = aggregate(maps, model_hw, tau, s.mode, s.smoothing, s.levels)
        if grid is None:
            score = image_score(amap)
        else:  # decided on the head's map; UniAS's map stays the heat map
            decision = head_map(grid, model_hw, s.head_sigma)
            score = image_score(decision)
            mask = (decision >= np.float32(s.threshold)).view(np.uint8)
        mask, is_ng, model_regions = clean_and_decide(mask, s.min_area)
        regions = boxes_to_frame(model_regions, model_hw, frame.shape[:2])
        t1 = time.perf_counter()
        self.stats.add("aggregate", t1 - t0)
        fps = lane.rate.rate()
        shown = None
        wanted, width = self.sinks.render_request()
        if self.render or wanted:
            # drawn on the frame scaled to the widest width the sinks use (the live page
            # alone: <= 1280 px), at the frame's own size for a recording or a window
            canvas, boxes = frame, regions
            if width is not None and not self.render and frame.shape[1] > width:
                # bilinear: INTER_AREA costs 4x as much at 1920 -> 1280 (8.5 vs 2 ms
                # here) for a preview whose heat overlay hides the difference
                canvas = cv2.resize(frame, (width, max(1, round(frame.shape[0] * width
                                                               / frame.shape[1]))),
                                    interpolation=cv2.INTER_LINEAR)
                boxes = boxes_to_frame(model_regions, model_hw, canvas.shape[:2])
            shown = render(canvas, amap, mask, boxes, is_ng, score, s.threshold,
                           f"{fps:.1f} FPS" if fps else "", s.heat_scale)
        t2 = time.perf_counter()
        if shown is not None:
            self.stats.add("render", t2 - t1)
        if is_ng:
            self.ng += 1
            lane.ng += 1
        result = FrameResult(item.indices[j], item.labels[j], frame, amap, mask, is_ng, score,
                             s.threshold, regions, t2 - item.started[j], fps,
                             lane.source.dropped, self.model_label, shown, stream,
                             when=utc_now() if is_ng else "")
        keep = self.sinks.frame(result)
        done = time.perf_counter()
        latency = done - item.started[j]
        self.stats.add("sinks", done - t2)
        self.stats.add("latency", latency)
        self.stats.done(done)
        lane.rate.tick(done)
        if lane.rate is not self.rate:
            self.rate.tick(done)
        # the status after the sinks: end-to-end latency and the rate with this frame in it
        self.last = dict(result.status(), latency_ms=latency * 1e3, fps=lane.rate.rate())
        return keep

    def station(self) -> dict[str, Any]:
        """What the station is set to, for the operator (the live page's settings)."""
        s, desc = self.settings, self.backend.describe()
        record = getattr(self.backend, "record", None)  # stand-in backends of tests have none
        fitted = record.threshold if record is not None else None
        names = record.model.level_names if record is not None else ()
        levels = [names[i] for i in s.levels] if s.levels is not None and names else "all"
        return {
            "model": self.model_label, "preset": desc.get("preset"),
            "precision": desc.get("precision"), "backend": desc.get("backend"),
            "device": desc.get("device"), "input_size": desc.get("input_size"),
            "threshold": {"value": s.threshold, "origin": s.threshold_origin,
                          "overridden": s.threshold_origin == "override",
                          "policy": fitted.policy if fitted else None,
                          "param": fitted.param if fitted else None,
                          "fitted": fitted.value if fitted else None},
            "min_area": s.min_area,
            "decision": describe_head(record.model.head if record is not None else None),
            "aggregation": {"mode": s.mode + (" (gpu)" if self._gpu_agg else ""),
                            "smoothing": smoothing_name(s.smoothing), "levels": levels},
        }

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        """Stream until the source ends, max_frames, or stop; returns the summary."""
        # one batch in each queue for a live source (its latency), two for files (throughput)
        depth = 1 if any(lane.source.live for lane in self.lanes) else 2
        q_in: queue.Queue = queue.Queue(maxsize=depth)
        q_out: queue.Queue = queue.Queue(maxsize=depth)
        threads = [threading.Thread(target=self._reader, args=(q_in,), name="edgeas-reader"),
                   threading.Thread(target=self._infer, args=(q_in, q_out), name="edgeas-infer"),
                   threading.Thread(target=self._post, args=(q_out,), name="edgeas-post")]
        start = time.perf_counter()
        with _stop_on_signals(self.stop):
            for t in threads:
                t.start()
            try:
                for t in threads:
                    while t.is_alive():
                        t.join(timeout=0.2)  # short joins keep the main thread responsive
            except BaseException as exc:  # a second Ctrl-C: the threads drain, sinks see a failure
                self.errors.append(exc)
                self.stop.set()
                raise
        if self.errors:
            raise self.errors[0]
        return self.summary(time.perf_counter() - start)

    def summary(self, wall: float) -> dict[str, Any]:
        src = self.source
        record = getattr(self.backend, "record", None)  # stand-in backends of tests have none
        return {
            "frames": self.stats.frames,
            "ng_frames": self.ng,
            "dropped": src.dropped,
            "skipped": self.skipped + src.skipped,
            "unanswered": self.unanswered,
            "reconnects": src.reconnects,
            "fps": self.stats.fps(),
            "wall_s": wall,
            "stages": self.stats.table(),
            "source": src.spec.uri,
            "threshold": self.settings.threshold,
            "threshold_origin": self.settings.threshold_origin,
            "min_area": self.settings.min_area,
            "aggregation": self.settings.mode + (" (gpu)" if self._gpu_agg else ""),
            "decision": describe_head(record.model.head if record is not None else None),
            "backend": self.backend.describe(),
            "stopped": self.stop.is_set(),
            **self.sinks.summary(),  # what the sinks add: `recording`, `events`
        }


def source_info(source: Source) -> SourceInfo:
    """How the sinks may show a source: a file or folder by its name, a camera by its URI
    without a password."""
    spec = source.spec
    name = Path(spec.target).name if spec.kind in ("file", "folder") else redact(spec.uri)
    return SourceInfo(name or spec.uri, redact(spec.uri), spec.kind, source.live, source.fps,
                      source.condition, lambda: source.reconnects)


@contextmanager
def _stop_on_signals(stop: threading.Event):
    """SIGINT/SIGTERM set `stop` (only the main thread may install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: the operator insists
        log.warning("%s: finishing the frames in flight, then stopping",
                    signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def describe_summary(summary: dict[str, Any]) -> str:
    fps = summary["fps"]
    lines = [
        f"{summary['frames']} frames ({summary['ng_frames']} NG), {summary['dropped']} dropped, "
        f"{summary['skipped']} skipped, {summary['reconnects']} reconnects; "
        f"{fps:.1f} FPS" if fps else f"{summary['frames']} frames",
        format_stages(summary["stages"]),
    ]
    if summary.get("unanswered"):
        lines.append(f"{summary['unanswered']} frames got no answer from the model's server")
    if summary.get("stopped"):
        lines.append("stopped on request")
    return "\n".join(lines)


__all__ = ["Lane", "Pipeline", "StreamError", "describe_summary"]
