"""Local sinks of annotated frames: a recording (`--record FILE`) and a window (`--show`)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import cv2
import numpy as np

from edgeas.errors import DependencyError, StreamError

# Codecs that OpenCV's bundled FFmpeg writes in these containers.
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "MJPG", ".mov": "mp4v"}


class Recorder:
    """Annotated frames to a video file. The file is written under a temporary name and
    renamed on close, so a player never opens a half-written recording."""

    def __init__(self, path: str | Path, fps: float | None) -> None:
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

    def close(self) -> None:
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


def gui_available() -> bool:
    """True when this OpenCV was built with a GUI backend (opencv-python-headless has none)."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(match) and match.group(1).upper() not in ("NONE", "NO")


class Window:
    """cv2.imshow where OpenCV has a GUI; `q` or Esc in the window asks the loop to stop."""

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
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def show(self, frame: np.ndarray) -> bool:
        """Display the frame; False when the operator asked to quit."""
        cv2.imshow(self.title, frame)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        with contextlib.suppress(cv2.error):
            cv2.destroyWindow(self.title)
