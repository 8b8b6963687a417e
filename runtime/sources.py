"""Frame sources named as URIs in the jetson-utils convention.

    v4l2:///dev/video0   USB camera        (--camera N)
    csi://0              Jetson CSI camera (--csi N; GStreamer nvarguscamerasrc)
    rtsp://host/path     network camera    (--rtsp URL)
    file://clip.mp4      video file        (--video FILE)
    DIR or file://DIR    folder of images  (--images DIR)

Live sources (cameras, RTSP) run a capture thread that keeps only the newest frame, so
a slow model never builds a backlog; frames replaced before inference took them are
counted as dropped. When a live source fails, the thread reconnects with backoff and
logs it. Files and folders are read on demand: no frame is ever dropped, and the end
of the file ends the run. A source that cannot be opened at start is a StreamError (exit 1);
a file or folder path that does not exist is the user's typo, a ConfigError (exit 2).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeas.errors import ConfigError, StreamError
from edgeas.imageio import IMAGE_SUFFIXES

log = logging.getLogger("edgeas.stream")

# A network camera that stops answering must not block the capture thread forever.
NET_TIMEOUT_MS = 5000
BACKOFF_START, BACKOFF_MAX = 0.5, 10.0
CSI_PIPELINE = (
    "nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},"
    "height={height},framerate={fps}/1,format=NV12 ! nvvidconv ! video/x-raw,format=BGRx ! "
    "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1"
)


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # v4l2 | csi | rtsp | file | folder
    target: str  # device, sensor id, URL or path
    uri: str  # what the user gave, for messages and events

    @property
    def live(self) -> bool:
        return self.kind in ("v4l2", "csi", "rtsp")


def redact(uri: str) -> str:
    """The URI without its password (rtsp://user:secret@host/x -> rtsp://user:***@host/x):
    what a page or a log may show."""
    return _SECRET.sub(r"\1:***@", uri)


_SECRET = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:]*):[^/@]*@")


def gstreamer_available() -> bool:
    return bool(cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER))


def parse_source(
    uri: str | None = None,
    camera: int | None = None,
    video: str | None = None,
    rtsp: str | None = None,
    csi: int | None = None,
    images: str | None = None,
) -> SourceSpec:
    """Exactly one of a URI or one shorthand flag -> a SourceSpec (ConfigError otherwise)."""
    given = {k: v for k, v in (("SOURCE", uri), ("--camera", camera), ("--video", video),
                               ("--rtsp", rtsp), ("--csi", csi), ("--images", images))
             if v is not None}
    if len(given) != 1:
        what = "no source" if not given else f"several sources ({', '.join(given)})"
        raise ConfigError(f"{what}: give exactly one",
                          hint="e.g. file://clip.mp4, v4l2:///dev/video0, csi://0, rtsp://host/"
                          "path, a folder of images, or --video/--camera/--rtsp/--csi/--images")
    if camera is not None:
        return SourceSpec("v4l2", f"/dev/video{int(camera)}", f"v4l2:///dev/video{int(camera)}")
    if csi is not None:
        return SourceSpec("csi", str(int(csi)), f"csi://{int(csi)}")
    if rtsp is not None:
        return _parse_uri(rtsp if "://" in rtsp else f"rtsp://{rtsp}")
    if video is not None:
        return _local(Path(video), str(video), want="file")
    if images is not None:
        return _local(Path(images), str(images), want="folder")
    return _parse_uri(str(uri))


def _parse_uri(uri: str) -> SourceSpec:
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower() if sep else ""
    if scheme == "v4l2":
        return SourceSpec("v4l2", rest if rest.startswith("/") else f"/dev/video{rest}", uri)
    if scheme == "csi":
        if not rest.isdigit():
            raise ConfigError(f"source {uri}: expected csi://N with a sensor number")
        return SourceSpec("csi", rest, uri)
    if scheme in ("rtsp", "rtsps", "http", "https"):
        return SourceSpec("rtsp", uri, uri)
    if scheme == "file":
        return _local(Path(rest), uri)
    if sep:
        raise ConfigError(f"source {uri}: unknown scheme '{scheme}://'",
                          hint="use v4l2://, csi://, rtsp://, file:// or a folder path")
    if uri.startswith("/dev/video"):
        return SourceSpec("v4l2", uri, f"v4l2://{uri}")
    return _local(Path(uri), uri)


def _local(path: Path, uri: str, want: str | None = None) -> SourceSpec:
    if path.is_dir() and want != "file":
        return SourceSpec("folder", str(path), uri)
    if path.is_file() and want != "folder":
        return SourceSpec("file", str(path), uri)
    expected = {"file": "a video file", "folder": "a folder of images"}.get(want or "",
                                                                         "a video file or folder")
    # A path the user named that is not there (or not of that kind) is a usage error.
    raise ConfigError(f"cannot open source {uri}: {path} is not {expected}",
                      hint="check the path; cameras are v4l2:///dev/videoN or csi://N")


class Source:
    """read(timeout) -> the next frame (uint8), or None: end of stream (`ended`) or, for a
    live source, no new frame within `timeout`.

    `condition()` says what the source is doing and since when, for the live page: a file
    or folder is `reading`, then `ended`; a camera is `live`, or `reconnecting` while its
    capture thread tries to get it back (no frame reaches the sinks then, so the page
    asks the source, not the frames)."""

    live = False
    dropped = 0
    reconnects = 0
    skipped = 0
    fps: float | None = None

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self._ended = False
        self.state, self.since = "reading", time.time()

    @property
    def ended(self) -> bool:
        return self._ended

    @ended.setter
    def ended(self, value: bool) -> None:
        if value and not self._ended:
            self._enter("ended")
        self._ended = value

    def _enter(self, state: str) -> None:
        # closed is final: a capture thread that reconnected just as close() ran must not
        # show the source live again
        if state != self.state and self.state != "closed":
            # one tuple assignment: a reader on another thread sees the pair of one change
            self.state, self.since = state, time.time()

    def condition(self) -> tuple[str, float]:
        """(state, time.time() when it began)."""
        return self.state, self.since

    def open(self) -> Source:
        return self

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class VideoFileSource(Source):
    def open(self) -> VideoFileSource:
        self.cap = cv2.VideoCapture(self.spec.target)
        if not self.cap.isOpened() or not self.cap.grab():
            self.cap.release()
            raise StreamError(f"cannot open video {self.spec.uri}: OpenCV cannot decode it",
                              hint="check that the file is a video that ffmpeg can play")
        # grab() above proved a frame exists; retrieve() returns it as frame 0
        self._first = True
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None
        return self

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        if self.ended:
            return None
        ok, frame = self.cap.retrieve() if self._first else self.cap.read()
        self._first = False
        if not ok or frame is None:
            self.ended = True
            return None
        return frame

    def close(self) -> None:
        self.cap.release()


class FolderSource(Source):
    def open(self) -> FolderSource:
        root = Path(self.spec.target)
        self.files = sorted(p for p in root.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise StreamError(f"cannot open source {self.spec.uri}: no images in {root}",
                              hint=f"the folder needs files ending in {', '.join(IMAGE_SUFFIXES)}")
        self.position = 0
        self.current: Path | None = None
        return self

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        while self.position < len(self.files):
            path = self.files[self.position]
            self.position += 1
            # ANYCOLOR keeps a grayscale file grayscale and makes 16-bit files 8-bit
            frame = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)
            if frame is not None:
                self.current = path
                return frame
            self.skipped += 1
            log.warning("skipping %s: not a readable image", path)
        self.ended = True
        return None


def _open_capture(spec: SourceSpec) -> cv2.VideoCapture:
    if spec.kind == "v4l2":
        cap = cv2.VideoCapture(spec.target, cv2.CAP_V4L2)
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue would add latency
        return cap
    if spec.kind == "csi":
        if not gstreamer_available():
            log.warning("this OpenCV has no GStreamer (pip's opencv-python lacks it): %s "
                        "cannot open; on Jetson use the system OpenCV", spec.uri)
        pipeline = CSI_PIPELINE.format(sensor=spec.target, width=1920, height=1080, fps=30)
        return cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NET_TIMEOUT_MS,
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, NET_TIMEOUT_MS]
    return cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG, params)


class LiveSource(Source):
    """A capture thread owns the device; read() takes the newest frame."""

    live = True

    def __init__(self, spec: SourceSpec,
                 opener: Callable[[SourceSpec], cv2.VideoCapture] = _open_capture) -> None:
        super().__init__(spec)
        self.opener = opener
        self._cond = threading.Condition()
        self._newest: np.ndarray | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_captured = 0

    def open(self) -> LiveSource:
        cap = self.opener(self.spec)
        if not cap.isOpened():
            cap.release()
            raise StreamError(f"cannot open source {self.spec.uri}",
                              hint=self._hint())
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        self._enter("live")
        self._thread = threading.Thread(target=self._run, args=(cap,), name="edgeas-capture",
                                        daemon=True)
        self._thread.start()
        return self

    def _hint(self) -> str:
        if self.spec.kind == "csi" and not gstreamer_available():
            return "this OpenCV has no GStreamer; on Jetson use JetPack's OpenCV"
        if self.spec.kind == "rtsp":
            return "check the URL and that the camera or server is reachable"
        return "check that the device exists and no other program holds it"

    def _run(self, cap: cv2.VideoCapture | None) -> None:
        backoff = BACKOFF_START
        while not self._stop.is_set():
            if cap is None:
                cap = self.opener(self.spec)
                if not cap.isOpened():
                    cap.release()
                    cap = None
                    log.warning("%s unavailable; retrying in %.1f s", self.spec.uri, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                log.warning("%s reconnected", self.spec.uri)
                self.reconnects += 1
                self._enter("live")
                backoff = BACKOFF_START
            ok, frame = cap.read()
            if not ok or frame is None:
                if self._stop.is_set():
                    break  # closed while reading: not a camera that went away
                log.warning("%s stopped delivering frames; reconnecting", self.spec.uri)
                self._enter("reconnecting")
                cap.release()
                cap = None
                continue
            with self._cond:
                self.frames_captured += 1
                if self._newest is not None:
                    self.dropped += 1  # inference never saw the previous one
                self._newest = frame
                self._cond.notify_all()
        if cap is not None:
            cap.release()

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        with self._cond:
            if self._newest is None:
                self._cond.wait(timeout)
            frame, self._newest = self._newest, None
        return frame

    def close(self) -> None:
        self._stop.set()
        self._enter("closed")
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            # a blocked read returns within the network timeout
            self._thread.join(timeout=NET_TIMEOUT_MS / 1000 + 2)


def open_source(spec: SourceSpec) -> Source:
    source: Source
    if spec.kind == "file":
        source = VideoFileSource(spec)
    elif spec.kind == "folder":
        source = FolderSource(spec)
    else:
        source = LiveSource(spec)
    return source.open()
