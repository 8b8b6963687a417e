"""Frame-size work only where a sink needs it: the station decides at the model's size,
draws the overlay only for sinks that want it, and for the live page alone at most
1280 px wide whatever the camera gives (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
from test_stream_resolution import MODEL_HW, Keep, SameMaps

from edgeas.postprocess import Settings
from edgeas.runtime import pipeline as pipeline_module
from edgeas.runtime.bench import MemorySource
from edgeas.runtime.pipeline import Pipeline
from edgeas.runtime.render import boxes_to_frame
from edgeas.runtime.server import LIVE_MAX_WIDTH
from edgeas.runtime.sink import Sink


class Small(Keep):
    """Wants every overlay, at most the live page's width."""

    name = "small"
    render_width = LIVE_MAX_WIDTH


class Quiet(Sink):
    """Wants no overlay (as the events writer): counts frames."""

    name = "quiet"

    def __init__(self) -> None:
        self.frames = 0

    def on_frame(self, result) -> None:
        self.frames += 1
        assert result.rendered is None


def _stream(frame_hw, sinks, spy: dict) -> None:
    frame = np.full((*frame_hw, 3), 90, np.uint8)
    settings = Settings(0.5, "override", 0, "fused", smoothing=())
    Pipeline(SameMaps(), MemorySource([frame], 3), settings, sinks).run()


@pytest.fixture
def spy(monkeypatch):
    """Every output size the pipeline aggregates to, and every canvas it draws on."""
    seen = {"aggregate": [], "render": []}
    real_aggregate, real_render = pipeline_module.aggregate, pipeline_module.render

    def aggregate(maps, out_hw, *args, **kw):
        seen["aggregate"].append(tuple(out_hw))
        return real_aggregate(maps, out_hw, *args, **kw)

    def render(canvas, *args, **kw):
        seen["render"].append(canvas.shape[:2])
        return real_render(canvas, *args, **kw)

    monkeypatch.setattr(pipeline_module, "aggregate", aggregate)
    monkeypatch.setattr(pipeline_module, "render", render)
    return seen


def test_a_station_without_a_drawing_sink_never_makes_a_frame_size_map(spy):
    quiet = Quiet()
    _stream((2160, 3840), [quiet], spy)
    assert quiet.frames == 3
    assert spy["aggregate"] == [MODEL_HW] * 3 and spy["render"] == []


def test_the_live_page_alone_gets_a_bounded_overlay_with_boxes_scaled_to_it(spy):
    small = Small()
    _stream((1080, 1920), [small], spy)
    assert spy["aggregate"] == [MODEL_HW] * 3
    assert spy["render"] == [(720, 1280)] * 3
    result = small.results[0]
    assert result.rendered.shape == (720, 1280, 3)
    # the event's boxes stay in frame pixels; the drawing used the same regions scaled
    assert result.regions == boxes_to_frame([[140, 80, 14, 12]], MODEL_HW, (1080, 1920))


def test_a_full_size_sink_gets_the_frame_size_and_small_frames_are_not_enlarged(spy):
    small, full = Small(), Keep()
    _stream((1080, 1920), [small, full], spy)
    assert spy["render"] == [(1080, 1920)] * 3
    assert small.results[0].rendered is full.results[0].rendered  # drawn once
    spy["render"].clear()
    _stream((480, 640), [Small()], spy)
    assert spy["render"] == [(480, 640)] * 3


def test_the_heat_overlay_coloured_at_model_size_matches_colouring_the_resized_map():
    """render colours the model-size map, then resizes the colours (cheaper than colouring
    every frame pixel): the same picture as colouring the resized map, up to a few levels
    where JET turns a corner."""
    import cv2

    from edgeas.runtime.render import HEAT_ALPHA, heat, render

    yy, xx = np.mgrid[0:MODEL_HW[0], 0:MODEL_HW[1]].astype(np.float32)
    amap = np.exp(-((yy - 80) ** 2 + (xx - 140) ** 2) / (2 * 30.0**2)).astype(np.float32)
    frame = np.full((720, 1280, 3), 90, np.uint8)
    shown = render(frame, amap, None, [], False, float(amap.max()), 0.5)
    big = cv2.resize(amap, (1280, 720))
    want = cv2.addWeighted(heat(big, 0.5), HEAT_ALPHA, frame, 1 - HEAT_ALPHA, 0)
    below_bar = slice(60, None)  # the status bar is drawn over the top rows
    diff = np.abs(shown[below_bar].astype(int) - want[below_bar].astype(int))
    assert np.percentile(diff, 99) <= 1 and diff.max() <= 6  # measured: 1 and 3
