"""`--serve HOST:PORT`: a live page for operators (stdlib HTTP server, no dependencies).

The page (runtime/static/live.html) shows a tile per source, each a picture with its
verdict above it, the last NG events as thumbnails, and what the station is set to;
runtime/live_http.py serves it (the routes are listed there).

One frame, one verdict: a picture is published together with the record of the frame
it was drawn from (`publish`), and every JPEG is served with that record in its
headers. The page asks for each next picture itself (`fetch`; an <img> on the MJPEG
stream gets frames that carry nothing a page can read), decodes it, then puts the
picture and its verdict on screen in one task: the header above a picture always
describes that picture. (It once followed status.json while the picture followed the
MJPEG stream, and the two described different frames.) The status, polled once a
second, holds what is not a frame's: rates, settings, the sources' state, events; its
`shown` is the record of the picture served, `latest` the newest frame decided, which
may not have been drawn.

Several sources: the status holds a list of them, each with its own
picture and record (FrameResult.stream says whose a frame is), and the page draws a
tile per entry. The pipeline only hands over its newest picture and record; JPEG
encoding happens in the HTTP threads, only when someone is watching. As a sink of the
stream (runtime/sink.py) it wants the overlay drawn only while someone watches (a page
waiting for its next picture, or an MJPEG stream open), or once a second so that the
first viewer sees a recent frame. The default bind is 127.0.0.1: serving the network
is an explicit choice (0.0.0.0).
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

import numpy as np

from edgeas.errors import ConfigError
from edgeas.runtime.events import event_id
from edgeas.runtime.live_events import EventImages
from edgeas.runtime.live_http import Handler, LiveState, View, start_http
from edgeas.runtime.sink import FrameResult, Sink, SinkContext
from edgeas.runtime.sources import redact

log = logging.getLogger("edgeas.stream")
DEFAULT_HOST = "127.0.0.1"
PUBLISH_IDLE_S = 1.0  # refresh the served frame this often even when nobody watches
VIEWER_GRACE_S = 1.0  # a page that asked this recently is still watching (between requests)
# The page shows the overlay at most this wide whatever the camera gives: a browser shows
# it smaller anyway, and a 4K overlay would cost the station's CPU for nothing.
LIVE_MAX_WIDTH = 1280


def parse_address(value: str, default_port: int = 8080,
                  flag: str = "--serve") -> tuple[str, int]:
    """"HOST:PORT", ":PORT", "PORT", "[::1]:PORT" or "HOST" -> (host, port); the host is
    127.0.0.1 unless named. `flag` names the option in the error."""
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
        raise ConfigError(f"{flag} {value}: port must be a number 0..65535",
                          hint=f"e.g. {flag} 127.0.0.1:{default_port}")
    return host, int(port)


def utc_iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="seconds")


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the page may show it: a camera's URI without its password."""
    return dict(record, source=redact(str(record["source"]))) if "source" in record else record


class LiveServer(Sink):
    """The HTTP server on its own threads; `publish` is cheap and never blocks on viewers."""

    name = "live"
    render_width = LIVE_MAX_WIDTH

    def __init__(self, host: str = DEFAULT_HOST, port: int = 8080) -> None:
        self.state = LiveState()
        self.context: SinkContext | None = None
        self.event_images = EventImages(
            lambda: list(self.context.event_stores) if self.context is not None else [])
        handler = type("Handler", (Handler,), {"live": self})
        self.httpd, self._thread = start_http(host, port, handler, "--serve", "edgeas-http")
        self.host, self.port = host, int(self.httpd.server_address[1])
        self._newest_event = ""
        self._closed = False
        self.metrics: Any = None  # a MetricsSink of the same run: served on /metrics

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def viewers(self) -> int:
        """MJPEG streams, page requests waiting, and a page between two requests."""
        state = self.state
        recent = time.perf_counter() - state.asked < VIEWER_GRACE_S
        return state.clients + state.waiting + int(recent and not state.waiting)

    def publish(self, frame: np.ndarray | None, record: dict[str, Any], stream: int = 0) -> None:
        """The newest decided frame's record; with `frame` (its overlay: not copied, the
        caller must not modify it), also the picture served, with that same record."""
        with self.state.cond:
            views = self.state.views
            while len(views) <= stream:
                views.append(View())
            view = views[stream]
            view.latest = record
            if frame is not None:
                view.seq += 1
                view.published = time.perf_counter()
                view.frame, view.shown = frame, dict(record, seq=view.seq)
                self.state.cond.notify_all()

    @property
    def needs_render(self) -> bool:
        """While someone watches; else when some source's picture is older than the idle
        refresh (the pipeline asks before it knows whose frame comes next)."""
        if self.viewers > 0:
            return True
        oldest = time.perf_counter() - PUBLISH_IDLE_S
        with self.state.cond:
            return any(view.published < oldest for view in self.state.views)

    def open(self, context: SinkContext) -> None:
        self.context = context
        with self.state.cond:
            while len(self.state.views) < len(context.sources):
                self.state.views.append(View())

    def on_frame(self, result: FrameResult) -> None:
        """The record every frame; the overlay too whenever it was drawn (for this sink
        or another: handing it over costs nothing until someone asks for it)."""
        self.publish(result.rendered, result.status(), result.stream)
        board = self.context.recent_events if self.context is not None else None
        if board:
            newest = event_id(board[0])
            if newest != self._newest_event:  # the board changed: its ids become servable
                self._newest_event = newest
                self.event_images.learn(list(board))

    def status(self) -> dict[str, Any]:
        """What /status.json answers: built when asked, from the published records and
        what the sources and event folders say now (a camera that is reconnecting sends
        no frames, so no frame could tell)."""
        ctx = self.context
        with self.state.cond:
            views = [(v.shown, v.latest) for v in self.state.views]
            running = self.state.running
        infos = list(ctx.sources) if ctx is not None else []
        sources = []
        for i, (shown, latest) in enumerate(views):
            entry: dict[str, Any] = {"index": i, "shown": _public(shown),
                                     "latest": _public(latest)}
            if i < len(infos):
                info = infos[i]
                state, since = info.condition()
                entry.update(name=info.name, uri=info.uri, kind=info.kind, live=info.live,
                             fps_nominal=info.fps, state=state, since=utc_iso(since))
                if info.threshold is not None:  # the page lists per-source settings
                    entry.update(threshold=info.threshold, min_area=info.min_area)
            sources.append(entry)
        board = list(ctx.recent_events) if ctx is not None else []
        stores = list(ctx.event_stores) if ctx is not None else []
        return {
            "running": running,
            "station": dict(ctx.station) if ctx is not None else {},
            "sources": sources,
            "events": {
                "recent": [dict(_public(rec), id=event_id(rec)) for rec in board],
                "folders": [{"dir": str(s.folder), "budget_bytes": s.budget_bytes,
                             "used_bytes": s.used_bytes()} for s in stores],
                # what MQTT and the webhook have yet to deliver (runtime/delivery.py)
                "queues": [{"sink": q.sink, "dir": str(q.folder), "depth": q.depth(),
                            "used_bytes": q.used_bytes(), "budget_bytes": q.budget_bytes,
                            "delivered": q.delivered()}
                           for q in (ctx.queues if ctx is not None else [])],
            },
        }

    def close(self, error: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        with self.state.cond:
            self.state.closing = True
            self.state.running = False
            self.state.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
