"""The INT8 accuracy gate on hand-made sessions (no model, no ONNX Runtime): a variant whose
maps are NaN or infinite fails with a message that says so, whatever its cosine would be."""

from __future__ import annotations

import numpy as np
import pytest
from sample_records import schema1_metadata

from edgeas.calibration import gate as gt
from edgeas.ort import cosine_per_image
from edgeas.record import ModelRecord

SIZE = 32


class FakeInput:
    name = "image"
    shape = ["N", 3, SIZE, SIZE]


class FakeOutput:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeSession:
    """Per-level maps that are a fixed function of the image, optionally spoiled."""

    def __init__(self, spoil: str = "") -> None:
        self.spoil = spoil

    def get_inputs(self) -> list[FakeInput]:
        return [FakeInput()]

    def get_outputs(self) -> list[FakeOutput]:
        return [FakeOutput(f"dist_res{i}") for i in range(1, 5)]

    def run(self, names, feeds):
        x = feeds["image"]
        out = []
        for i in range(1, 5):
            side = SIZE // 2**i
            level = np.abs(x[:, :1, ::2**i, ::2**i]).astype(np.float32) + 0.1
            if self.spoil == "nan":
                level[:, :, 0, 0] = np.nan
            elif self.spoil == "inf" and i == 4:
                level[0, :, side // 2, side // 2] = np.inf
            out.append(level)
        return out


def _record() -> ModelRecord:
    meta = schema1_metadata(input_size=[SIZE, SIZE],
                            aggregation={"mode": "reference", "blur": None})
    return ModelRecord.from_json(meta, "test")


def _images(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)


def test_cosine_of_a_map_holding_nan_is_nan_not_one():
    want = np.ones((2, 4, 4), np.float32)
    got = want.copy()
    got[1, 0, 0] = np.nan
    cos = cosine_per_image(got, want)
    assert cos[0] == pytest.approx(1.0) and np.isnan(cos[1])


@pytest.mark.parametrize("spoil", ["nan", "inf"])
def test_non_finite_maps_fail_the_gate_by_cosine_and_by_pap(spoil):
    record = _record()
    gate = gt.Gate(record, FakeSession(), {"good": FakeSession(), "bad": FakeSession(spoil)})
    images = _images()
    gate.add(images, "held_out")
    masks = np.zeros((len(images), SIZE, SIZE), np.uint8)
    masks[:, 4:12, 4:12] = 1
    gate.add(images, "eval", masks, ["c"] * len(images))
    for max_drop in (1.0, 100.0):  # judged by pAP; even an unlimited drop is no excuse
        result = gate.result(0.95, max_drop)
        assert not result.passed
        assert all(f.startswith("bad:") for f in result.failures), result.failures
        assert any("NaN or infinite" in f and "held-out" in f for f in result.failures)
        entry = result.report["variants"]["bad"]
        assert entry["held_out"]["nonfinite_images"] > 0
        assert entry["held_out"]["cosine_min"]["anomaly_map"] is None
        assert "metrics" not in entry
        assert result.report["variants"]["good"]["held_out"]["nonfinite_images"] == 0


def test_non_finite_maps_fail_the_gate_without_eval_data():
    gate = gt.Gate(_record(), FakeSession(), {"bad": FakeSession("nan")})
    gate.add(_images(), "held_out")
    result = gate.result(0.0001, 1.0)
    assert not result.passed
    assert result.failures == ["bad: the anomaly map is NaN or infinite on 4 of 4 held-out "
                               "images"]
    rows = gt.table_rows(result.report, [f"dist_res{i}" for i in range(1, 5)])
    assert rows[0][-3] == "NaN/inf"  # the anomaly map's cell
