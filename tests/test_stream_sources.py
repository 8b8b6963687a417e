"""Several sources in one station (runtime/multi_source.py): the real pipeline, ONNX
Runtime and the tiny trained model of test_stream_support, on short clips."""

from __future__ import annotations

import numpy as np
import pytest
from test_stream_support import (
    MIN_AREA,
    THRESHOLD,
    edgeas,
    make_clip,
    read_events,
    trained_model_path,
)

from edgeas.errors import ConfigError
from edgeas.runtime.command import build_options, run_stream
from edgeas.runtime.station import SourceEntry, StreamOptions

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

PATTERNS = {"a.mp4": "..XX....X...", "b.mp4": ".X..X.", "c.mp4": "X...XX..X."}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {name: make_clip(root / name, pattern, ) for name, pattern in PATTERNS.items()}


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory):
    return str(trained_model_path(tmp_path_factory, dynamic_batch=True))


@pytest.fixture(scope="module")
def alone(dynamic, clips, tmp_path_factory):
    """Each clip streamed on its own: (frame, regions) of its events, and its summary."""
    root = tmp_path_factory.mktemp("alone")
    out = {}
    for name, clip in clips.items():
        opts = StreamOptions(model=dynamic, source=str(clip.path), threshold=THRESHOLD,
                             min_area=MIN_AREA, events_dir=str(root / name))
        summary = run_stream(opts, device="cpu")
        out[name] = ([(e["frame"], e["regions"]) for e in read_events(root / name)], summary)
    return out


def _same_events(got: list, expected: list) -> None:
    assert [f for f, _ in got] == [f for f, _ in expected]
    for (_, one), (_, other) in zip(got, expected):
        # batched inference may round differently: a pixel at the threshold may flip
        assert len(one) == len(other) and np.allclose(one, other, atol=2)


def _batch_sizes(monkeypatch) -> list[int]:
    from edgeas.runtime.backends import OnnxRuntimeBackend

    sizes: list[int] = []
    infer = OnnxRuntimeBackend.infer

    def counting(self, batch):
        sizes.append(batch.shape[0])
        return infer(self, batch)

    monkeypatch.setattr(OnnxRuntimeBackend, "infer", counting)
    return sizes


@pytest.mark.parametrize("names", [("a.mp4", "b.mp4"), ("a.mp4", "b.mp4", "c.mp4")])
def test_sources_batched_decide_as_each_alone(dynamic, clips, alone, names, tmp_path,
                                              monkeypatch):
    sizes = _batch_sizes(monkeypatch)
    opts = StreamOptions(model=dynamic, threshold=THRESHOLD, min_area=MIN_AREA,
                         events_dir=str(tmp_path),
                         sources=tuple(SourceEntry(str(clips[n].path)) for n in names))
    summary = run_stream(opts, device="cpu")
    assert [s["name"] for s in summary["sources"]] == list(names)
    for name, lane in zip(names, summary["sources"]):
        events, single = alone[name]
        _same_events([(e["frame"], e["regions"]) for e in read_events(tmp_path / name)],
                     events)
        assert lane["frames"] == len(PATTERNS[name]) == single["frames"]
        assert lane["ng_frames"] == single["ng_frames"] == PATTERNS[name].count("X")
        assert lane["events"]["written"] == len(events) and lane["failed"] is None
        # the same frame number of two sources must not give one event id on the page
        assert all(e["image"].startswith(f"{name}-") for e in read_events(tmp_path / name))
    assert summary["frames"] == sum(len(PATTERNS[n]) for n in names)
    # one call per round while every clip still has frames: the whole station at once
    assert max(sizes) == len(names) and sum(sizes) == summary["frames"]
    assert len(sizes) == max(len(PATTERNS[n]) for n in names)


def test_a_fixed_batch_takes_its_size_in_turn(tmp_path_factory, clips, alone, tmp_path,
                                              monkeypatch):
    """A model exported with --batch 2 and three sources: calls of two frames (the
    backend pads a lone one), each round starting one source further on."""
    root = trained_model_path(tmp_path_factory).parent
    fixed = root / "model_batch2.onnx"
    if not fixed.is_file():
        edgeas("export", "--checkpoint", str(root / "run" / "last.pt"), "-o", str(fixed),
               "--batch", "2")
    sizes = _batch_sizes(monkeypatch)
    names = ("a.mp4", "b.mp4", "c.mp4")
    opts = StreamOptions(model=str(fixed), threshold=THRESHOLD, min_area=MIN_AREA,
                         events_dir=str(tmp_path),
                         sources=tuple(SourceEntry(str(clips[n].path)) for n in names))
    summary = run_stream(opts, device="cpu")
    assert summary["backend"]["batch"] == 2 and max(sizes) == 2
    for name, lane in zip(names, summary["sources"]):
        _same_events([(e["frame"], e["regions"]) for e in read_events(tmp_path / name)],
                     alone[name][0])
        assert lane["frames"] == len(PATTERNS[name])


def test_a_short_and_a_broken_source_do_not_stop_the_others(tmp_path_factory, clips, alone,
                                                            tmp_path, monkeypatch):
    """A batch-1 model takes the sources one after another; b ends first, a folder source
    breaks after two frames: a is decided to its end as if alone."""
    from edgeas.runtime.sources import FolderSource

    model = str(trained_model_path(tmp_path_factory))  # static batch 1
    folder = tmp_path / "shelf"
    folder.mkdir()
    import cv2

    for i, frame in enumerate(clips["c.mp4"].frames[:6]):
        cv2.imwrite(str(folder / f"{i:02d}.png"), frame)
    read = FolderSource.read

    def breaking(self, timeout=1.0):
        if self.position >= 2:
            raise OSError("the share went away")
        return read(self, timeout)

    monkeypatch.setattr(FolderSource, "read", breaking)
    sizes = _batch_sizes(monkeypatch)
    opts = StreamOptions(model=model, threshold=THRESHOLD, min_area=MIN_AREA,
                         events_dir=str(tmp_path / "ev"),
                         sources=(SourceEntry(str(clips["a.mp4"].path)),
                                  SourceEntry(str(clips["b.mp4"].path)),
                                  SourceEntry(str(folder), name="shelf")))
    summary = run_stream(opts, device="cpu")
    a, b, shelf = summary["sources"]
    _same_events([(e["frame"], e["regions"]) for e in read_events(tmp_path / "ev" / "a.mp4")],
                 alone["a.mp4"][0])
    assert (a["frames"], b["frames"], shelf["frames"]) == (12, 6, 2)
    assert a["failed"] is None and b["failed"] is None and b["state"] == "ended"
    assert shelf["failed"] == "the share went away" and shelf["state"] == "failed"
    assert set(sizes) == {1}


def test_station_file_sources_with_their_own_settings(dynamic, clips, alone, tmp_path):
    station = tmp_path / "station.yaml"
    station.write_text(
        f"model: {dynamic}\nthreshold: {THRESHOLD}\nmin_area: {MIN_AREA}\n"
        "events: {dir: events}\n"
        "sources:\n"
        f"  - {{name: left, uri: {clips['a.mp4'].path}}}\n"
        f"  - {{name: right, uri: {clips['b.mp4'].path}, threshold: 100, min_area: 5,"
        " events: right_events}\n")
    summary = run_stream(build_options(station, {}), device="cpu")
    left, right = summary["sources"]
    assert (left["name"], left["threshold"], left["min_area"]) == ("left", THRESHOLD, MIN_AREA)
    assert (right["name"], right["threshold"], right["min_area"]) == ("right", 100, 5)
    _same_events([(e["frame"], e["regions"]) for e in read_events(tmp_path / "events/left")],
                 alone["a.mp4"][0])
    assert right["ng_frames"] == 0 and right["events"]["dir"] == str(tmp_path / "right_events")
    assert summary["ng_frames"] == left["ng_frames"] == 3


def test_the_live_page_lists_each_sources_settings():
    from edgeas.runtime.server import LiveServer
    from edgeas.runtime.sink import SinkContext, SourceInfo

    server = LiveServer("127.0.0.1", 0)
    try:
        server.open(SinkContext("a", False, None, "m", 0.5, sources=(
            SourceInfo("left", "a", "file", False, None, threshold=0.5, min_area=20),
            SourceInfo("right", "b", "file", False, None, threshold=0.7, min_area=5))))
        got = [(s["name"], s["threshold"], s["min_area"]) for s in server.status()["sources"]]
    finally:
        server.close()
    assert got == [("left", 0.5, 20), ("right", 0.7, 5)]


def test_two_sources_with_one_name_are_a_one_line_error(dynamic, clips, tmp_path):
    a = str(clips["a.mp4"].path)
    result = edgeas("stream", "--model", dynamic, a, a, "--max-frames", "1", check=False)
    assert result.returncode == 2
    assert "two sources are named 'a.mp4'" in result.stderr
    station = tmp_path / "station.yaml"
    station.write_text(f"model: {dynamic}\nsources:\n  - {{name: cam, uri: {a}}}\n"
                       f"  - {{name: cam, uri: {clips['b.mp4'].path}}}\n")
    with pytest.raises(ConfigError, match="two sources are named 'cam'"):
        run_stream(build_options(station, {}), device="cpu")


@pytest.mark.parametrize("text, message", [
    ("source: x.mp4\nsources:\n  - {uri: y.mp4}\n", "both 'source' and 'sources'"),
    ("sources:\n  - {name: a}\n", "sources[0] has no 'uri'"),
    ("sources:\n  - {uri: a.mp4, min_area: -1}\n", "'sources[0].min_area' must be >= 0"),
    ("sources:\n  - {uri: a.mp4, zoom: 2}\n", "unknown key 'zoom'"),
])
def test_bad_sources_in_the_station_file(tmp_path, text, message):
    from edgeas.runtime.station import load_station

    station = tmp_path / "station.yaml"
    station.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_station(station)


@pytest.mark.parametrize("option, message", [
    ({"record": "out.mp4"}, "--record and --show take one source"),
    ({"batch": 4}, "--batch 4 batches the frames of one source"),
])
def test_one_source_options_with_several_are_refused(dynamic, clips, option, message):
    opts = StreamOptions(model=dynamic, **option,
                         sources=(SourceEntry(str(clips["a.mp4"].path)),
                                  SourceEntry(str(clips["b.mp4"].path))))
    with pytest.raises(ConfigError, match=message):
        run_stream(opts, device="cpu")


def test_a_lost_camera_does_not_hold_back_a_file(dynamic, clips, alone):
    """A camera that delivers a few frames and then cannot be reopened stays
    `reconnecting`; the file beside it is decided to its end, every frame."""
    import threading
    import time

    import cv2

    from edgeas.postprocess import resolve
    from edgeas.runtime.backends import open_backend
    from edgeas.runtime.multi_source import MultiPipeline
    from edgeas.runtime.pipeline import Lane
    from edgeas.runtime.sink import Sink
    from edgeas.runtime.sources import LiveSource, SourceSpec, open_source, parse_source

    opened: list[int] = []

    def opener(spec):
        opened.append(1)
        # the first time a real capture (the clip's frames, then its end: the camera
        # "stops delivering"); afterwards nothing opens: the camera is gone
        return cv2.VideoCapture(str(clips["c.mp4"].path) if len(opened) == 1 else "")

    class Seen(Sink):
        name = "seen"

        def open(self, context):
            self.names = [(s.name, s.live) for s in context.sources]
            self.streams: set[int] = set()

        def on_frame(self, result):
            self.streams.add(result.stream)

    backend = open_backend(dynamic, "cpu")
    cam = LiveSource(SourceSpec("rtsp", "rtsp://cam/x", "rtsp://cam/x"), opener).open()
    video = open_source(parse_source(str(clips["a.mp4"].path)))
    seen = Seen()
    try:
        settings = resolve(backend.record, THRESHOLD, MIN_AREA)
        pipe = MultiPipeline(backend, [Lane(cam, settings, "cam"), Lane(video, settings, "a")],
                             settings, [seen], model_label="m")

        def stop_when_the_file_ends() -> None:
            deadline = time.monotonic() + 60
            while not video.ended and time.monotonic() < deadline:
                time.sleep(0.05)
            pipe.stop.set()  # a station with a camera runs until asked to stop

        threading.Thread(target=stop_when_the_file_ends, daemon=True).start()
        summary = pipe.run()
    finally:
        cam.close()
        video.close()
        backend.close()
    camera, a = summary["sources"]
    assert (a["frames"], a["ng_frames"]) == (12, alone["a.mp4"][1]["ng_frames"])
    assert a["state"] == "ended" and camera["state"] in ("reconnecting", "closed")
    assert len(opened) >= 2  # it tried to reconnect while the file went on
    assert seen.names == [("cam", True), ("a", False)] and 1 in seen.streams


def test_the_live_page_has_a_tile_per_source_and_names_their_events(tmp_path_factory,
                                                                    dynamic, tmp_path):
    """Two clips to one LiveServer, read in headless Chromium: two tiles with their names
    and per-source settings, and the NG thumbnails say whose they are."""
    import threading

    from headless_chromium import Chromium

    from edgeas.postprocess import resolve
    from edgeas.runtime.backends import open_backend
    from edgeas.runtime.events import EventLog, EventWriter
    from edgeas.runtime.multi_source import MultiPipeline, PerSource
    from edgeas.runtime.pipeline import Lane
    from edgeas.runtime.server import LiveServer
    from edgeas.runtime.sources import open_source, parse_source

    root = tmp_path_factory.mktemp("live_sources")
    long_clips = [make_clip(root / f"{n}.mp4", PATTERNS[f"{n}.mp4"], repeat=60) for n in "ab"]
    backend = open_backend(dynamic, "cpu")
    sources = [open_source(parse_source(str(c.path))) for c in long_clips]
    server = LiveServer("127.0.0.1", 0)
    lanes = [Lane(src, resolve(backend.record, t, MIN_AREA), name)
             for src, t, name in zip(sources, (THRESHOLD, 0.75), ("left", "right"))]
    writers = [PerSource(EventWriter(EventLog(tmp_path / n, 50, s.spec.uri, prefix=f"{n}-")),
                         k, n) for k, (n, s) in enumerate(zip(("left", "right"), sources))]
    pipe = MultiPipeline(backend, lanes, lanes[0].settings, [*writers, server],
                         model_label="model.onnx")
    runner = threading.Thread(target=pipe.run, daemon=True)
    runner.start()
    try:
        with Chromium(tmp_path / "profile") as page:
            page.open(server.url)
            tiles = page.wait_for("""(() => {
              const n = (i) => (document.getElementById(`s${i}-name`) || {}).textContent;
              const img = document.getElementById("s1-view");
              return n(0) && n(1) && img && img.naturalWidth ? [n(0), n(1)] : null;
            })()""")
            settings = page.wait_for("""(() => {
              const t = document.getElementById("set-sources").textContent;
              return t.includes("right") ? t : null; })()""")
            captions = page.wait_for("""(() => {
              const t = [...document.querySelectorAll("#events a")].map((a) => a.title);
              return t.some((x) => x.startsWith("left ")) &&
                     t.some((x) => x.startsWith("right ")) ? t : null; })()""")
    finally:
        pipe.stop.set()
        runner.join(timeout=30)
        for src in sources:
            src.close()
        backend.close()
    assert tiles == ["left", "right"]
    assert "threshold 0.7500" in settings and "min_area 20" in settings
    assert all(c.split(" ")[0] in ("left", "right") for c in captions)


def test_event_file_prefixes_stay_inside_the_folder():
    from edgeas.runtime.events import event_record, source_prefix

    assert source_prefix("rtsp://user:***@cam/x") == "rtsp_user_cam_x-"
    assert source_prefix("..") == "source-"
    rec = event_record(7, "s", 1.0, 0.5, [], "2026-01-01T00:00:00.000+00:00", "left-")
    assert rec["image"].startswith("left-00000007_") and "/" not in rec["mask"]
    with pytest.raises(ValueError):
        event_record(7, "s", 1.0, 0.5, [], "2026-01-01T00:00:00.000+00:00", "../x-")
