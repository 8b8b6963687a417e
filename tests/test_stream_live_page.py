"""The live page (`--serve`) in headless Chromium while a clip streams through the trained
tiny model: the header above the picture always describes that picture; the settings
in force; NG events as thumbnails that open; the README's screenshot; the MJPEG stream
read by OpenCV and by ffprobe.

CI installs: chromium ffmpeg (Debian). Skipped with the reason when they are missing.
The README's picture of the page is this module's screenshot:
`EDGEAS_README_SCREENSHOT=docs/live-page.png pytest tests/test_stream_live_page.py -k readme`.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from headless_chromium import Chromium, data_url_bytes
from test_stream_support import (
    MIN_AREA,
    SIZE,
    THRESHOLD,
    Clip,
    make_clip,
    read_events,
    require_binary,
    trained_model_path,
)

from edgeas.errors import ConfigError
from edgeas.postprocess import Settings, resolve, smoothing_name
from edgeas.runtime import open_backend
from edgeas.runtime.backends import Backend
from edgeas.runtime.events import EventLog, EventWriter, event_id
from edgeas.runtime.pipeline import Pipeline
from edgeas.runtime.render import NG_COLOUR, OK_COLOUR
from edgeas.runtime.server import LiveServer, parse_address
from edgeas.runtime.sources import open_source, parse_source

PATTERN = "....XX....XX"  # 12 different images, repeated: frame i shows image i % 12
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Live:
    server: LiveServer
    pipeline: Pipeline
    backend: Backend
    settings: Settings
    clip: Clip
    events: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A pipeline streaming a long clip to a LiveServer on a free port of 127.0.0.1."""
    model = trained_model_path(tmp_path_factory)
    root = tmp_path_factory.mktemp("live")
    clip = make_clip(root / "line.mp4", PATTERN, repeat=150)
    backend = open_backend(model, "cpu")
    source = open_source(parse_source(video=str(clip.path)))
    server = LiveServer("127.0.0.1", 0)
    events = EventWriter(EventLog(root / "events", 100, source.spec.uri))
    settings = resolve(backend.record, THRESHOLD, MIN_AREA)
    pipeline = Pipeline(backend, source, settings, [events, server], model_label="model.onnx")
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while pipeline.stats.frames < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    yield Live(server, pipeline, backend, settings, clip, root / "events")
    pipeline.stop.set()
    runner.join(timeout=30)
    events.close()
    server.close()
    source.close()
    backend.close()


# The header of tile 0 and the picture under it, read in one evaluation (JavaScript runs
# one task at a time: the page cannot swap the picture halfway through).
SAMPLE = """(() => {
  const img = document.getElementById("s0-view");
  if (!img || !img.naturalWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  canvas.getContext("2d").drawImage(img, 0, 0);
  const t = (id) => document.getElementById(id).textContent;
  return {verdict: t("s0-verdict"), frame: t("s0-frame"), score: t("s0-score"),
          size: t("s0-size"), png: canvas.toDataURL("image/png")};
})()"""
BAR = 24  # rows of the status bar the overlay draws at the top of the picture


def _details(image: np.ndarray) -> np.ndarray:
    """The fine texture of a frame below the status bar, normalised: the overlay's heat map
    is smooth, so this still tells the clip's images apart once drawn over."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)[BAR:]
    fine = gray - cv2.GaussianBlur(gray, (0, 0), 2)
    return (fine - fine.mean()) / (fine.std() + 1e-6)


def _picture(image: np.ndarray, clip: Clip) -> tuple[int, str]:
    """Which of the clip's 12 images the picture shows, and the verdict drawn on it (the
    colour of its status bar), read from the pixels alone."""
    fine = _details(image)
    match = [float((fine * _details(f)).mean()) for f in clip.frames[: len(PATTERN)]]
    best = int(np.argmax(match))
    assert match[best] > 0.4 and sorted(match)[-2] < 0.2, match  # an unambiguous match
    colour = image[3, 3].astype(int)
    near = {v: int(np.abs(colour - np.array(c)).sum()) for v, c in
            (("OK", OK_COLOUR), ("NG", NG_COLOUR))}
    verdict = min(near, key=near.get)
    assert near[verdict] < 60, colour
    return best, verdict


def test_the_header_describes_the_picture_under_it(live, tmp_path):
    """Issue 19: the header said "OK, score 0.2617" over a picture stamped "NG score
    0.5329". Over a run, the frame number and verdict in the header must be those of the
    picture shown: which clip image it is and the verdict it has drawn on it."""
    seen = []
    with Chromium(tmp_path / "profile") as page:
        page.open(live.server.url)
        page.wait_for(SAMPLE)
        for _ in range(30):
            sample = page.evaluate(SAMPLE)
            image = cv2.imdecode(np.frombuffer(data_url_bytes(sample["png"]), np.uint8),
                                 cv2.IMREAD_COLOR)
            position, drawn = _picture(image, live.clip)
            frame = int(sample["frame"])
            assert (frame % len(PATTERN), sample["verdict"]) == (position, drawn), sample["frame"]
            assert sample["size"] == f"{SIZE}x{SIZE}"
            seen.append((frame, sample["verdict"], sample["score"]))
            time.sleep(0.15)
    frames = [f for f, _, _ in seen]
    assert frames == sorted(frames) and len(set(frames)) >= 5, seen  # it kept moving
    assert {v for _, v, _ in seen} == {"OK", "NG"}, seen
    assert len({s for _, _, s in seen}) >= 3


SETTINGS = ["model", "precision", "backend", "device", "threshold", "policy", "min-area",
            "aggregation", "sources", "events", "disk"]


def test_the_page_says_what_the_station_is_set_to(live, tmp_path):
    with Chromium(tmp_path / "profile") as page:
        page.open(live.server.url)
        keys = json.dumps(SETTINGS)
        shown = page.wait_for(f"""(() => {{
          const v = {keys}.map((k) => document.getElementById("set-" + k).textContent);
          return v.every((t) => t && t !== "-") && v;
        }})()""")
    shown = dict(zip(SETTINGS, shown))
    desc, record = live.backend.describe(), live.backend.record
    fitted = record.threshold
    assert shown["model"] == f"model.onnx ({desc['preset']}, {SIZE}x{SIZE})"
    assert shown["precision"] == record.precision == "fp32"
    assert shown["backend"] == desc["backend"] and "onnxruntime" in shown["backend"]
    assert shown["device"] == "cpu"
    assert shown["threshold"] == f"{THRESHOLD:.4f} (override; the model's: {fitted.value:.4f})"
    assert shown["policy"] == f"{fitted.policy} {fitted.param:g} (not in force: overridden)"
    assert shown["min-area"] == f"{MIN_AREA} model px"
    assert shown["aggregation"] == (f"{live.settings.mode}, smoothing "
                                    f"{smoothing_name(record.aggregation.blur)}, levels all")
    assert shown["sources"] == "line.mp4: reading"
    assert shown["events"] == str(live.events)
    assert re.fullmatch(r"\d+\.\d MB of 100 MB \(\d+%\)", shown["disk"]), shown["disk"]


def test_ng_events_are_thumbnails_that_open_the_event_image(live, tmp_path):
    with Chromium(tmp_path / "profile") as page:
        page.open(live.server.url)
        listed = page.wait_for("""(() => {
          const links = [...document.querySelectorAll("#events a")];
          const loaded = links.length >= 3 && links.every((a) => {
            const img = a.querySelector("img");
            return img.complete && img.naturalWidth > 0;
          });
          return loaded && links.map((a) => ({id: a.dataset.id, href: a.getAttribute("href"),
            width: a.querySelector("img").naturalWidth}));
        })()""", timeout=60)
        page.evaluate("document.querySelector('#events a').click()")
        opened = page.wait_for("""(() => {
          const img = document.getElementById("zoom-img");
          return !document.getElementById("zoom").hidden && img.complete && img.naturalWidth
                 && {src: img.getAttribute("src"), width: img.naturalWidth,
                     height: img.naturalHeight};
        })()""")
    written = {event_id(r): r for r in read_events(live.events)}
    ids = [e["id"] for e in listed]
    assert 3 <= len(ids) <= 10 and set(ids) <= set(written)  # bounded, all real events
    frames = [written[i]["frame"] for i in ids]
    assert frames == sorted(frames, reverse=True)  # newest first
    assert all(e["href"] == f"events/{e['id']}/image.jpg" and e["width"] == SIZE for e in listed)
    assert opened == {"src": live.server.url + listed[0]["href"], "width": SIZE, "height": SIZE}
    # the full image is the event's frame with its mask drawn: red where the mask is
    newest = written[ids[0]]
    with urllib.request.urlopen(live.server.url + listed[0]["href"], timeout=10) as r:
        full = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
    saved = cv2.imread(str(live.events / newest["image"]))
    mask = cv2.imread(str(live.events / newest["mask"]), cv2.IMREAD_GRAYSCALE) > 0
    assert full.shape == saved.shape and mask.any()

    def redness(img: np.ndarray) -> float:
        return float((img[..., 2].astype(int) - img[..., 0])[mask].mean())

    assert redness(full) > redness(saved) + 40


def test_a_screenshot_of_the_page_for_the_readme(live, tmp_path):
    """An 800 px wide screenshot with an NG frame on screen; with EDGEAS_README_SCREENSHOT
    set, written there (a path from the repository's root) for the README."""
    from PIL import Image  # scikit-image's dependency (dev extra): palette PNGs

    with Chromium(tmp_path / "profile", (800, 600)) as page:
        page.open(live.server.url)
        page.wait_for("""[...document.querySelectorAll("#events img")].filter(
                           (i) => i.complete && i.naturalWidth).length >= 8
                         && document.getElementById("set-disk").textContent !== "-" """,
                      timeout=60)
        height = page.evaluate("document.documentElement.scrollHeight")
        page.call("Emulation.setDeviceMetricsOverride", {
            "width": 800, "height": height, "deviceScaleFactor": 1, "mobile": False})
        where = """(() => {
          const r = (id) => { const b = document.getElementById(id).getBoundingClientRect();
                              return [Math.round(b.left), Math.round(b.top)]; };
          return {frame: document.getElementById("s0-frame").textContent,
                  verdict: document.getElementById("s0-verdict").textContent,
                  view: r("s0-view"), badge: r("s0-verdict")};
        })()"""
        for _ in range(100):  # until the screenshot catches an NG picture, unchanged
            before = page.evaluate(where)
            if before["verdict"] == "NG":
                png = page.screenshot()
                if page.evaluate(where) == before:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("no NG picture stayed on screen long enough for a screenshot")
    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert shot.shape == (height, 800, 3)
    x, y = before["view"]
    assert np.abs(shot[y + 3, x + 3].astype(int) - NG_COLOUR).sum() < 60  # the picture's bar
    x, y = before["badge"]
    assert shot[y + 4, x + 4, 2] > 150 > shot[y + 4, x + 4, 1]  # and the header's badge: red
    small = io.BytesIO()
    rgb = Image.fromarray(cv2.cvtColor(shot, cv2.COLOR_BGR2RGB))
    rgb.quantize(48, method=Image.Quantize.MEDIANCUT).save(small, "PNG", optimize=True)
    assert len(small.getvalue()) < 120_000  # small enough to commit (~85 kB)
    (tmp_path / "live-page.png").write_bytes(small.getvalue())
    if os.environ.get("EDGEAS_README_SCREENSHOT"):
        out = REPO / os.environ["EDGEAS_README_SCREENSHOT"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(small.getvalue())


def test_opencv_and_ffprobe_read_the_mjpeg_stream(live):
    server = live.server
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
    server = live.server
    with urllib.request.urlopen(server.url + "status.json", timeout=10) as r:
        status = json.load(r)
    assert status["running"] is True and status["station"]["model"] == "model.onnx"
    (source,) = status["sources"]
    assert (source["name"], source["kind"], source["state"]) == ("line.mp4", "file", "reading")
    assert {"frame", "score", "verdict", "seq"} <= set(source["shown"])
    assert {"frame", "fps", "latency_ms", "dropped"} <= set(source["latest"])
    assert source["latest"]["frame"] >= source["shown"]["frame"]
    assert status["events"]["folders"][0]["dir"] == str(live.events)
    with urllib.request.urlopen(server.url + "frame.jpg", timeout=10) as r:
        data, frame = r.read(), int(r.headers["X-Edgeas-Frame"])
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (SIZE, SIZE, 3) and frame >= 0
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(server.url + "nothing", timeout=10)


def test_serve_addresses_default_to_loopback():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address(":9000") == ("127.0.0.1", 9000)
    assert parse_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_address("[::1]:8081") == ("::1", 8081)
    with pytest.raises(ConfigError, match="port"):
        parse_address("127.0.0.1:http")
