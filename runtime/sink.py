"""The outputs of a stream: what every sink receives and the contract it keeps.

A sink (the live page, the window, the recording, the events writer, MQTT, a webhook,
the --on-ng command, the metrics) is called by the pipeline's post thread only, in this order:

    open(context)       once, before the first frame (a SinkContext: the run's sources,
                        model, threshold, what the station is set to, the board of
                        recently written events and the folders they go to)
    on_frame(result)    every processed frame (a FrameResult); returning False asks the
                        pipeline to stop (the window's `q`); None or True carry on
    on_event(result)    right after on_frame, for an NG frame only
    close(error)        once, always, even when the run failed (or another sink's open
                        did, so close must work on a sink that was never opened):
                        `error` is what ended the run (None when it ended well), so that
                        a sink can keep or discard what it wrote (the recording is
                        renamed into place or deleted)
    summary()           after close: what the sink adds to the run's summary

A running pipeline owns the sinks it was given and closes them; sinks made for a
pipeline that never runs are closed by whoever made them.

Bounded time per call: the post thread runs every sink in turn, so whatever a call
takes is taken from every frame. A call returns within a few milliseconds
(SINK_BUDGET_S); a sink whose work may block (disk, network) hands it to its own
bounded queue and thread, as the events writer does. The one wait allowed is
back-pressure: a sink that must not lose anything (events) may block while its queue
is full. The pipeline times each sink (stage `sink:NAME`, on_frame and on_event
together) and warns once per sink that goes over the budget.

Rendering: the overlay is drawn at most once per frame, and only when the pipeline
was asked to render (benchmarks) or some sink's `needs_render` is true; that property
is read every frame before rendering, so a sink can want frames only some of the time
(the live page: while someone watches, or when its idle refresh is due).
`result.rendered` is None when nobody needed it. A sink that shows the overlay small
says so with `render_width` (the live page: at most 1280 px wide): when every sink that
wants the overlay has such a bound, it is drawn on the frame scaled down to the widest
of them, so a 4K camera costs a 4K overlay only for a recording or a window.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeas.runtime.stats import StageStats

log = logging.getLogger("edgeas.stream")
SINK_BUDGET_S = 0.05  # a sink call longer than this is worth a warning: it slows every frame
RECENT_EVENTS = 10  # written events the live page lists


@dataclass(frozen=True)
class FrameResult:
    """One processed frame: the decision, what it was made from, and its overlay."""

    index: int  # frame number in the stream, from 0
    source: str  # where the frame came from (the image file of a folder source)
    frame: np.ndarray  # BGR, as captured
    amap: np.ndarray  # anomaly map at the model's input size (decisions are made there)
    mask: np.ndarray  # 0/1 mask after min-area cleaning, model size (render.mask_to_frame)
    is_ng: bool
    score: float
    threshold: float
    regions: list[list[int]]  # [x, y, w, h] per region kept, in frame pixels
    latency_s: float  # capture to this result (decided and rendered), seconds
    fps: float | None  # rolling rate of the stream
    dropped: int  # frames the source dropped so far
    model: str = ""  # the model's label
    rendered: np.ndarray | None = None  # the overlay, when some sink needed it
    stream: int = 0  # which of the run's sources it came from (index in SinkContext.sources)
    # when the decision was made (ISO 8601 UTC), set on NG frames: every sink that reports
    # the event (file, MQTT, webhook, --on-ng) names it by the same time, hence the same id
    when: str = ""

    def status(self) -> dict[str, Any]:
        """What the live page shows of this frame (and `Pipeline.last` holds)."""
        return {"frame": self.index, "score": self.score, "verdict": "NG" if self.is_ng else "OK",
                "threshold": self.threshold, "regions": self.regions,
                "latency_ms": self.latency_s * 1e3, "fps": self.fps, "dropped": self.dropped,
                "source": self.source, "model": self.model}


@dataclass(frozen=True)
class SourceInfo:
    """One source of the run as a sink may show it; `condition()` is asked at any time
    (from another thread too): ('live' | 'reconnecting' | 'reading' | 'ended' | 'closed',
    time.time() when that began)."""

    name: str
    uri: str
    kind: str  # v4l2 | csi | rtsp | file | folder
    live: bool
    fps: float | None
    condition: Callable[[], tuple[str, float]] = lambda: ("reading", 0.0)
    reconnects: Callable[[], int] = lambda: 0  # how often a live source came back so far
    # what this source is decided with, where a station sets it per source (None: the
    # station's own, SinkContext.station)
    threshold: float | None = None
    min_area: int | None = None


@dataclass(frozen=True)
class EventStore:
    """A folder of events as the sink that writes it declares it (on open), for the sinks
    that show it: the live page lists its use of the budget and serves event images from
    it (by event id, never by a path). `used_bytes()` may be asked from another thread."""

    folder: Path
    budget_bytes: int
    used_bytes: Callable[[], int]


@dataclass(frozen=True)
class QueueInfo:
    """An on-disk delivery queue (MQTT, webhook) as its sink declares it on open, for the
    sinks that report it (metrics); the callables may be asked from another thread."""

    sink: str
    folder: Path
    budget_bytes: int
    depth: Callable[[], int]
    used_bytes: Callable[[], int]
    delivered: Callable[[], int] = lambda: 0


@dataclass(frozen=True)
class SinkContext:
    """What a sink may want to know about the run before its first frame."""

    source: str  # the source's URI
    live: bool  # a camera or network stream (frames may be dropped), not a file or folder
    fps: float | None  # the source's nominal rate, when it has one
    model: str
    threshold: float
    # events written so far, newest first: a sink that writes events adds its records,
    # one that shows them (the live page) reads them
    recent_events: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    # what the station is set to, for display (Pipeline.station(): model, precision,
    # backend, device, threshold and its policy, min_area, aggregation)
    station: Mapping[str, Any] = field(default_factory=dict)
    # the run's sources, FrameResult.stream indexes them
    sources: tuple[SourceInfo, ...] = ()
    # filled by the sinks that write events, in their open()
    event_stores: list[EventStore] = field(default_factory=list)
    # filled by the sinks that queue deliveries on disk, in their open()
    queues: list[QueueInfo] = field(default_factory=list)
    # the pipeline's stage timings (a metrics sink observes them); None outside a pipeline
    stats: StageStats | None = None


class Sink:
    """One output of the stream. Every method has a do-nothing default: a sink overrides
    what it uses. `name` labels its stage in the stats and must be unique per run."""

    name = "sink"

    @property
    def needs_render(self) -> bool:
        """True when the next frame's overlay is wanted (read every frame)."""
        return False

    # The widest overlay this sink uses, in pixels; None: the frame's own size.
    render_width: int | None = None

    def open(self, context: SinkContext) -> None:  # noqa: B027 - optional hook
        pass

    def on_frame(self, result: FrameResult) -> bool | None:
        return None

    def on_event(self, result: FrameResult) -> None:  # noqa: B027 - optional hook
        pass

    def close(self, error: BaseException | None = None) -> None:  # noqa: B027
        pass

    def summary(self) -> dict[str, Any]:
        return {}


class Fanout:
    """The sinks of one run, opened, fed and closed together, each call timed."""

    def __init__(self, sinks: Sequence[Sink], stats: StageStats) -> None:
        self.sinks = list(sinks)
        self.stats = stats
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        self.stages = [f"sink:{n}" for n in names]
        for stage in self.stages:
            stats.track(stage)
        self._closed = False
        self._slow: set[str] = set()

    @property
    def needs_render(self) -> bool:
        return self.render_request()[0]

    def render_request(self) -> tuple[bool, int | None]:
        """(whether the next frame's overlay is wanted, the widest width any sink that
        wants it uses; None: the frame's own size)."""
        # every sink is asked (no short cut): a sink may keep time in needs_render
        wanting = [s for s in self.sinks if s.needs_render]
        if not wanting or any(s.render_width is None for s in wanting):
            return bool(wanting), None
        return True, max(int(s.render_width) for s in wanting)

    def open(self, context: SinkContext) -> None:
        """Open in order; when one fails, every sink is closed with its error."""
        for sink in self.sinks:
            try:
                sink.open(context)
            except BaseException as exc:
                self.close(exc)
                raise

    def frame(self, result: FrameResult) -> bool:
        """Every sink gets the frame (and the event, when NG); False when one asks to stop."""
        keep = True
        for sink, stage in zip(self.sinks, self.stages):
            t0 = time.perf_counter()
            if sink.on_frame(result) is False:
                keep = False
            if result.is_ng:
                sink.on_event(result)
            spent = time.perf_counter() - t0
            self.stats.add(stage, spent)
            if spent > SINK_BUDGET_S and sink.name not in self._slow:
                self._slow.add(sink.name)
                log.warning("the %s sink took %.0f ms on frame %d (budget %.0f ms): it slows "
                            "every frame", sink.name, spent * 1e3, result.index,
                            SINK_BUDGET_S * 1e3)
        return keep

    def close(self, error: BaseException | None = None) -> None:
        """Close every sink once, last first, even when one of them fails; a failure of
        close is raised only when the run itself had none (the run's error comes first)."""
        if self._closed:
            return
        self._closed = True
        failed: BaseException | None = None
        for sink in reversed(self.sinks):
            try:
                sink.close(error)
            except Exception as exc:
                log.error("closing the %s sink failed: %s", sink.name, exc)
                failed = failed or exc
        if failed is not None and error is None:
            raise failed

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sink in self.sinks:
            out.update(sink.summary())
        return out


__all__ = ["SINK_BUDGET_S", "EventStore", "Fanout", "FrameResult", "QueueInfo", "Sink",
           "SinkContext", "SourceInfo"]
