"""The live page (`--serve`) in headless Chromium: a frame is shown and the score changes;
the MJPEG stream is read by OpenCV and by ffprobe.

CI installs: chromium ffmpeg (Debian). Skipped with the reason when they are missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest
from test_stream_support import (
    MIN_AREA,
    SIZE,
    THRESHOLD,
    make_clip,
    require_binary,
    trained_model_path,
)

from edgeas.errors import ConfigError
from edgeas.postprocess import resolve
from edgeas.runtime import open_backend
from edgeas.runtime.events import EventLog, EventWriter
from edgeas.runtime.pipeline import Pipeline
from edgeas.runtime.server import LiveServer, parse_address
from edgeas.runtime.sources import open_source, parse_source

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A pipeline streaming a long clip to a LiveServer on a free port of 127.0.0.1."""
    model = trained_model_path(tmp_path_factory)
    root = tmp_path_factory.mktemp("live")
    clip = make_clip(root / "line.mp4", "....XX....XX", repeat=150)
    backend = open_backend(model, "cpu")
    source = open_source(parse_source(video=str(clip.path)))
    server = LiveServer("127.0.0.1", 0)
    events = EventWriter(EventLog(root / "events", 100, source.spec.uri))
    settings = resolve(backend.record, THRESHOLD, MIN_AREA)
    pipeline = Pipeline(backend, source, settings, [events, server])
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while pipeline.stats.frames < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    yield server, pipeline, root
    pipeline.stop.set()
    runner.join(timeout=30)
    events.close()
    server.close()
    source.close()
    backend.close()


def _chromium(root, name: str, *args: str) -> subprocess.CompletedProcess:
    exe = require_binary("chromium")
    # a fresh profile per run: nothing cached, nothing shared between runs
    profile = root / f"profile-{name}"
    return subprocess.run([exe, *CHROME_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90)


def _dom_values(html: str) -> dict[str, str]:
    return dict(re.findall(r'id="([a-z-]+)"[^>]*>([^<]*)<', html))


def test_the_page_shows_a_frame_and_a_changing_score(live):
    server, pipeline, root = live
    seen = []
    for i in range(3):
        run = _chromium(root, f"dom{i}", "--virtual-time-budget=3000", "--dump-dom", server.url)
        assert run.returncode == 0, run.stderr[-2000:]
        seen.append(_dom_values(run.stdout))
        time.sleep(0.5)
    for values in seen:
        assert values["frame-size"] == f"{SIZE}x{SIZE}"  # the MJPEG image was decoded
        assert values["verdict"] in ("OK", "NG")
        assert float(values["threshold"]) == THRESHOLD and float(values["fps"]) > 0
    frames = [int(v["frame"]) for v in seen]
    assert frames == sorted(frames) and frames[-1] > frames[0]
    assert len({v["score"] for v in seen}) >= 2, seen
    assert pipeline.stats.frames > 5


def test_a_screenshot_of_the_page_shows_the_annotated_frame(live):
    server, _, root = live
    shot = root / "page.png"
    run = _chromium(root, "shot", "--window-size=1000,800", "--virtual-time-budget=3000",
                    f"--screenshot={shot}", server.url)
    assert run.returncode == 0, run.stderr[-2000:]
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (800, 1000)
    # the view: 16 px margin below a ~52 px header, 640 px wide (the frame scaled up)
    view = img[90:500, 30:620].astype(np.float32)
    background = img[780:, 900:].astype(np.float32)
    assert view.std() > 20  # a textured photo with a heat map, not an empty box
    assert np.abs(view.mean(axis=(0, 1)) - background.mean(axis=(0, 1))).max() > 20


def test_opencv_and_ffprobe_read_the_mjpeg_stream(live):
    server, _, _ = live
    url = server.url + "stream.mjpg"
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    assert cap.isOpened()
    frames = [cap.read()[1] for _ in range(3)]
    cap.release()
    assert all(f is not None and f.shape == (SIZE, SIZE, 3) for f in frames)
    ffprobe = require_binary("ffprobe")
    run = subprocess.run([ffprobe, "-v", "error", "-show_entries",
                          "stream=codec_name,width,height", "-of", "json", url],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    (stream,) = json.loads(run.stdout)["streams"]
    assert stream == {"codec_name": "mjpeg", "width": SIZE, "height": SIZE}


def test_status_json_and_the_single_frame(live):
    server, _, _ = live
    with urllib.request.urlopen(server.url + "status.json", timeout=10) as r:
        status = json.load(r)
    assert {"frame", "score", "verdict", "fps", "latency_ms", "events", "dropped"} <= set(status)
    assert status["running"] is True
    with urllib.request.urlopen(server.url + "frame.jpg", timeout=10) as r:
        data = r.read()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (SIZE, SIZE, 3)
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(server.url + "nothing", timeout=10)


def test_serve_addresses_default_to_loopback():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address(":9000") == ("127.0.0.1", 9000)
    assert parse_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_address("[::1]:8081") == ("::1", 8081)
    with pytest.raises(ConfigError, match="port"):
        parse_address("127.0.0.1:http")
