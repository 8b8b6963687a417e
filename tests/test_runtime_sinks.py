"""Sinks: the pipeline fans every frame out to each sink (open -> on_frame* -> on_event ->
close, close also on failure), times each one, renders only when a sink needs it, and
one factory builds the sinks a station's options ask for. A fake backend keeps this
free of ONNX Runtime: bright frames score 1 (NG at threshold 0.5), dark ones 0."""

from __future__ import annotations

import json
import logging
import time

import cv2
import numpy as np
import pytest

from edgeas.errors import StreamError
from edgeas.postprocess import Settings
from edgeas.preprocess import Recipe
from edgeas.runtime.bench import MemorySource
from edgeas.runtime.events import EventLog, EventWriter
from edgeas.runtime.pipeline import Pipeline
from edgeas.runtime.server import LiveServer
from edgeas.runtime.sink import SINK_BUDGET_S, FrameResult, Sink, SinkContext
from edgeas.runtime.sinks import Recorder, build_sinks
from edgeas.runtime.station import StreamOptions, load_station

HW = (48, 64)
DARK, BRIGHT = np.zeros((*HW, 3), np.uint8), np.full((*HW, 3), 255, np.uint8)
STATUS_KEYS = {"frame", "score", "verdict", "threshold", "regions", "latency_ms", "fps",
               "dropped", "source", "model"}


class FakeBackend:
    """The pipeline's view of a backend: a recipe, a batch size, infer -> 4 levels."""

    name, device, batch = "fake", "cpu", None
    recipe = Recipe((32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at, self.calls = fail_at, 0

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        self.calls += 1
        if self.fail_at is not None and self.calls > self.fail_at:
            raise RuntimeError("the accelerator fell off")
        score = (batch.mean(axis=(1, 2, 3)) > 0).astype(np.float32)  # bright: 1, dark: 0
        return [np.ones((len(batch), s, s), np.float32) * score[:, None, None]
                for s in (16, 8, 4, 2)]

    def describe(self) -> dict:
        return {"backend": self.name}


class Calls(Sink):
    """Records every call it gets."""

    def __init__(self, name: str = "calls", render: bool = False, stop_at: int | None = None,
                 fail_at: int | None = None, sleep_s: float = 0.0) -> None:
        self.name, self.render, self.stop_at = name, render, stop_at
        self.fail_at, self.sleep_s = fail_at, sleep_s
        self.calls: list[tuple] = []
        self.results: list[FrameResult] = []
        self.closed_with: list[BaseException | None] = []

    @property
    def needs_render(self) -> bool:
        return self.render

    def open(self, context: SinkContext) -> None:
        self.context = context
        self.calls.append(("open",))

    def on_frame(self, result: FrameResult) -> bool:
        if result.index == self.fail_at:
            raise StreamError(f"{self.name} broke on frame {result.index}")
        time.sleep(self.sleep_s)
        self.calls.append(("frame", result.index))
        self.results.append(result)
        return result.index != self.stop_at

    def on_event(self, result: FrameResult) -> None:
        self.calls.append(("event", result.index))

    def close(self, error: BaseException | None = None) -> None:
        self.calls.append(("close",))
        self.closed_with.append(error)

    def summary(self) -> dict:
        return {self.name: len(self.results)}


def _pipeline(frames: list[np.ndarray], sinks, backend=None, **kw) -> Pipeline:
    source = MemorySource(frames, len(frames))
    return Pipeline(backend or FakeBackend(), source, Settings(0.5, "override", 0, "fused"),
                    sinks, model_label="fake.onnx", **kw)


def test_every_sink_gets_open_frames_events_and_close_in_order():
    a, b = Calls("a"), Calls("b")
    pattern = [DARK, BRIGHT, DARK, BRIGHT, BRIGHT]
    pipeline = _pipeline(pattern, [a, b])
    summary = pipeline.run()
    expected = [("open",)]
    for i, frame in enumerate(pattern):
        expected.append(("frame", i))
        if frame is BRIGHT:
            expected.append(("event", i))
    expected.append(("close",))
    assert a.calls == expected and b.calls == expected
    assert a.closed_with == [None]  # closed once, after a run that ended well
    assert summary["frames"] == 5 and summary["ng_frames"] == 3
    assert summary["a"] == summary["b"] == 5  # each sink adds to the summary
    assert a.context.source == "memory://5-frames" and a.context.model == "fake.onnx"
    assert a.context.threshold == 0.5 and a.context.live is False
    # what the live page shows of the station and its sources
    (info,) = a.context.sources
    assert (info.name, info.uri, info.kind, info.live) == ("memory", "memory://5-frames",
                                                          "file", False)
    assert info.condition()[0] == "ended"  # asked after the run: the source ran out
    station = a.context.station
    assert station["model"] == "fake.onnx" and station["backend"] == "fake"
    assert station["threshold"] == {"value": 0.5, "origin": "override", "overridden": True,
                                    "policy": None, "param": None, "fitted": None}
    assert station["min_area"] == 0 and station["aggregation"] == {
        "mode": "fused", "smoothing": "official", "levels": "all"}
    r = a.results[1]
    # a constant map of 1 stays 1 up to the float32 rounding of the smoothing kernel's sum
    assert (r.index, r.is_ng, r.threshold, r.model) == (1, True, 0.5, "fake.onnx")
    assert r.score == pytest.approx(1.0, abs=1e-6)
    # decided at the model's size (32x32), boxes in frame pixels (issue 12)
    assert r.frame is pattern[1] and r.amap.shape == r.mask.shape == FakeBackend.recipe.input_size
    assert r.regions == [[0, 0, 64, 48]] and r.latency_s > 0
    assert set(r.status()) == STATUS_KEYS == set(pipeline.last)
    assert summary["stages"]["sink:a"]["n"] == summary["stages"]["sink:b"]["n"] == 5


def test_rendering_happens_only_when_a_sink_needs_it():
    blind = Calls("blind")
    summary = _pipeline([BRIGHT, DARK], [blind]).run()
    assert all(r.rendered is None for r in blind.results)
    assert summary["stages"]["render"] is None  # never drawn

    class EveryOther(Calls):
        @property
        def needs_render(self) -> bool:  # asked once per frame, before rendering
            return len(self.results) % 2 == 0

    picky = EveryOther("picky")
    summary = _pipeline([BRIGHT, DARK, DARK, BRIGHT], [Calls("blind"), picky]).run()
    assert [r.rendered is not None for r in picky.results] == [True, False, True, False]
    assert picky.results[0].rendered.shape == (*HW, 3)
    assert summary["stages"]["render"]["n"] == 2

    bench = Calls("bench")  # `render=True`: the benchmarks draw every frame
    summary = _pipeline([DARK, DARK, DARK], [bench], render=True).run()
    assert all(r.rendered is not None for r in bench.results)
    assert summary["stages"]["render"]["n"] == 3


def test_a_sink_can_stop_the_stream():
    quitter = Calls("quitter", stop_at=2)  # the window's `q`
    summary = _pipeline([DARK] * 200, [quitter]).run()
    assert summary["stopped"] is True
    assert 3 <= summary["frames"] < 200  # frames already read still flow through
    assert quitter.calls[-1] == ("close",) and quitter.closed_with == [None]


def test_sinks_are_closed_with_the_error_when_the_run_fails():
    ok, broken = Calls("ok"), Calls("broken", fail_at=2)
    with pytest.raises(StreamError, match="broken broke on frame 2"):
        _pipeline([DARK] * 6, [ok, broken]).run()
    for sink in (ok, broken):
        assert sink.calls[-1] == ("close",) and len(sink.closed_with) == 1
        assert isinstance(sink.closed_with[0], StreamError)

    watcher = Calls("watcher")  # the backend fails: the sinks hear of it too
    with pytest.raises(RuntimeError, match="fell off"):
        _pipeline([DARK] * 6, [watcher], backend=FakeBackend(fail_at=2)).run()
    assert isinstance(watcher.closed_with[0], RuntimeError)

    class NoOpen(Calls):
        def open(self, context: SinkContext) -> None:
            raise StreamError("cannot open")

    first, failing, last = Calls("first"), NoOpen("failing"), Calls("last")
    with pytest.raises(StreamError, match="cannot open"):
        _pipeline([DARK] * 3, [first, failing, last]).run()
    for sink in (first, failing, last):  # every sink closed once, none fed a frame
        assert len(sink.closed_with) == 1 and not sink.results


def test_a_slow_sink_is_timed_in_the_stage_stats_and_warned_about(caplog):
    slow = Calls("slow", sleep_s=SINK_BUDGET_S + 0.02)
    with caplog.at_level(logging.WARNING, logger="edgeas.stream"):
        summary = _pipeline([DARK] * 3, [Calls("quick"), slow]).run()
    stages = summary["stages"]
    assert stages["sink:slow"]["n"] == 3 and stages["sink:slow"]["p50_ms"] >= 70
    assert stages["sink:quick"]["p50_ms"] < 20
    assert stages["sinks"]["p50_ms"] >= stages["sink:slow"]["p50_ms"]
    assert caplog.text.count("the slow sink took") == 1  # once per sink, not per frame


def test_sink_names_are_unique():
    with pytest.raises(ValueError, match="unique"):
        _pipeline([DARK], [Calls("x"), Calls("x")])


def test_events_and_recording_as_sinks(tmp_path):
    writer = EventWriter(EventLog(tmp_path / "ev", 10, "memory://5-frames"))
    recorder = Recorder(tmp_path / "rec.avi", 25)
    seen = Calls("seen")
    pattern = [DARK, BRIGHT, DARK, DARK, BRIGHT]
    summary = _pipeline(pattern, [writer, recorder, seen]).run()
    # the writer declared its folder to the other sinks (the live page serves from it)
    (store,) = seen.context.event_stores
    assert store.folder == tmp_path / "ev" and store.budget_bytes == 10 * 2**20
    assert store.used_bytes() == writer.events.total_bytes > 0
    lines = [json.loads(s) for s in (tmp_path / "ev" / "events.jsonl").read_text().splitlines()]
    assert [e["frame"] for e in lines] == [1, 4]  # the writer was drained on close
    assert lines[0]["source"] == "memory://5-frames" and lines[0]["threshold"] == 0.5
    assert summary["events"] == {"dir": str(tmp_path / "ev"), "written": 2, "deleted": 0,
                                 "failed": 0, "bytes": writer.events.total_bytes}
    assert summary["recording"] == {"path": str(tmp_path / "rec.avi"), "frames": 5}
    cap = cv2.VideoCapture(str(tmp_path / "rec.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    assert not list(tmp_path.glob(".*partial*"))

    failed = Recorder(tmp_path / "failed.avi", 25)
    with pytest.raises(StreamError):
        _pipeline([DARK] * 4, [failed, Calls("broken", fail_at=2)]).run()
    assert not (tmp_path / "failed.avi").exists()  # a failed run's recording is deleted
    assert not list(tmp_path.glob(".*partial*"))


def test_the_live_page_publishes_the_status_and_the_events_written():
    server = LiveServer("127.0.0.1", 0)
    try:
        context = SinkContext("memory://x", False, None, "fake.onnx", 0.5)
        server.open(context)
        assert server.needs_render  # the first frame is due (idle refresh)
        event = {"frame": 3, "score": 1.0, "image": "00000003_t.png"}
        context.recent_events.appendleft(event)  # what a writer adds
        result = FrameResult(3, "memory://x", BRIGHT, np.ones(HW, np.float32),
                             np.ones(HW, np.uint8), True, 1.0, 0.5, [[0, 0, 64, 48]], 0.01, 20.0,
                             0, "fake.onnx", rendered=BRIGHT)
        server.on_frame(result)
        status = server.status()
        assert set(status) == {"running", "station", "sources", "events"}
        (source,) = status["sources"]
        # the picture served and the newest frame decided: here the same frame
        assert source["shown"] == dict(result.status(), seq=1)
        assert source["latest"] == result.status() and set(result.status()) == STATUS_KEYS
        assert status["events"]["recent"] == [dict(event, id="00000003_t")]
        view = server.state.views[0]
        assert view.seq == 1 and view.frame is BRIGHT
        assert not server.needs_render  # no viewer, and the refresh is not due yet
    finally:
        server.close()
        server.close()  # closing twice is harmless (the pipeline and its owner may both)
    assert server.status()["running"] is False


def test_the_factory_builds_the_sinks_the_options_ask_for(tmp_path):
    assert build_sinks(StreamOptions(), MemorySource([DARK], 1)) == []
    station = tmp_path / "station.yaml"
    station.write_text("model: m.onnx\nsource: frames\nrecord: out/rec.avi\nserve: 0\n"
                       "events:\n  dir: ev\n  budget_mb: 5\n")
    sinks = build_sinks(load_station(station), MemorySource([DARK], 1))
    try:
        # the live page brings its /metrics (prometheus-client is in the runtime extra)
        assert [s.name for s in sinks] == ["events", "recording", "live", "metrics"]
        events, recording, live, _ = sinks
        assert events.events.dir == tmp_path / "ev" and events.events.budget == 5 * 2**20
        assert recording.path == tmp_path / "out" / "rec.avi"
        assert live.host == "127.0.0.1" and live.port > 0
    finally:
        for sink in sinks:
            sink.close()


def test_a_sink_that_cannot_be_made_closes_the_ones_made_before(tmp_path, monkeypatch):
    closed = []
    monkeypatch.setattr(EventWriter, "close", lambda self, error=None: closed.append(error))
    options = StreamOptions(events_dir=str(tmp_path / "ev"), record=str(tmp_path / "r.xyz"))
    with pytest.raises(StreamError, match="unknown video type"):
        build_sinks(options, MemorySource([DARK], 1))
    assert len(closed) == 1 and isinstance(closed[0], StreamError)
