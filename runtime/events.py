"""NG events on disk: `DIR/events.jsonl` plus the frame and its mask as PNG.

The mask PNG has the frame's size (the decision's model-size mask upsampled as the
overlay draws it), and `regions` are in frame pixels: the three line up.

Each event is written in an order that never leaves a line pointing at missing files:
frame PNG, mask PNG (each atomically, via a temporary file and a rename), then one
JSON line appended with a single write and fsync'd. A disk budget bounds the folder:
when it is exceeded the oldest events (files and lines) go first, down to 90 % of the
budget so that the log is not rewritten for every new event.

Encoding a 1080p PNG takes tens of milliseconds, so `EventWriter` does it on its own
thread; its queue blocks when full (back-pressure, never a lost event) and is drained
on close. As a sink of the stream (runtime/sink.py) it writes each NG frame it is given.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import queue
import re
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeas.errors import ConfigError, StreamError
from edgeas.fileio import atomic_write_bytes, atomic_write_text, writable_folder
from edgeas.runtime.render import mask_to_frame
from edgeas.runtime.sink import EventStore, FrameResult, Sink, SinkContext

log = logging.getLogger("edgeas.stream")
LOG_NAME = "events.jsonl"
DEFAULT_BUDGET_MB = 1024.0
_LOW_WATER = 0.9


@dataclass
class _Stored:
    line: str
    files: tuple[str, ...]
    nbytes: int


def event_id(record: dict[str, Any]) -> str:
    """The id of an event: the stem of its frame's file name (`00000042_20250101T...Z`),
    unique in its folder; the live page names events by it."""
    return str(record.get("image", "")).rsplit(".", 1)[0]


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


_SAFE_PREFIX = re.compile(r"(?:[A-Za-z0-9_-][A-Za-z0-9._-]*)?")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def source_prefix(name: str) -> str:
    """How the event files of one source of a several-source station begin (its name in
    file-name characters): the events writer and the messages sent off the box agree."""
    return (_UNSAFE.sub("_", name).strip("._") or "source") + "-"


def event_record(frame_index: int, source: str, score: float, threshold: float,
                 regions: list[list[int]], when: str, prefix: str = "") -> dict[str, Any]:
    """The one event record: a line of events.jsonl, and the body of what MQTT, the webhook
    and --on-ng receive. Its file names are made of the frame number and the time only
    (digits, `T`, `Z`, `_`), so no source name can lead them out of the events folder;
    `prefix` (a station with several sources: the source's name, so that two sources'
    events never share an id) may hold only letters, digits, `.`, `_` and `-`."""
    if not _SAFE_PREFIX.fullmatch(prefix):
        raise ValueError(f"event file prefix {prefix!r} has characters a file name must not")
    stamp = when.replace(":", "").replace("-", "").replace("+0000", "Z")[:22]
    stem = f"{prefix}{int(frame_index):08d}_{stamp}"
    return {"time": when, "frame": int(frame_index), "source": source,
            "score": float(score), "threshold": float(threshold),
            "regions": [[int(v) for v in r] for r in regions],
            "image": f"{stem}.png", "mask": f"{stem}_mask.png"}


class EventLog:
    """Synchronous writer of events into one folder, within `budget_mb`."""

    def __init__(self, directory: str | Path, budget_mb: float = DEFAULT_BUDGET_MB,
                 source: str = "", prefix: str = "") -> None:
        if not budget_mb or budget_mb <= 0:
            raise ConfigError(f"events budget_mb must be > 0, got {budget_mb}")
        self.dir = writable_folder(directory, "events folder", "--events DIR")
        self.path = self.dir / LOG_NAME
        self.budget = int(budget_mb * 1024 * 1024)
        self.source = source
        # starts every file name, so that the events of several sources of one station
        # (same frame number, same millisecond) never share an id on the live page
        self.prefix = prefix
        self.written = self.deleted = self.failed = 0
        self._warned_small = False
        self._events: deque[_Stored] = deque(self._load())
        self._total = sum(e.nbytes for e in self._events) + self._log_size()

    def _log_size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _size(self, name: str) -> int:
        try:
            return (self.dir / name).stat().st_size
        except FileNotFoundError:
            return 0

    def _load(self) -> list[_Stored]:
        """Events of earlier runs, oldest first: they count against the budget too."""
        if not self.path.is_file():
            return []
        stored = []
        for raw in self.path.read_text().splitlines():
            try:
                rec = json.loads(raw)
                files = tuple(str(rec[k]) for k in ("image", "mask") if rec.get(k))
            except (json.JSONDecodeError, TypeError, AttributeError):
                continue  # a damaged line is dropped at the next rewrite
            stored.append(_Stored(raw + "\n", files, sum(self._size(f) for f in files)))
        return stored

    def record(self, frame_index: int, frame: np.ndarray, mask: np.ndarray, score: float,
               threshold: float, regions: list[list[int]], when: str | None = None,
               source: str | None = None) -> dict[str, Any] | None:
        """Write one NG event; returns its JSON object, or None when the disk refused it.
        `source`: where this frame came from (an image file of a folder source), if not
        the log's own source."""
        rec = event_record(frame_index, source or self.source, score, threshold, regions,
                           when or utc_now(), self.prefix)
        # the decision's mask is at model size: saved at the frame's, so that it lines up
        # with the saved frame and the boxes (frame pixels), in render's pixel mapping
        shown = mask_to_frame(np.asarray(mask), frame.shape[:2])
        blobs = [(rec["image"], _png(frame)), (rec["mask"], _png(mask_to_png(shown)))]
        line = json.dumps(rec) + "\n"
        for attempt in range(2):
            try:
                for name, data in blobs:
                    atomic_write_bytes(self.dir / name, data)
                self._append(line)
                break
            except OSError as exc:
                if attempt == 0 and self._events:
                    # a full disk: make room from the oldest events, then try once more
                    self._shrink(self._total // 2)
                    continue
                self.failed += 1
                log.error("event of frame %d not written to %s: %s", frame_index, self.dir,
                          exc.strerror or exc)
                for name, _ in blobs:
                    with contextlib.suppress(OSError):
                        (self.dir / name).unlink()
                return None
        size = sum(len(d) for _, d in blobs)
        self._events.append(_Stored(line, (rec["image"], rec["mask"]), size))
        self._total += size + len(line.encode())
        self.written += 1
        if self._total > self.budget:
            self._shrink(int(self.budget * _LOW_WATER))
        return rec

    def _append(self, line: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one write: a reader sees the whole line or none
            os.fsync(fd)
        finally:
            os.close(fd)

    def _shrink(self, target: int) -> None:
        """Delete the oldest events until the folder holds <= target bytes (keeps the newest)."""
        removed = 0
        while self._total > target and len(self._events) > 1:
            old = self._events.popleft()
            for name in old.files:
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / name).unlink()
            self._total -= old.nbytes + len(old.line.encode())
            removed += 1
        if removed:
            self.deleted += removed
            atomic_write_text(self.path, "".join(e.line for e in self._events))
            self._total = sum(e.nbytes for e in self._events) + self._log_size()
        if self._total > self.budget and not self._warned_small:
            self._warned_small = True
            log.warning("events budget %.2f MB is smaller than one event (%d bytes); keeping "
                        "only the newest", self.budget / 2**20, self._total)

    @property
    def total_bytes(self) -> int:
        return self._total


def mask_to_png(mask: np.ndarray) -> np.ndarray:
    """0/1 mask -> 0/255 image, so that the PNG is visible in any viewer."""
    return (np.asarray(mask) != 0).astype(np.uint8) * 255


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise StreamError(f"cannot encode an image of shape {image.shape} as PNG")
    return buf.tobytes()


class EventWriter(Sink):
    """EventLog on a background thread. `submit` blocks when the queue is full."""

    name = "events"

    def __init__(self, events: EventLog, maxsize: int = 64) -> None:
        self.events = events
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.recent: deque[dict[str, Any]] = deque(maxlen=10)
        self._board: deque[dict[str, Any]] | None = None  # the run's, for the live page
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edgeas-events", daemon=True)
        self._thread.start()

    def open(self, context: SinkContext) -> None:
        self._board = context.recent_events
        ev = self.events
        context.event_stores.append(EventStore(ev.dir, ev.budget, lambda: ev.total_bytes))

    def on_event(self, result: FrameResult) -> None:
        self.submit(result.index, result.frame, result.mask, result.score, result.threshold,
                    result.regions, result.source, result.when or None)

    def submit(self, frame_index: int, frame: np.ndarray, mask: np.ndarray, score: float,
               threshold: float, regions: list[list[int]], source: str | None = None,
               when: str | None = None) -> None:
        """`when`: the decision's time (FrameResult.when), so that the file names and the
        id match what the other sinks report; now when not given."""
        self._queue.put((frame_index, frame, mask, score, threshold, regions,
                         when or utc_now(), source))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                rec = self.events.record(*item)
            except Exception:  # one bad event must not stop the writer
                log.exception("event of frame %s failed", item[0])
                self.events.failed += 1
                continue
            if rec is not None:
                self.recent.appendleft(rec)
                if self._board is not None:
                    self._board.appendleft(rec)

    def close(self, error: BaseException | None = None) -> None:
        """Write every queued event, then stop (a failed run's events are written too)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        ev = self.events
        return {"events": {"dir": str(ev.dir), "written": ev.written, "deleted": ev.deleted,
                           "failed": ev.failed, "bytes": ev.total_bytes}}
