"""The live page's HTTP side (runtime/server.py is the sink that feeds it).

    /                           the page (runtime/static/live.html)
    /status.json                the station: settings, sources, metrics, recent events
    /metrics                    Prometheus metrics (runtime/metrics.py), when installed
    /source/N/frame.jpg         the newest picture of source N; `?after=SEQ` waits (up to
                                LONG_POLL_S) for another one, else 204
    /source/N/stream.mjpg       source N as MJPEG (multipart/x-mixed-replace)
    /frame.jpg, /stream.mjpg    the same for source 0
    /events/ID/thumb.jpg        an NG event, small, with its mask drawn (runtime/live_events.py)
    /events/ID/image.jpg        the same at the frame's size

Every picture is served with the record of the frame it was drawn from, in headers
(X-Edgeas-Seq, -Frame, -Verdict, -Score, -Threshold, -Regions; in each MJPEG part
too): the page reads the verdict it shows from the response that brought the picture.
A picture is encoded to JPEG by whichever viewer asks first, once however many watch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from edgeas.errors import StreamError

if TYPE_CHECKING:
    from edgeas.runtime.server import LiveServer

log = logging.getLogger("edgeas.stream")
PAGE = Path(__file__).resolve().parent / "static" / "live.html"
BOUNDARY = "edgeasframe"
MAX_STREAM_CLIENTS = 8
JPEG_QUALITY = 80
LONG_POLL_S = 2.0  # how long a page's request for another picture may wait
_SOURCE_PATH = re.compile(r"/source/(\d{1,4})/(frame\.jpg|stream\.mjpg)")
# an id is matched, then looked up among the known events: never used as a path
_EVENT_PATH = re.compile(r"/events/([0-9A-Za-z_.]{1,80})/(thumb|image)\.jpg")


def start_http(host: str, port: int, handler: type[BaseHTTPRequestHandler], flag: str,
               name: str) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """A threaded HTTP server on its own daemon thread, or a StreamError naming the address
    and the option (`flag`) that chooses another (a port in use)."""
    try:
        httpd = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise StreamError(f"cannot serve on {host}:{port}: {exc.strerror or exc}",
                          hint=f"choose another port with {flag} HOST:PORT") from exc
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name=name, daemon=True)
    thread.start()
    return httpd, thread


class View:
    """One source's newest picture and the record of the very frame it shows."""

    def __init__(self) -> None:
        self.frame: np.ndarray | None = None  # the overlay
        self.shown: dict[str, Any] = {}  # its frame's record, with `seq`
        self.seq = 0  # pictures published so far
        self.published = -1e9  # perf_counter when the picture was published
        self.latest: dict[str, Any] = {}  # the newest frame decided (drawn or not)
        self.jpeg: tuple[int, bytes, dict[str, Any]] | None = None


class LiveState:
    """What the HTTP threads share with the sink: a View per source, and who watches."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.views = [View()]
        self.running = True
        self.closing = False
        self.clients = 0  # MJPEG streams open
        self.waiting = 0  # page requests waiting for another picture
        self.asked = -1e9  # perf_counter of the last picture request

    def view(self, index: int) -> View | None:
        with self.cond:
            return self.views[index] if 0 <= index < len(self.views) else None

    def jpeg_of(self, view: View) -> tuple[int, bytes, dict[str, Any]] | None:
        """(seq, JPEG, record) of the view's newest picture, encoded by whichever viewer
        asks first; the record is the one published with that very picture."""
        with self.cond:
            if view.jpeg is not None and view.jpeg[0] == view.seq:
                return view.jpeg
            frame, record, seq = view.frame, view.shown, view.seq
        if frame is None:
            return None
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return None
        out = (seq, buf.tobytes(), record)
        with self.cond:
            if view.jpeg is None or seq >= view.jpeg[0]:
                view.jpeg = out
        return out


def frame_headers(seq: int, record: dict[str, Any]) -> list[tuple[str, str]]:
    """The record of a picture, sent with it (ASCII values only: they are HTTP headers)."""
    def number(key: str) -> str:
        value = record.get(key)
        return "" if value is None else repr(float(value))

    return [("X-Edgeas-Seq", str(seq)), ("X-Edgeas-Frame", str(record.get("frame", ""))),
            ("X-Edgeas-Verdict", str(record.get("verdict", ""))),
            ("X-Edgeas-Score", number("score")), ("X-Edgeas-Threshold", number("threshold")),
            ("X-Edgeas-Regions", str(len(record.get("regions") or [])))]


class Handler(BaseHTTPRequestHandler):
    server_version = "edgeas"
    live: LiveServer  # set on the subclass made per server

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("http %s - %s", self.address_string(), fmt % args)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        # a viewer that went away (a page closed while its next picture was on the way)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._get()

    def _get(self) -> None:
        # the raw path, not unquoted: an encoded separator stays what it is, never a route
        url = urlsplit(self.path)
        path = url.path
        if path in ("/", "/index.html"):
            self._send(PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path == "/status.json":
            self._send(json.dumps(self.live.status()).encode(), "application/json")
        elif path == "/metrics" and self.live.metrics is not None:
            self._send(*self.live.metrics.exposition())
        elif path in ("/frame.jpg", "/stream.mjpg"):
            self._source(0, path[1:], url.query)
        elif m := _SOURCE_PATH.fullmatch(path):
            self._source(int(m.group(1)), m.group(2), url.query)
        elif m := _EVENT_PATH.fullmatch(path):
            data = self.live.event_images.jpeg(m.group(1), m.group(2))
            if data is None:
                self.send_error(HTTPStatus.NOT_FOUND)
            else:
                self._send(data, "image/jpeg", cache="private, max-age=3600")
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _send(self, body: bytes, kind: str, headers: Sequence[tuple[str, str]] = (),
              cache: str = "no-store", status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _source(self, index: int, what: str, query: str) -> None:
        view = self.live.state.view(index)
        if view is None:
            self.send_error(HTTPStatus.NOT_FOUND, "no such source")
        elif what == "stream.mjpg":
            self._stream(view)
        else:
            self._frame(view, parse_qs(query).get("after", [""])[0])

    def _frame(self, view: View, after: str) -> None:
        state = self.live.state
        state.asked = time.perf_counter()
        if after.lstrip("-").isdigit():
            with state.cond:
                state.waiting += 1
                try:
                    # `!=`, not `>`: a page that outlived a restarted station has a
                    # larger number than the new run's, and must not wait for ever
                    state.cond.wait_for(lambda: state.closing or view.seq != int(after),
                                        timeout=LONG_POLL_S)
                finally:
                    state.waiting -= 1
                    state.asked = time.perf_counter()
                if state.closing:
                    self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "the station stopped")
                    return
                if view.seq == int(after):
                    self.send_response(HTTPStatus.NO_CONTENT)  # nothing newer: ask again
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    return
        got = state.jpeg_of(view)
        if got is None:
            self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet")
            return
        seq, data, record = got
        self._send(data, "image/jpeg", frame_headers(seq, record))

    def _stream(self, view: View) -> None:
        state = self.live.state
        with state.cond:
            if state.clients >= MAX_STREAM_CLIENTS:
                self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "too many viewers")
                return
            state.clients += 1
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            sent = -1
            while True:
                with state.cond:
                    state.cond.wait_for(lambda last=sent: state.closing or view.seq != last,
                                        timeout=1.0)
                    if state.closing:
                        return
                    if view.seq == sent:
                        continue
                got = state.jpeg_of(view)
                if got is None:
                    continue
                seq, data, record = got
                sent = seq
                head = "".join(f"{k}: {v}\r\n" for k, v in frame_headers(seq, record))
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                 f"Content-Length: {len(data)}\r\n{head}\r\n".encode())
                self.wfile.write(data)
                self.wfile.write(b"\r\n")
                self.wfile.flush()
        finally:
            with state.cond:
                state.clients -= 1
