"""The live page's NG events: thumbnails and the full event image with its mask drawn.

An event is asked for by its id only (`edgeas.runtime.events.event_id`: the stem of
its frame's file name) and found among the events this run's writer put on the board;
its files are the names that event's record holds, looked up in the folders the events
writer declared (`SinkContext.event_stores`). Nothing of the request ever becomes part
of a path: an id that is not a known event is a 404, whatever it contains (`..`, `/`,
`%2F`). A known event's file is resolved (symlinks followed) and must still be a file
directly inside its folder, so a link planted in the folder that points elsewhere is a
404 too; it is then opened without following a link, so that it cannot be swapped for
one between the check and the read.

Images are decoded and drawn in the HTTP thread that asks, not the pipeline's; a few
recent answers are cached, as every viewer asks for the same thumbnails.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeas.runtime.events import event_id
from edgeas.runtime.render import NG_COLOUR, OUTLINE_COLOUR, as_bgr
from edgeas.runtime.sink import EventStore

KNOWN_EVENTS = 200  # ids the page can still open after they left the board (newest kept)
THUMB_WIDTH = 240
CACHE_ENTRIES = 48
MASK_ALPHA = 0.45


def event_overlay(frame: np.ndarray, mask: np.ndarray | None,
                  regions: Iterable[Iterable[int]]) -> np.ndarray:
    """The event's frame with its mask tinted and outlined and its region boxes (frame
    pixels, as written), like the live overlay but without the heat map (not saved)."""
    out = as_bgr(frame)
    if mask is not None and mask.shape[:2] == out.shape[:2]:
        shown = (mask.reshape(mask.shape[:2]) > 0).astype(np.uint8)
        if shown.any():
            tint = np.empty_like(out)
            tint[:] = NG_COLOUR
            blend = cv2.addWeighted(tint, MASK_ALPHA, out, 1 - MASK_ALPHA, 0)
            out[shown > 0] = blend[shown > 0]
            contours, _ = cv2.findContours(shown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, OUTLINE_COLOUR, 1, cv2.LINE_AA)
    thickness = max(2, out.shape[1] // 640)
    for x, y, w, h in regions:
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), NG_COLOUR, thickness)
    return out


def inside(folder: Path, name: str) -> Path | None:
    """`folder/name` when it is, symlinks resolved, a regular file directly in `folder`."""
    try:
        root = folder.resolve(strict=True)
        path = (root / name).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a loop of links
        return None
    return path if path.parent == root and path.is_file() else None


def _read_image(path: Path, flags: int) -> np.ndarray | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


class EventImages:
    """Known events by id, and their images as JPEG (None: not an event to serve)."""

    def __init__(self, stores: Callable[[], list[EventStore]]) -> None:
        self._stores = stores
        self._lock = threading.Lock()
        self._known: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def learn(self, records: Iterable[dict[str, Any]]) -> None:
        """Remember the events on the board (newest first), so that their ids resolve."""
        with self._lock:
            for rec in reversed(list(records)):
                key = event_id(rec)
                if key and key not in self._known:
                    self._known[key] = rec
            while len(self._known) > KNOWN_EVENTS:
                self._known.popitem(last=False)

    def record(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._known.get(key)

    def jpeg(self, key: str, kind: str) -> bytes | None:
        """`kind` 'thumb' (THUMB_WIDTH wide) or 'image' (the frame's size) of event `key`."""
        rec = self.record(key)
        if rec is None or kind not in ("thumb", "image"):
            return None
        with self._lock:
            if (key, kind) in self._cache:
                self._cache.move_to_end((key, kind))
                return self._cache[(key, kind)]
        frame, mask = self._load(rec)
        if frame is None:
            return None
        out = event_overlay(frame, mask, rec.get("regions") or [])
        if kind == "thumb" and out.shape[1] > THUMB_WIDTH:
            height = max(1, round(out.shape[0] * THUMB_WIDTH / out.shape[1]))
            out = cv2.resize(out, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY,
                                             75 if kind == "thumb" else 90])
        if not ok:
            return None
        data = buf.tobytes()
        with self._lock:
            self._cache[(key, kind)] = data
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return data

    def _load(self, rec: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The event's frame and mask from the first declared folder that holds its frame."""
        image, mask = str(rec.get("image") or ""), str(rec.get("mask") or "")
        for store in self._stores():
            path = inside(store.folder, image) if image else None
            if path is None:
                continue
            frame = _read_image(path, cv2.IMREAD_COLOR)
            mask_path = inside(store.folder, mask) if mask else None
            shown = _read_image(mask_path, cv2.IMREAD_GRAYSCALE) if mask_path else None
            return frame, shown
        return None, None
