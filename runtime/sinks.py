"""The sinks edgeas ships and the one factory that builds them from the stream's options.

Local ones live here: a recording (`--record FILE`), a window (`--show`) and the
ground-truth check (`GroundTruthSink`, made without a flag when the source has labels:
a synth-clip's CLIP.json beside the video, or a CLASS/test/KIND folder); the live page
is runtime/server.py, the events writer runtime/events.py. The contract they keep is
runtime/sink.py's.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edgeas.errors import DependencyError, StreamError
from edgeas.groundtruth import GroundTruth, find_ground_truth
from edgeas.runtime.events import EventLog, EventWriter
from edgeas.runtime.integrations import add_integration_sinks, page_metrics
from edgeas.runtime.sink import FrameResult, Sink, SinkContext

if TYPE_CHECKING:
    from rich.console import Console

    from edgeas.runtime.sources import Source
    from edgeas.runtime.station import StreamOptions

# Codecs that OpenCV's bundled FFmpeg writes in these containers.
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "MJPG", ".mov": "mp4v"}


class Recorder(Sink):
    """Annotated frames to a video file. The file is written under a temporary name and
    renamed on close, so a player never opens a half-written recording; a run that
    failed deletes it instead."""

    name = "recording"

    def __init__(self, path: str | Path, fps: float | None) -> None:
        self.label = str(path)  # as given: the summary names it so
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC:
            raise StreamError(f"--record {self.path}: unknown video type '{suffix}'",
                              hint=f"use one of {', '.join(FOURCC)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{suffix}")
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            h, w = frame.shape[:2]
            self.size = (w, h)
            fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                raise StreamError(f"cannot write the recording {self.path}",
                                  hint="check the folder is writable; .mp4 and .avi work with "
                                  "OpenCV's FFmpeg")
        if (frame.shape[1], frame.shape[0]) != self.size:
            # a video has one size: frames of another size are scaled to the first one's
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(frame)
        self.frames += 1

    @property
    def needs_render(self) -> bool:
        return True  # every frame is recorded

    def on_frame(self, result: FrameResult) -> None:
        if result.rendered is not None:
            self.write(result.rendered)

    def close(self, error: BaseException | None = None) -> None:
        """Rename the recording into place, or delete it when the run failed (`error`)."""
        if error is not None:
            self.abort()
            return
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def summary(self) -> dict[str, Any]:
        return {"recording": {"path": self.label, "frames": self.frames}}


def gui_available() -> bool:
    """True when this OpenCV was built with a GUI backend (opencv-python-headless has none)."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(match) and match.group(1).upper() not in ("NONE", "NO")


class Window(Sink):
    """cv2.imshow where OpenCV has a GUI; `q` or Esc in the window asks the loop to stop.
    The checks run when it is made (before the stream starts); the window itself opens
    on the post thread, which makes every GUI call (OpenCV wants them on one thread)."""

    name = "window"

    def __init__(self, title: str = "edgeas") -> None:
        if not gui_available():
            raise DependencyError(
                "--show needs an OpenCV with a GUI, and this one has none "
                "(opencv-python-headless)",
                hint="use --serve 127.0.0.1:8080 for a browser view, or install opencv-python "
                "(on Jetson: the system OpenCV)",
            )
        if os.name == "posix" and not (os.environ.get("DISPLAY") or
                                       os.environ.get("WAYLAND_DISPLAY")):
            raise DependencyError("--show needs a display, and DISPLAY is not set",
                                  hint="use --serve for a headless station")
        self.title = title
        self.opened = False

    @property
    def needs_render(self) -> bool:
        return True  # every frame is shown

    def open(self, context: SinkContext) -> None:
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        self.opened = True

    def show(self, frame: np.ndarray) -> bool:
        """Display the frame; False when the operator asked to quit."""
        cv2.imshow(self.title, frame)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def on_frame(self, result: FrameResult) -> bool:
        return self.show(result.rendered) if result.rendered is not None else True

    def close(self, error: BaseException | None = None) -> None:
        if self.opened:
            self.opened = False
            with contextlib.suppress(cv2.error):
                cv2.destroyWindow(self.title)


class GroundTruthSink(Sink):
    """Counts the stream's calls against ground truth: NG on a defective frame is a true
    positive, NG on a clean one a false alarm. Frames without a label (past the end of a
    clip's list) are counted apart. Adds `decisions` to the summary."""

    name = "decisions"

    def __init__(self, truth: GroundTruth) -> None:
        self.truth = truth
        self.tp = self.fp = self.tn = self.fn = self.unlabelled = 0

    def on_frame(self, result: FrameResult) -> None:
        label = self.truth.label(result.index, result.source)
        ng = int(bool(result.is_ng))  # plain ints: the summary is written as JSON
        if label is None:
            self.unlabelled += 1
        elif label:
            self.tp += ng
            self.fn += 1 - ng
        else:
            self.fp += ng
            self.tn += 1 - ng

    def summary(self) -> dict[str, Any]:
        defective, clean = self.tp + self.fn, self.fp + self.tn
        return {"decisions": {
            "truth": self.truth.origin, "by": self.truth.by,
            "tp": self.tp, "fn": self.fn, "fp": self.fp, "tn": self.tn,
            "unlabelled": self.unlabelled, "defective": defective, "clean": clean,
            # None, not NaN, where undefined: the summary is also written as JSON
            "recall": self.tp / defective if defective else None,
            "false_ng": self.fp / clean if clean else None,
        }}


def describe_decisions(d: dict[str, Any], skipped: int = 0) -> str:
    """One line of the summary: the calls against the ground truth."""
    def part(ng: int, n: int, what: str) -> str:
        return f"{ng}/{n} {what} NG" + (f" ({100 * ng / n:.1f}%)" if n else "")

    line = (f"decisions vs {d['truth']}: {part(d['tp'], d['defective'], 'defective')}, "
            f"{part(d['fp'], d['clean'], 'clean')}")
    if d["unlabelled"]:
        line += f"; {d['unlabelled']} frames without a label"
    if skipped and d["by"] == "frame index":
        # a skipped frame shifts every later frame's index against the clip's list
        line += f"; {skipped} frames skipped, so later frames may be matched to wrong labels"
    return line


def add_live_page(serve: str, sinks: list[Sink], console: Console | None = None) -> None:
    """The live page at `serve`, with /metrics (those of --metrics when asked for),
    appended to `sinks` (the station's other sinks, made before it)."""
    from edgeas.runtime.server import LiveServer, parse_address

    server = LiveServer(*parse_address(serve))
    sinks.append(server)
    server.metrics = page_metrics(sinks)
    if server.metrics is not None and server.metrics not in sinks:
        sinks.append(server.metrics)
    if console is not None:
        console.print(f"live view: {server.url}")


def build_sinks(options: StreamOptions, source: Source,
                console: Console | None = None) -> list[Sink]:
    """The sinks the options ask for (station file or flags), in the order they are fed:
    events, MQTT/webhook/--on-ng/metrics (runtime/integrations.py), recording, window,
    live page, and the ground-truth check when the source
    has labels (`edgeas.groundtruth`). Each is checked as it is made (a bad video
    type, an unwritable events folder, no GUI, a port in use), before the stream starts;
    when one fails, the ones already made are closed. The caller hands them to a
    Pipeline, which closes them when it runs (or closes them itself if it never does)."""
    sinks: list[Sink] = []
    try:
        if options.events_dir is not None:
            log = EventLog(options.events_dir, options.events_budget_mb, source.spec.uri)
            sinks.append(EventWriter(log))
        add_integration_sinks(options, sinks, console)
        if options.record is not None:
            sinks.append(Recorder(options.record, source.fps))
        if options.show:
            sinks.append(Window())
        if options.serve is not None:
            add_live_page(options.serve, sinks, console)
        truth = find_ground_truth(source.spec.kind, source.spec.target)
        if truth is not None:
            sinks.append(GroundTruthSink(truth))
            if console is not None:
                console.print(f"ground truth: {truth.origin} (decisions are counted against "
                              "it)")
    except BaseException as exc:
        for sink in reversed(sinks):
            with contextlib.suppress(Exception):
                sink.close(exc)
        raise
    return sinks
