"""`--serve HOST:PORT`: a live page for operators (stdlib HTTP server, no dependencies).

    /             the page: annotated stream, OK/NG, score, FPS, latency, last NG events
    /stream.mjpg  the annotated stream as MJPEG (multipart/x-mixed-replace)
    /frame.jpg    the newest annotated frame
    /status.json  what the page shows, as JSON

The pipeline only hands over its newest frame and status (`publish`); JPEG encoding
happens in the HTTP threads, once per frame however many viewers there are, and only
when someone is watching. As a sink of the stream (runtime/sink.py) it wants the
rendered overlay only while someone watches, or once a second so that the first
viewer sees a recent frame. The default bind is 127.0.0.1: serving the network is an
explicit choice (0.0.0.0).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeas.errors import ConfigError, StreamError
from edgeas.runtime.sink import FrameResult, Sink, SinkContext

log = logging.getLogger("edgeas.stream")
PAGE = Path(__file__).resolve().parent / "static" / "live.html"
DEFAULT_HOST = "127.0.0.1"
BOUNDARY = "edgeasframe"
MAX_STREAM_CLIENTS = 8
JPEG_QUALITY = 80
PUBLISH_IDLE_S = 1.0  # refresh the served frame this often even when nobody watches
# The page shows the overlay at most this wide whatever the camera gives: a browser shows
# it smaller anyway, and a 4K overlay would cost the station's CPU for nothing.
LIVE_MAX_WIDTH = 1280


def parse_address(value: str, default_port: int = 8080) -> tuple[str, int]:
    """"HOST:PORT", ":PORT", "PORT", "[::1]:PORT" or "HOST" -> (host, port)."""
    text = str(value).strip()
    host, port = DEFAULT_HOST, str(default_port)
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        host, port = inner, rest.lstrip(":") or port
    elif text.isdigit():
        port = text
    elif ":" in text:
        head, _, port = text.rpartition(":")
        host = head or DEFAULT_HOST
    elif text:
        host = text
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--serve {value}: port must be a number 0..65535",
                          hint="e.g. --serve 127.0.0.1:8080")
    return host, int(port)


class _State:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.frame: np.ndarray | None = None
        self.seq = 0
        self.jpeg: bytes | None = None
        self.jpeg_seq = -1
        self.status: dict[str, Any] = {"running": True}
        self.closing = False
        self.clients = 0

    def jpeg_of(self, seq: int) -> bytes | None:
        """The JPEG of frame `seq`, encoded by whichever viewer asks first."""
        with self.cond:
            if self.jpeg_seq == seq:
                return self.jpeg
            frame = self.frame
        if frame is None:
            return None
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        data = buf.tobytes() if ok else None
        with self.cond:
            if seq >= self.jpeg_seq:
                self.jpeg, self.jpeg_seq = data, seq
        return data


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgeas"
    state: _State  # set on the subclass made per server

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("http %s - %s", self.address_string(), fmt % args)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path == "/status.json":
            with self.state.cond:
                body = json.dumps(self.state.status).encode()
            self._send(body, "application/json")
        elif path == "/frame.jpg":
            data = self.state.jpeg_of(self.state.seq)
            if data is None:
                self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet")
            else:
                self._send(data, "image/jpeg")
        elif path == "/stream.mjpg":
            self._stream()
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        state = self.state
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
                    state.cond.wait_for(lambda last=sent: state.closing or state.seq != last,
                                        timeout=1.0)
                    if state.closing:
                        return
                    seq = state.seq
                if seq == sent:
                    continue
                data = state.jpeg_of(seq)
                sent = seq
                if data is None:
                    continue
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                 f"Content-Length: {len(data)}\r\n\r\n".encode())
                self.wfile.write(data)
                self.wfile.write(b"\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return  # the viewer went away
        finally:
            with state.cond:
                state.clients -= 1


class LiveServer(Sink):
    """The HTTP server on its own threads; `publish` is cheap and never blocks on viewers."""

    name = "live"

    def __init__(self, host: str = DEFAULT_HOST, port: int = 8080) -> None:
        self.state = _State()
        handler = type("Handler", (_Handler,), {"state": self.state})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise StreamError(f"cannot serve on {host}:{port}: {exc.strerror or exc}",
                              hint="choose another port with --serve HOST:PORT") from exc
        self.httpd.daemon_threads = True
        self.host, self.port = host, int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="edgeas-http",
                                        daemon=True)
        self._thread.start()
        self._published = 0.0  # perf_counter of the last frame handed over
        self._board: deque[dict[str, Any]] | None = None
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def viewers(self) -> int:
        return self.state.clients

    def publish(self, frame: np.ndarray | None, status: dict[str, Any]) -> None:
        """The newest annotated frame (not copied: the caller must not modify it) and status."""
        with self.state.cond:
            if frame is not None:
                self.state.frame = frame
                self.state.seq += 1
            self.state.status = dict(status, running=True)
            self.state.cond.notify_all()

    def _frame_due(self, now: float) -> bool:
        return self.viewers > 0 or now - self._published > PUBLISH_IDLE_S

    render_width = LIVE_MAX_WIDTH

    @property
    def needs_render(self) -> bool:
        return self._frame_due(time.perf_counter())

    def open(self, context: SinkContext) -> None:
        self._board = context.recent_events

    def on_frame(self, result: FrameResult) -> None:
        """The status every frame; the overlay when someone watches or the refresh is due."""
        now = time.perf_counter()
        frame = result.rendered if result.rendered is not None and self._frame_due(now) else None
        events = list(self._board) if self._board is not None else []
        self.publish(frame, dict(result.status(), events=events))
        if frame is not None:
            self._published = now

    def close(self, error: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        with self.state.cond:
            self.state.closing = True
            self.state.status = dict(self.state.status, running=False)
            self.state.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
