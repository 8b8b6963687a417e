"""The live page's server without a model: each picture is served with its own frame's
record; NG event images by event id only, never by a path (traversal, encoded
separators, symlinks: 404); several sources, each with its picture and record, drawn
as tiles by the page (headless Chromium)."""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from dataclasses import replace

import cv2
import numpy as np
import pytest
from headless_chromium import Chromium

from edgeas.runtime import live_http
from edgeas.runtime.events import EventLog, event_id
from edgeas.runtime.live_events import THUMB_WIDTH, inside
from edgeas.runtime.server import LiveServer
from edgeas.runtime.sink import EventStore, FrameResult, SinkContext, SourceInfo

HW = (320, 480)
MODEL_HW = (32, 32)


def _frame(value: int) -> np.ndarray:
    return np.full((*HW, 3), value, np.uint8)


def _result(index: int, ng: bool, stream: int = 0, rendered: np.ndarray | None = None
            ) -> FrameResult:
    mask = np.zeros(MODEL_HW, np.uint8)
    if ng:
        mask[8:16, 8:16] = 1
    return FrameResult(index, "memory://x", _frame(100), np.zeros(MODEL_HW, np.float32), mask,
                       ng, 0.9 if ng else 0.1, 0.5, [[120, 80, 120, 80]] if ng else [], 0.01,
                       20.0, 0, "fake.onnx", rendered=rendered, stream=stream)


def _get(server: LiveServer, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET with the path sent exactly as written (urllib would normalise some of it)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def _jpeg(body: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)


@pytest.fixture
def server():
    live = LiveServer("127.0.0.1", 0)
    yield live
    live.close()


def test_the_picture_comes_with_the_record_of_its_own_frame(server):
    """The issue's header "OK 0.26" over a picture stamped "NG 0.53": the status followed
    every frame while the picture was refreshed only when due."""
    server.open(SinkContext("memory://x", False, None, "fake.onnx", 0.5))
    assert server.needs_render  # the first picture is due
    server.on_frame(_result(7, True, rendered=_frame(200)))
    assert not server.needs_render  # nobody watches, and the refresh is not due
    server.on_frame(_result(8, False))  # so the pipeline did not draw frame 8
    status, headers, body = _get(server, "/frame.jpg")
    assert status == 200 and abs(float(_jpeg(body).mean()) - 200) < 3  # frame 7's picture
    assert (headers["X-Edgeas-Frame"], headers["X-Edgeas-Verdict"]) == ("7", "NG")
    assert float(headers["X-Edgeas-Score"]) == 0.9 and headers["X-Edgeas-Regions"] == "1"
    assert float(headers["X-Edgeas-Threshold"]) == 0.5 and headers["X-Edgeas-Seq"] == "1"
    (source,) = server.status()["sources"]
    assert (source["shown"]["frame"], source["shown"]["verdict"]) == (7, "NG")
    assert (source["latest"]["frame"], source["latest"]["verdict"]) == (8, "OK")
    # the MJPEG stream's parts carry their record too
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/stream.mjpg")
    part = conn.getresponse().read1(400).decode("latin-1")
    conn.close()
    assert "X-Edgeas-Frame: 7\r\n" in part and "X-Edgeas-Verdict: NG\r\n" in part


def test_a_page_waits_for_its_next_picture(server, monkeypatch):
    monkeypatch.setattr(live_http, "LONG_POLL_S", 0.3)
    server.open(SinkContext("memory://x", False, None, "fake.onnx", 0.5))
    server.on_frame(_result(1, False, rendered=_frame(50)))
    start = time.monotonic()
    status, _, _ = _get(server, "/source/0/frame.jpg?after=1")
    assert status == 204 and time.monotonic() - start >= 0.25  # nothing newer came
    assert server.needs_render  # a page that just asked is watching: draw the next one

    def later() -> None:
        time.sleep(0.1)
        server.on_frame(_result(2, True, rendered=_frame(220)))

    threading.Thread(target=later).start()
    status, headers, _ = _get(server, "/source/0/frame.jpg?after=1")
    assert status == 200 and (headers["X-Edgeas-Seq"], headers["X-Edgeas-Frame"]) == ("2", "2")
    # a page older than this run (a restarted station) gets the picture at once
    status, headers, _ = _get(server, "/source/0/frame.jpg?after=99")
    assert status == 200 and headers["X-Edgeas-Seq"] == "2"


def _served_events(server: LiveServer, folder) -> tuple[EventLog, list[dict]]:
    log = EventLog(folder, 10, "memory://x")
    context = SinkContext("memory://x", False, None, "fake.onnx", 0.5)
    context.event_stores.append(EventStore(log.dir, log.budget, lambda: log.total_bytes))
    server.open(context)
    records = []
    for i in (3, 4):
        mask = np.zeros(MODEL_HW, np.uint8)
        mask[8:16, 8:16] = 1
        rec = log.record(i, _frame(100), mask, 0.9, 0.5, [[120, 80, 120, 80]])
        context.recent_events.appendleft(rec)  # what the events writer does
        records.append(rec)
        time.sleep(0.002)  # distinct time stamps, hence ids
    server.on_frame(_result(5, False))
    return log, records


def test_ng_event_images_are_served_by_id_with_the_mask_drawn(server, tmp_path):
    log, (first, second) = _served_events(server, tmp_path / "events")
    recent = server.status()["events"]["recent"]
    assert [e["id"] for e in recent] == [event_id(second), event_id(first)]  # newest first
    assert server.status()["events"]["folders"] == [{
        "dir": str(log.dir), "budget_bytes": 10 * 2**20, "used_bytes": log.total_bytes}]
    status, headers, body = _get(server, f"/events/{event_id(first)}/image.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    full = _jpeg(body)
    assert full.shape == (*HW, 3)
    # the mask (model pixels 8..15 of 32: frame rows 80..159, columns 120..239) is tinted
    # red, the rest is the frame as saved
    b, g, r = full[120, 180].astype(int)
    assert r > 150 and b < 100 and abs(int(full[10, 10].mean()) - 100) < 4
    status, _, body = _get(server, f"/events/{event_id(first)}/thumb.jpg")
    assert status == 200 and _jpeg(body).shape == (THUMB_WIDTH * HW[0] // HW[1], THUMB_WIDTH, 3)


def test_event_images_never_follow_a_path_from_the_request(server, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    cv2.imwrite(str(outside / "photo.png"), _frame(7))  # an image: following it would work
    (outside / "passwd").write_text("root:x:0:0\n")
    log, (first, second) = _served_events(server, tmp_path / "events")
    good = event_id(first)
    assert _get(server, f"/events/{good}/image.jpg")[0] == 200
    attempts = [
        "/events/../secret/photo.png",
        "/events/../../secret/passwd/image.jpg",
        "/events/..%2F..%2Fsecret%2Fphoto/image.jpg",
        "/events/%2e%2e%2fsecret%2fphoto/image.jpg",
        "/events/..%252Fsecret%252Fphoto/image.jpg",
        f"/events/%2F{str(outside).lstrip('/').replace('/', '%2F')}%2Fphoto/image.jpg",
        f"/events/{outside}/photo/image.jpg",
        f"/events//{outside}/photo/image.jpg",
        f"/events/{good}/../../secret/photo.png",
        f"/events/{good}%2F..%2F..%2Fsecret%2Fphoto/image.jpg",
        f"/events/{good}/..%2Fevents.jsonl",
        f"http://{server.host}:{server.port}{outside}/photo.png",
        "/events/../image.jpg",
        "/events/events.jsonl/image.jpg",
        f"/events/{good}_mask/image.jpg",  # a file of the folder, not an event
        "/events/00000099_20250101T000000.000Z/image.jpg",  # well formed, unknown
        f"/events/{good}/photo.jpg",
        f"/{outside}/photo.png",
    ]
    for path in attempts:
        status, _, body = _get(server, path)
        assert status == 404, (path, status)
        assert b"root:x" not in body
    # a link planted in the folder under an event's name, pointing outside: not followed
    image = log.dir / second["image"]
    image.unlink()
    os.symlink(outside / "photo.png", image)
    for kind in ("image", "thumb"):
        assert _get(server, f"/events/{event_id(second)}/{kind}.jpg")[0] == 404
    # a record naming a file outside its folder (a damaged events.jsonl): not served
    server.event_images.learn([dict(first, image="../secret/photo.png")])
    assert server.event_images.jpeg("../secret/photo", "image") is None
    assert inside(log.dir, "../secret/photo.png") is None
    assert inside(log.dir, str(outside / "photo.png")) is None
    assert inside(log.dir, first["mask"]) == (log.dir / first["mask"]).resolve()
    # files deleted by the disk budget: 404, not an error
    for name in (first["image"], first["mask"]):
        (log.dir / name).unlink()
    server.event_images._cache.clear()
    assert _get(server, f"/events/{good}/image.jpg")[0] == 404


def test_several_sources_each_have_their_picture_verdict_and_state(server, tmp_path):
    down_since = time.time() - 90
    sources = (SourceInfo("line-a", "rtsp://cam-a/x", "rtsp", True, 25.0,
                          lambda: ("live", time.time() - 5)),
               SourceInfo("line-b", "rtsp://cam-b/x", "rtsp", True, 25.0,
                          lambda: ("reconnecting", down_since)))
    server.open(SinkContext("rtsp://cam-a/x", True, 25.0, "fake.onnx", 0.5,
                            station={"model": "fake.onnx", "threshold": {"value": 0.5}},
                            sources=sources))
    server.on_frame(_result(5, False, stream=0, rendered=_frame(60)))
    server.on_frame(_result(9, True, stream=1, rendered=_frame(200)))
    assert _get(server, "/source/0/frame.jpg")[1]["X-Edgeas-Frame"] == "5"
    assert _get(server, "/source/1/frame.jpg")[1]["X-Edgeas-Frame"] == "9"
    assert _get(server, "/source/2/frame.jpg")[0] == 404
    listed = server.status()["sources"]
    assert [(s["name"], s["state"], s["shown"]["frame"]) for s in listed] == [
        ("line-a", "live", 5), ("line-b", "reconnecting", 9)]
    with Chromium(tmp_path / "profile", (1000, 700)) as page:
        page.open(server.url)
        shown = page.wait_for("""(() => {
          const t = (id) => (document.getElementById(id) || {}).textContent;
          const ready = [0, 1].every((i) => t(`s${i}-frame`) && t(`s${i}-frame`) !== "-"
                                            && t(`s${i}-state`));
          return ready && [0, 1].map((i) => ({frame: t(`s${i}-frame`), verdict: t(`s${i}-verdict`),
            state: t(`s${i}-state`), name: t(`s${i}-name`),
            size: t(`s${i}-size`), stale: document.getElementById(`s${i}`).className}));
        })()""")
        sources_row = page.evaluate("document.getElementById('set-sources').textContent")
    assert [(s["frame"], s["verdict"], s["name"]) for s in shown] == [
        ("5", "OK", "line-a"), ("9", "NG", "line-b")]
    assert shown[0]["size"] == shown[1]["size"] == f"{HW[1]}x{HW[0]}"
    assert shown[0]["state"] == "live" and "stale" not in shown[0]["stale"]
    assert shown[1]["state"].startswith("reconnecting since ") and "stale" in shown[1]["stale"]
    assert re.fullmatch(r"reconnecting since \d\d:\d\d:\d\d \(\d+ s\)", shown[1]["state"])
    assert sources_row.startswith("line-a: live; line-b: reconnecting since ")


def test_a_camera_password_stays_off_the_page(server):
    context = SinkContext("rtsp://u:pw@cam/x", True, 25.0, "fake.onnx", 0.5)
    server.open(context)
    context.recent_events.appendleft({"frame": 1, "source": "rtsp://u:pw@cam/x",
                                      "image": "00000001_x.png"})
    server.on_frame(replace(_result(1, True, rendered=_frame(9)), source="rtsp://u:pw@cam/x"))
    text = json.dumps(server.status())
    assert "pw" not in text and "rtsp://u:***@cam/x" in text
