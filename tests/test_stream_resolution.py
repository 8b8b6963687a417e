"""One resolution for decisions: the station decides at the model's input size whatever
the camera delivers, so a threshold and min_area (model pixels) mean what they meant in
`edgeas eval` and when the threshold was fitted; boxes, the drawn outline and the saved
mask are scaled to the frame and line up. A fake backend gives every frame the same
level maps, so only the frame size differs between runs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgeas.errors import ConfigError
from edgeas.postprocess import Settings
from edgeas.preprocess import Recipe
from edgeas.runtime.bench import MemorySource
from edgeas.runtime.events import EventLog, EventWriter
from edgeas.runtime.pipeline import Pipeline
from edgeas.runtime.render import boxes_to_frame, mask_to_frame
from edgeas.runtime.sink import FrameResult, Sink

MODEL_HW = (224, 224)
BLOB = (slice(40, 46), slice(70, 77))  # res1 (112 x 112) pixels: ~12 x 14 model pixels


class SameMaps:
    """Every image gets a blob of 1.0 in res1 (the other levels are 1): the map's blob
    covers the same model pixels whatever the frame was."""

    name, device, batch = "fake", "cpu", None
    recipe = Recipe(MODEL_HW, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        res1 = np.full((len(batch), 112, 112), 0.05, np.float32)
        res1[(slice(None), *BLOB)] = 1.0
        return [res1] + [np.ones((len(batch), s, s), np.float32) for s in (56, 28, 14)]

    def describe(self) -> dict:
        return {"backend": self.name}


class Keep(Sink):
    name = "keep"

    def __init__(self) -> None:
        self.results: list[FrameResult] = []

    @property
    def needs_render(self) -> bool:
        return True

    def on_frame(self, result: FrameResult) -> None:
        self.results.append(result)


def _run(frame_hw, min_area: int, events_dir=None) -> FrameResult:
    frame = np.full((*frame_hw, 3), 128, np.uint8)
    keep = Keep()
    sinks = [keep] + ([EventWriter(EventLog(events_dir, 50))] if events_dir else [])
    # no smoothing: the blob's size in model pixels is then known by hand
    settings = Settings(0.5, "override", min_area, "fused", smoothing=())
    Pipeline(SameMaps(), MemorySource([frame], 1), settings, sinks).run()
    (result,) = keep.results
    return result


@pytest.mark.parametrize("min_area", [0, 100, 400])
def test_the_same_map_decides_the_same_at_model_size_and_for_a_720p_frame(min_area):
    small, big = _run(MODEL_HW, min_area), _run((720, 1280), min_area)
    blob_px = int(small.mask.sum()) if small.is_ng else None
    assert small.is_ng == big.is_ng == (min_area < 400)  # the blob has ~170 model pixels
    assert small.score == big.score
    assert big.amap.shape == big.mask.shape == MODEL_HW  # decided at model resolution
    np.testing.assert_array_equal(small.mask, big.mask)
    if small.is_ng:
        assert 100 <= blob_px < 400
        # boxes in frame pixels: the model-size box scaled to the frame
        assert small.regions == [[140, 80, 14, 12]]
        assert big.regions == boxes_to_frame(small.regions, MODEL_HW, (720, 1280))
        # x 140..153 of 224 -> 800..879 of 1280; y 80..91 of 224 -> 257..295 of 720
        assert big.regions == [[800, 257, 80, 39]]
        assert big.rendered.shape == (720, 1280, 3)
    else:
        assert small.regions == big.regions == []


def test_the_saved_mask_and_the_boxes_line_up_with_the_frame(tmp_path):
    result = _run((720, 1280), 0, tmp_path / "ev")
    (event,) = [json.loads(s) for s in (tmp_path / "ev" / "events.jsonl").read_text()
                .splitlines()]
    mask = cv2.imread(str(tmp_path / "ev" / event["mask"]), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (720, 1280)
    ys, xs = np.nonzero(mask)
    box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
           int(ys.max() - ys.min() + 1)]
    assert event["regions"] == result.regions == [box]  # the box bounds the saved region
    np.testing.assert_array_equal(mask > 0, mask_to_frame(result.mask, (720, 1280)) > 0)


def test_boxes_bound_the_upsampled_regions_for_any_sizes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(4, 60, 2))
        fh, fw = (int(v) for v in rng.integers(2, 200, 2))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        bw, bh = int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1))
        mask = np.zeros((h, w), np.uint8)
        mask[y:y + bh, x:x + bw] = 1
        ys, xs = np.nonzero(mask_to_frame(mask, (fh, fw)))
        (box,) = boxes_to_frame([[x, y, bw, bh]], (h, w), (fh, fw))
        if ys.size:  # a frame smaller than the model may drop a thin region: box kept >= 1
            assert box == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert box[2] >= 1 and box[3] >= 1 and box[0] + box[2] <= fw and box[1] + box[3] <= fh


def test_a_station_file_picks_a_class_and_refuses_bad_thresholds(tmp_path):
    from edgeas.runtime.command import build_options
    from edgeas.runtime.station import load_station

    station = tmp_path / "station.yaml"
    station.write_text("model: m.onnx\nsource: clip.mp4\nclass: bottle\n")
    assert load_station(station).cls == "bottle"
    assert build_options(station, {"cls": "cable"}).cls == "cable"  # --class overrides
    for text, needle in (("clas: bottle\n", "did you mean 'class'"),
                         ("threshold: -0.2\n", "'threshold' must be a finite number >= 0"),
                         ("threshold: .nan\n", "'threshold' must be a finite number >= 0")):
        station.write_text("model: m.onnx\n" + text)
        with pytest.raises(ConfigError) as info:
            load_station(station)
        assert needle in str(info.value) and str(station) in info.value.message
