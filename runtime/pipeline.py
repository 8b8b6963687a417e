"""The inspection loop: capture -> preprocess -> infer -> aggregate -> decide -> render -> sinks.

Three threads overlap the stages so that inference (which releases the GIL in ONNX
Runtime and TensorRT) is rarely idle:

    reader:  source.read + preprocessing into a batch        -> queue (2 batches)
    infer:   backend.infer                                    -> queue (2 batches)
    post:    aggregation at frame size, min-area, decision, render, sinks

Queues are short so that a live camera never builds a backlog (its capture thread
already keeps only the newest frame). A stop request (SIGINT/SIGTERM, `--max-frames`,
the end of a file) stops the reader; the frames already read still flow through, so
every event is written and the recording is closed properly.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeas.aggregate import MODES, aggregate, clean_and_decide, image_score
from edgeas.errors import ConfigError, DependencyError, EdgeasError, StreamError
from edgeas.runtime.backends import Backend
from edgeas.runtime.events import EventWriter
from edgeas.runtime.preprocess import Preprocessor
from edgeas.runtime.render import render
from edgeas.runtime.sources import Source
from edgeas.runtime.stats import RollingRate, StageStats, format_stages

log = logging.getLogger("edgeas.stream")
_END = object()
PUBLISH_IDLE_S = 1.0  # refresh the server's frame this often even when nobody watches


@dataclass(frozen=True)
class Settings:
    threshold: float
    threshold_origin: str
    min_area: int
    mode: str
    blur: list[tuple[int, float]] | None = None


def resolve_settings(meta: dict[str, Any], threshold: float | None = None,
                     min_area: int | None = None, mode: str | None = None,
                     model: str = "the model") -> Settings:
    """Threshold, min_area and aggregation mode: explicit values over the metadata's."""
    rec = meta.get("threshold") or {}
    agg = meta.get("aggregation") or {}
    if threshold is not None:
        tau, origin = float(threshold), "override"
    elif rec.get("value") is not None:
        tau, origin = float(rec["value"]), f"metadata ({rec.get('policy')}, {rec.get('mode')})"
    else:
        raise ConfigError(
            f"{model} has no fitted threshold (its metadata threshold.value is null)",
            hint="pass --threshold T (or `threshold:` in the station file), or train with "
            "held-out normal images so that one is fitted",
        )
    mode = mode or agg.get("mode") or "fused"
    if mode not in MODES:
        raise ConfigError(f"aggregation mode '{mode}' is not one of {', '.join(MODES)}")
    fitted = rec.get("mode")
    if origin != "override" and fitted and fitted != mode:
        log.warning("the threshold was fitted on %s maps but the stream aggregates in %s mode; "
                    "decisions will shift (refit, or pass --threshold)", fitted, mode)
    area = int(min_area if min_area is not None else meta.get("min_area") or 0)
    if area < 0:
        raise ConfigError(f"min_area must be >= 0, got {area}")
    blur = [(int(k), float(s)) for k, s in agg["blur"]] if agg.get("blur") else None
    return Settings(tau, origin, area, mode, blur)


@dataclass
class _Batch:
    data: np.ndarray
    frames: list[np.ndarray] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    started: list[float] = field(default_factory=list)


@dataclass
class Sinks:
    server: Any = None  # LiveServer
    recorder: Any = None  # Recorder
    window: bool = False
    events: EventWriter | None = None
    render: bool = False  # render even without a sink that shows frames (benchmarks)


class Pipeline:
    def __init__(self, backend: Backend, source: Source, settings: Settings, sinks: Sinks,
                 max_frames: int | None = None, batch: int = 1, model_label: str = "") -> None:
        if batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {batch}")
        if backend.batch is not None and batch > backend.batch:
            raise ConfigError(f"--batch {batch}: the model takes batches of {backend.batch}",
                              hint="export with --dynamic-batch for larger batches")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"--max-frames must be >= 1, got {max_frames}")
        self.backend, self.source, self.settings, self.sinks = backend, source, settings, sinks
        self.max_frames, self.batch, self.model_label = max_frames, batch, model_label
        self.pre = Preprocessor(backend.recipe)
        self.stats = StageStats()
        self.rate = RollingRate()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.ng = self.skipped = 0
        self.last: dict[str, Any] = {}
        self._gpu_agg = self._gpu_aggregator()
        self._published = 0.0

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
                maps = self.backend.infer(item.data)
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
        window = None
        try:
            if self.sinks.window:
                from edgeas.runtime.sinks import Window

                window = Window()
            while (got := inp.get()) is not _END:
                if self.errors:
                    continue
                item, maps = got
                for j, frame in enumerate(item.frames):
                    keep = self._one(frame, [m[j] for m in maps], item, j, window)
                    if not keep:
                        self.stop.set()
        except BaseException as exc:
            self.errors.append(exc)
            while inp.get() is not _END:
                pass
        finally:
            if window is not None:
                window.close()

    def _one(self, frame: np.ndarray, maps: list[np.ndarray], item: _Batch, j: int,
             window: Any) -> bool:
        s = self.settings
        t0 = time.perf_counter()
        out_hw = frame.shape[:2]
        if self._gpu_agg is not None:
            amap, mask = self._gpu_agg(maps, out_hw, s.threshold)
        else:
            amap, mask = aggregate(maps, out_hw, s.threshold, s.mode, s.blur)
        score = image_score(amap)
        mask, is_ng, regions = clean_and_decide(mask, s.min_area)
        t1 = time.perf_counter()
        self.stats.add("aggregate", t1 - t0)
        sinks, server = self.sinks, self.sinks.server
        fps = self.rate.rate()
        status = f"{fps:.1f} FPS" if fps else ""
        publish = server is not None and (server.viewers > 0 or t1 - self._published
                                          > PUBLISH_IDLE_S)
        shown = None
        if publish or sinks.render or sinks.recorder is not None or window is not None:
            shown = render(frame, amap, mask, regions, is_ng, score, s.threshold, status)
        t2 = time.perf_counter()
        if shown is not None:
            self.stats.add("render", t2 - t1)
        if is_ng:
            self.ng += 1
            if sinks.events is not None:
                sinks.events.submit(item.indices[j], frame, mask, score, s.threshold, regions,
                                    item.labels[j])
        if sinks.recorder is not None:
            sinks.recorder.write(shown)
        keep = window.show(shown) if window is not None else True
        done = time.perf_counter()
        latency = done - item.started[j]
        self.stats.add("sinks", done - t2)
        self.stats.add("latency", latency)
        self.stats.done(done)
        self.rate.tick(done)
        self.last = {"frame": item.indices[j], "score": score, "verdict": "NG" if is_ng else "OK",
                     "threshold": s.threshold, "regions": regions, "latency_ms": latency * 1e3,
                     "fps": self.rate.rate(), "dropped": self.source.dropped,
                     "source": item.labels[j], "model": self.model_label}
        if server is not None:
            events = list(sinks.events.recent) if sinks.events is not None else []
            server.publish(shown if publish else None, dict(self.last, events=events))
            if publish:
                self._published = t1
        return keep

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        """Stream until the source ends, max_frames, or stop; returns the summary."""
        # one batch in each queue for a live source (its latency), two for files (throughput)
        depth = 1 if self.source.live else 2
        q_in: queue.Queue = queue.Queue(maxsize=depth)
        q_out: queue.Queue = queue.Queue(maxsize=depth)
        threads = [threading.Thread(target=self._reader, args=(q_in,), name="edgeas-reader"),
                   threading.Thread(target=self._infer, args=(q_in, q_out), name="edgeas-infer"),
                   threading.Thread(target=self._post, args=(q_out,), name="edgeas-post")]
        start = time.perf_counter()
        with _stop_on_signals(self.stop):
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(timeout=0.2)  # short joins keep the main thread responsive to signals
        if self.errors:
            raise self.errors[0]
        return self.summary(time.perf_counter() - start)

    def summary(self, wall: float) -> dict[str, Any]:
        src = self.source
        return {
            "frames": self.stats.frames,
            "ng_frames": self.ng,
            "dropped": src.dropped,
            "skipped": self.skipped + src.skipped,
            "reconnects": src.reconnects,
            "fps": self.stats.fps(),
            "wall_s": wall,
            "stages": self.stats.table(),
            "source": src.spec.uri,
            "threshold": self.settings.threshold,
            "threshold_origin": self.settings.threshold_origin,
            "min_area": self.settings.min_area,
            "aggregation": self.settings.mode + (" (gpu)" if self._gpu_agg else ""),
            "backend": self.backend.describe(),
            "stopped": self.stop.is_set(),
        }


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
    if summary.get("stopped"):
        lines.append("stopped on request")
    return "\n".join(lines)


__all__ = ["Pipeline", "Settings", "Sinks", "StreamError", "describe_summary",
           "resolve_settings"]
