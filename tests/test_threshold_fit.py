"""`edgeas threshold fit`: a threshold refitted on a station's normal images, written back
into the ONNX model, the checkpoint or the engine sidecar, the old record in its history.
One untrained tiny model (exported once per module) is enough: the fit is checked
against the decision rule on the model's own maps, not against a trained accuracy."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgeas.errors import ArtifactError, ConfigError, DataError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
TARGET = 0.1


def _images(folder, n: int, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (7, 7), 2)
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return folder


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A checkpoint (classes a, b; a quantile threshold 0.25) and its ONNX export."""
    from edgeas.export.command import export_command, random_init_model
    from edgeas.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("fit")
    model, record = random_init_model("tiny")
    meta = record.to_json()
    old = dict(meta["threshold"], value=0.25, policy="quantile", param=0.999)
    meta = dict(meta, classes=["a", "b"], threshold=old)
    ckpt = root / "last.pt"
    save_checkpoint(ckpt, {"config": model.cfg.to_dict(), "metadata": meta,
                           "model": model.state_dict()})
    onnx_path = root / "model.onnx"
    export_command(ckpt, None, False, onnx_path, dynamic_batch=True)
    return {"ckpt": ckpt, "onnx": onnx_path, "images": _images(root / "good", 12),
            "few": _images(root / "few", 5, seed=1)}


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def _ng_rate(maps: np.ndarray, tau: float, min_area: int) -> float:
    from edgeas.aggregate import clean_and_decide, threshold_mask

    return float(np.mean([clean_and_decide(threshold_mask(m, tau), min_area)[1] for m in maps]))


def test_refit_an_onnx_model_in_place_keeping_the_old_record(artifacts, tmp_path):
    from edgeas.artifacts import read_record
    from edgeas.runtime.backends import OnnxRuntimeBackend
    from edgeas.threshold_fit import FitRequest, image_files, normal_maps, threshold_fit_command

    model = _copy(artifacts["onnx"], tmp_path / "m.onnx")
    before = onnx.load(str(model))
    new = threshold_fit_command(model, artifacts["images"],
                                FitRequest(param=TARGET, min_area=8), device="cpu")
    back = read_record(model)
    assert back == new and back.threshold.value == new.threshold.value
    t = back.threshold
    assert (t.policy, t.param, t.min_area, t.images, t.mode) == (
        "frame_fpr", TARGET, 8, 12, back.aggregation.mode)
    assert back.min_area == 8  # the station applies what it was fitted with
    (old,) = t.history
    assert old["value"] == 0.25 and old["policy"] == "quantile" and "replaced_at" in old
    # the fitted value is the decision rule's: at most 10% of these images NG, more below
    maps = normal_maps(model, back, image_files(artifacts["images"], None), "cpu")
    assert maps.shape == (12, *back.preprocessing.input_size)
    assert _ng_rate(maps, t.value, 8) <= TARGET
    below = float(np.nextafter(np.float32(t.value), np.float32(-np.inf)))
    assert _ng_rate(maps, below, 8) > TARGET
    # only the metadata changed: the graph and weights are what they were
    after = onnx.load(str(model))
    assert after.graph == before.graph
    assert [p.key for p in after.metadata_props] == ["edgeas"]
    onnx.checker.check_model(after)
    OnnxRuntimeBackend(model)  # still loads, record and all
    assert not list(tmp_path.glob(".*.tmp"))

    # a second fit, of one class: the all-class value stays, history grows
    again = threshold_fit_command(model, artifacts["images"], FitRequest(cls="b"), "cpu")
    assert again.threshold.value == t.value and set(again.threshold.per_class) == {"b"}
    assert len(again.threshold.history) == 2 and again.threshold.history[1]["value"] == t.value
    assert again.threshold.per_class["b"] == pytest.approx(t.value)  # same images, same rule


def test_refit_a_checkpoint_agrees_with_its_onnx(artifacts, tmp_path):
    from edgeas.artifacts import read_record
    from edgeas.threshold_fit import FitRequest, threshold_fit_command

    ckpt = _copy(artifacts["ckpt"], tmp_path / "last.pt")
    model = _copy(artifacts["onnx"], tmp_path / "m.onnx")
    req = FitRequest(policy="frame_fpr", param=0.2, min_area=4)
    a = threshold_fit_command(ckpt, artifacts["few"], req).threshold
    b = threshold_fit_command(model, artifacts["few"], req, "cpu").threshold
    assert read_record(ckpt).threshold == a
    assert a.value == pytest.approx(b.value, rel=1e-3)  # torch vs ONNX Runtime rounding


def test_an_engine_sidecar_is_rewritten_and_the_plan_left_alone(tmp_path):
    from sample_records import write_engine

    from edgeas.artifacts import read_record, sidecar_path
    from edgeas.threshold_fit import FitSettings, refitted, write_record

    engine = write_engine(tmp_path, b"PLAN", tensorrt_version="10.3.0", gpu="Orin")
    record = read_record(engine)
    new = refitted(record, 0.7, 50, FitSettings("frame_fpr", 0.01, 5, 1.0), None)
    assert write_record(engine, new) == sidecar_path(engine)
    back = read_record(engine)
    assert back.threshold.value == 0.7 and back.threshold.images == 50 and back.min_area == 5
    assert back.engine["gpu"] == "Orin" and back.threshold.history[0]["value"] == 0.5
    assert engine.read_bytes() == b"PLAN"


def test_bad_input_is_a_one_line_error(artifacts, tmp_path):
    from edgeas.record import ModelRecord
    from edgeas.threshold_fit import FitRequest, threshold_fit_command

    model = _copy(artifacts["onnx"], tmp_path / "m.onnx")
    images = artifacts["images"]
    with pytest.raises(ConfigError, match="did you mean 'a'") as info:
        threshold_fit_command(model, images, FitRequest(cls="A"), "cpu")
    assert "unknown class 'A'" in info.value.message
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="held-out normal images") as info:
        threshold_fit_command(model, tmp_path / "empty", FitRequest(), "cpu")
    assert "\n" not in info.value.message
    for req, key in ((FitRequest(param=float("nan")), "--param"),
                     (FitRequest(param=1.0), "--param"), (FitRequest(margin=0.5), "--margin"),
                     (FitRequest(min_area=-3), "--min-area"),
                     (FitRequest(cls="a", policy="max"), "--policy")):
        with pytest.raises(ConfigError, match=key):
            threshold_fit_command(model, images, req, "cpu")
    meta = json.loads(json.dumps(ModelRecord.from_json(
        {**_meta(model), "threshold": {"value": 0.3}}, "x").to_json()))
    for bad in (-0.5, float("nan")):
        with pytest.raises(ArtifactError, match="threshold.value") as info:
            ModelRecord.from_json(dict(meta, threshold=dict(meta["threshold"], value=bad)),
                                  "station.onnx")
        assert "station.onnx" in info.value.message
    with pytest.raises(ArtifactError, match="per_class.a"):
        ModelRecord.from_json(dict(meta, threshold=dict(meta["threshold"],
                                                        per_class={"a": -1})), "m.onnx")


def _meta(model) -> dict:
    from edgeas.artifacts import read_metadata

    return read_metadata(model)


def test_the_cli_runs_it_without_torch_and_reports_errors_on_one_line(artifacts, tmp_path,
                                                                      capsys):
    from blocked_python import edgeas_without

    from edgeas.cli import main

    model = _copy(artifacts["onnx"], tmp_path / "m.onnx")
    run = edgeas_without(("torch", "tensorrt"), "threshold", "fit", "--model", str(model),
                         "--images", str(artifacts["few"]), "--param", "0.05",
                         "--device", "cpu")
    assert run.returncode == 0, run.stderr
    said = " ".join(run.stderr.split())
    assert "frame_fpr 0.05" in said and "history" in said
    assert "at least 20 are needed" in said  # 5 images cannot resolve 5%
    with pytest.raises(SystemExit) as info:
        main(["threshold", "fit", "--model", str(model), "--images", str(artifacts["images"]),
              "--class", "c"])
    assert info.value.code == 2
    assert "unknown class 'c'" in capsys.readouterr().err
