"""A durable, ordered queue of messages on disk: what the MQTT and webhook sinks have yet
to deliver.

One file per message, `SEQ.json` (SEQ zero-padded, so the names sort in order), written
under a temporary name, fsync'd and renamed, then the folder fsync'd: a message that
`put` returned for survives a crash or a power cut, and a half-written one is never
read back (temporary names are ignored and swept at start). A message is deleted only
when its receiver has acknowledged it (`ack`), so delivery is at least once: a crash
between the receiver's acknowledgement and the delete sends it again after restart,
which the receiver recognises by the event id inside it.

A new run opens the same folder and carries on after the highest number it finds, so
messages left by an earlier run go first. The folder is bounded by `budget_bytes`:
when a new message would exceed it, the oldest ones are dropped (counted and logged),
since a receiver that has been gone that long is better served by recent events.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from pathlib import Path

from edgeas.errors import ConfigError
from edgeas.fileio import writable_folder

log = logging.getLogger("edgeas.stream")
_NAME = re.compile(r"(\d{12})\.json")
DEFAULT_QUEUE_MB = 256.0


class Outbox:
    """Thread-safe: the pipeline's post thread puts, one delivery thread peeks and acks."""

    def __init__(self, directory: str | Path, budget_bytes: int) -> None:
        if budget_bytes <= 0:
            raise ConfigError(f"queue budget must be > 0 bytes, got {budget_bytes}")
        self.dir = writable_folder(directory, "queue folder", "--queue-dir DIR")
        self.budget = int(budget_bytes)
        self.cond = threading.Condition()
        self.dropped = 0  # messages deleted undelivered to stay within the budget
        self.added = 0
        self.acked = 0
        self._sizes: dict[int, int] = {}
        for path in self.dir.iterdir():
            m = _NAME.fullmatch(path.name)
            if m:
                self._sizes[int(m.group(1))] = path.stat().st_size
            elif path.name.endswith(".tmp"):  # a write a crash interrupted: never acknowledged
                with contextlib.suppress(OSError):
                    path.unlink()
        self.carried = len(self._sizes)  # left by an earlier run, delivered first
        self._next = max(self._sizes, default=0) + 1
        self._bytes = sum(self._sizes.values())

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:012d}.json"

    def put(self, data: bytes) -> int:
        """Store one message durably; returns its sequence number."""
        return self.put_many([data])[0]

    def put_many(self, messages: list[bytes]) -> list[int]:
        """Store messages durably, in order: each file fsync'd, the folder once for all
        (what a burst of NG frames costs is then one folder sync, not one each)."""
        with self.cond:
            seqs = []
            for data in messages:
                seq = self._next
                self._next += 1
                self._make_room(len(data))
                tmp = self.dir / f".{seq:012d}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self._path(seq))
                self._sizes[seq] = len(data)
                self._bytes += len(data)
                seqs.append(seq)
            _fsync_dir(self.dir)
            self.added += len(seqs)
            self.cond.notify_all()
            return seqs

    def _make_room(self, size: int) -> None:
        dropped = 0
        while self._sizes and self._bytes + size > self.budget:
            oldest = min(self._sizes)
            self._delete(oldest)
            dropped += 1
        if dropped:
            self.dropped += dropped
            log.warning("queue %s is full (budget %.2f MB): dropped the %d oldest undelivered "
                        "message(s)", self.dir, self.budget / 2**20, dropped)

    def _delete(self, seq: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(seq).unlink()
        self._bytes -= self._sizes.pop(seq)

    def peek(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """The oldest message (seq, data), waiting up to `timeout` for one; None if none."""
        with self.cond:
            while True:
                if not self._sizes and not self.cond.wait_for(lambda: bool(self._sizes),
                                                              timeout):
                    return None
                seq = min(self._sizes)
                try:
                    return seq, self._path(seq).read_bytes()
                except FileNotFoundError:  # removed behind our back: forget it, go on
                    log.warning("queue %s: message %d vanished from the disk", self.dir, seq)
                    self._bytes -= self._sizes.pop(seq)
                    self.dropped += 1

    def ack(self, seq: int) -> None:
        """The message was delivered: delete it (a no-op when the budget dropped it)."""
        with self.cond:
            if seq in self._sizes:
                self._delete(seq)
                self.acked += 1
                self.cond.notify_all()

    def wait_empty(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: not self._sizes, timeout)

    @property
    def depth(self) -> int:
        with self.cond:
            return len(self._sizes)

    @property
    def bytes(self) -> int:
        with self.cond:
            return self._bytes


def _fsync_dir(path: Path) -> None:
    """The rename itself made durable (a power cut could otherwise undo it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
