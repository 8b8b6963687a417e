"""Sinks that send NG events off the box (MQTT, webhook): the common half.

Every NG event becomes one message, the events.jsonl record (runtime/events.py
`event_record`, the same function the events writer uses) plus `id`, `station` and
`source_name`. `on_event` hands it to the sink's writer thread, which stores it in the
on-disk queue (runtime/outbox.py): the pipeline waits neither on the network nor on a
disk sync (tens of milliseconds on a busy disk), except for back-pressure when
PENDING_MAX messages wait to be written, as the events writer does. Closing writes every
message handed over before anything else, so a SIGTERM loses none; a crash can lose
the few not yet written. One delivery thread per sink sends the
oldest message, and only when the receiver has acknowledged it (an MQTT PUBACK, an HTTP
2xx) deletes it and goes on to the next: messages arrive in the order they were decided,
at least once. A receiver that fails is retried with backoff; the queue waits on disk
meanwhile, across a station restart too.

A message a receiver refuses for good (an HTTP 4xx other than 408/429) would block every
later one if retried: it is moved to `QUEUE/rejected/` and logged instead.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeas.runtime.events import event_id, event_record, source_prefix
from edgeas.runtime.outbox import Outbox
from edgeas.runtime.sink import FrameResult, QueueInfo, Sink, SinkContext
from edgeas.runtime.sources import redact

log = logging.getLogger("edgeas.stream")
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 30.0
DRAIN_S = 5.0  # how long close() keeps delivering before it leaves the rest on disk
PENDING_MAX = 256  # messages handed over but not yet on disk
THUMBNAIL_WIDTH = 160
OK, RETRY, REJECT, WAIT = "ok", "retry", "reject", "wait"


def event_message(result: FrameResult, station: str, source_name: str,
                  files: bool, prefix: str = "") -> dict[str, Any]:
    """What a receiver gets of one NG frame. `files`: an events folder holds the frame and
    mask PNGs under the record's names (else the names would point at nothing)."""
    rec = event_record(result.index, redact(result.source), result.score, result.threshold,
                       result.regions, result.when, prefix)
    msg = {"id": event_id(rec), "station": station, "source_name": source_name, **rec}
    if not files:
        del msg["image"], msg["mask"]
    return msg


def thumbnail(frame: np.ndarray, width: int = THUMBNAIL_WIDTH) -> str:
    """The frame as a small JPEG, base64: a dashboard can show the part without reaching
    the station's disk (a few kB: 160 px wide at quality 70)."""
    h, w = frame.shape[:2]
    if w > width:
        frame = cv2.resize(frame, (width, max(1, round(h * width / w))),
                           interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 70])
    return base64.b64encode(buf.tobytes()).decode() if ok else ""


class QueuedSink(Sink):
    """Queue on disk, deliver on a thread. A subclass implements `deliver(data)` ->
    OK | RETRY (failed: back off) | REJECT (never deliverable) | WAIT (the transport is
    not up yet: try again without counting a failure), and may override `shutdown`."""

    backoff_max_s = BACKOFF_MAX_S

    def __init__(self, outbox: Outbox, station: str, drain_s: float = DRAIN_S) -> None:
        self.outbox, self.station, self.drain_s = outbox, station, drain_s
        self.source_name = ""
        self.source_names: list[str] = []
        self.files = False
        self.queued = self.delivered = self.failures = self.rejected = self.lost = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pending: queue.Queue[bytes | None] = queue.Queue(maxsize=PENDING_MAX)
        self._writer = threading.Thread(target=self._write, name=f"edgeas-{self.name}-disk",
                                        daemon=True)
        self._writer.start()

    # ---------------------------------------------------------------- the sink

    def open(self, context: SinkContext) -> None:
        self.source_names = [s.name for s in context.sources] or [redact(context.source)]
        self.source_name = self.source_names[0]
        self.files = bool(context.event_stores)  # the events writer comes first and declared
        box = self.outbox
        context.queues.append(QueueInfo(self.name, box.dir, box.budget, lambda: box.depth,
                                        lambda: box.bytes, lambda: self.delivered))
        self.start()

    def start(self) -> None:
        """The delivery thread (open() starts it; tests and tools may start it directly)."""
        if self._thread is None:
            if self.outbox.carried:
                log.info("%s: %d message(s) left by an earlier run go first", self.name,
                         self.outbox.carried)
            self._thread = threading.Thread(target=self._run, name=f"edgeas-{self.name}",
                                            daemon=True)
            self._thread.start()

    def message(self, result: FrameResult) -> dict[str, Any]:
        """The message of one NG frame, named by its source; with several sources, under
        the event file names the events writer gave it (runtime/events.py source_prefix)."""
        names = self.source_names
        name = names[result.stream] if result.stream < len(names) else self.source_name
        prefix = source_prefix(name) if len(names) > 1 else ""
        return event_message(result, self.station, name, self.files, prefix)

    def on_event(self, result: FrameResult) -> None:
        self.enqueue(self.message(result))

    def enqueue(self, message: dict[str, Any]) -> None:
        self._pending.put(json.dumps(message, separators=(",", ":")).encode())
        self.queued += 1

    def _write(self) -> None:
        """Messages handed over -> the on-disk queue, in order, in bursts."""
        done = False
        while not done:
            batch = [self._pending.get()]
            while len(batch) < 64:
                try:
                    batch.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                done = True
                batch = batch[: batch.index(None)]
            if batch:
                try:
                    self.outbox.put_many(batch)
                except OSError as exc:  # a full or failing disk: said, and the run goes on
                    self.lost += len(batch)
                    log.error("%s: %d event(s) could not be queued in %s: %s", self.name,
                              len(batch), self.outbox.dir, exc.strerror or exc)

    def close(self, error: BaseException | None = None) -> None:
        """Deliver what is queued for up to `drain_s`, then stop; the rest stays on disk
        for the next run."""
        if self._closed:
            return
        self._closed = True
        self._pending.put(None)
        self._writer.join()  # every message handed over is on disk before anything else
        if self._thread is not None:
            if not self.outbox.wait_empty(self.drain_s):
                log.warning("%s: %d message(s) not delivered yet; they stay queued in %s for "
                            "the next run", self.name, self.outbox.depth, self.outbox.dir)
            self._stop.set()
            self._thread.join(timeout=self.drain_s + 5)
        self.shutdown()

    def summary(self) -> dict[str, Any]:
        box = self.outbox
        return {self.name: {"queued": self.queued, "delivered": self.delivered,
                            "pending": box.depth, "failures": self.failures,
                            "rejected": self.rejected, "dropped": box.dropped,
                            "lost": self.lost,
                            "carried": box.carried, "queue": str(box.dir),
                            **self.describe()}}

    # ---------------------------------------------------------------- subclasses

    def deliver(self, data: bytes) -> str:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Release the transport (after the delivery thread has stopped)."""

    def describe(self) -> dict[str, Any]:
        """What the summary says of the receiver (never a password)."""
        return {}

    # ---------------------------------------------------------------- delivery thread

    def _run(self) -> None:
        backoff = BACKOFF_START_S
        while not self._stop.is_set():
            got = self.outbox.peek(timeout=0.2)
            if got is None:
                continue
            seq, data = got
            try:
                outcome = self.deliver(data)
            except Exception as exc:  # a transport bug must not end delivery for the run
                log.error("%s: delivery failed: %s", self.name, exc)
                outcome = RETRY
            if outcome == OK:
                self.outbox.ack(seq)
                self.delivered += 1
                backoff = BACKOFF_START_S
            elif outcome == REJECT:
                self._reject(seq, data)
            elif outcome == RETRY:
                self.failures += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)

    def _reject(self, seq: int, data: bytes) -> None:
        folder = Path(self.outbox.dir) / "rejected"
        folder.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            (folder / f"{seq:012d}.json").write_bytes(data)
        self.outbox.ack(seq)
        self.rejected += 1


def default_queue_dir() -> Path:
    """Where the queues live unless told: the user's state folder (a station restarted by
    systemd finds its undelivered messages there again)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgeas" / "queue"
