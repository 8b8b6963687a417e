"""The typed model record: construction, JSON round trip, stages, schema-1 migration."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgeas.errors import ArtifactError
from edgeas.postprocess import OFFICIAL_BLUR, make_threshold, postprocessing
from edgeas.preprocess import LITE_MEAN, LITE_STD, Recipe
from edgeas.record import BASE_SCHEMA, SCHEMA, ModelRecord, config_hash, new_record

# A checkpoint's metadata exactly as edgeas 0.1.0 (schema 1) wrote it.
SCHEMA1_CHECKPOINT = {
    "schema": 1, "edgeas_version": "0.1.0", "preset": "tiny", "backbone": "efficientnet_lite0",
    "input_size": [224, 224], "channel_order": "RGB", "interpolation": "linear",
    "mean": list(LITE_MEAN), "std": list(LITE_STD),
    "levels": [{"name": f"res{i}", "stride": 2**i, "output": f"dist_res{i}"} for i in (1, 2, 3, 4)],
    "aggregation": {"mode": "reference", "blur": [list(b) for b in OFFICIAL_BLUR]},
    "threshold": {"value": 0.25, "policy": "quantile", "param": 0.999, "mode": "reference"},
    "min_area": 0, "classes": ["bottle", "cable"], "data_fingerprint": "abc",
    "config_sha256": "0123456789abcdef", "precision": "fp32",
}


def _record(**threshold) -> ModelRecord:
    tau = make_threshold(threshold.get("value"), "quantile", None, "reference")
    return new_record(
        preset="tiny", backbone="efficientnet_lite0", recipe=Recipe((224, 224), LITE_MEAN,
                                                                    LITE_STD),
        strides=[2, 4, 8, 16], postprocess=postprocessing("reference", tau, 3),
        classes=["a", "b"], data_fingerprint="f", config={"preset": "tiny"},
    )


def test_new_record_is_typed_frozen_and_round_trips():
    rec = _record(value=0.5)
    assert rec.model.outputs == ("dist_res1", "dist_res2", "dist_res3", "dist_res4")
    assert rec.model.level_names == ("res1", "res2", "res3", "res4")
    assert rec.preprocessing.input_size == (224, 224) and rec.precision == "fp32"
    assert rec.threshold.value == 0.5 and rec.threshold.param == 0.999 and rec.min_area == 3
    assert rec.train["config_sha256"] == config_hash({"preset": "tiny"})
    data = rec.to_json()
    assert data["schema"] == BASE_SCHEMA
    assert json.loads(json.dumps(data)) == data  # plain JSON values only
    assert ModelRecord.from_json(data, "x") == rec
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.precision = "fp16"  # type: ignore[misc]
    with pytest.raises(TypeError):
        rec.train["config_sha256"] = "changed"  # stages are read-only too


def test_with_stage_returns_a_new_record_and_checks_keys():
    rec = _record(value=0.5)
    exported = rec.with_stage("export", {"opset": 17, "export": {"batch": 1}})
    assert rec.export is None and exported.export["export"]["batch"] == 1
    int8 = exported.with_stage("calibration", {"calibration": {"images": 40}}, precision="int8")
    assert (exported.precision, int8.precision) == ("fp32", "int8")
    data = int8.to_json()
    assert data["opset"] == 17 and data["calibration"] == {"images": 40}
    with pytest.raises(ValueError, match="no key"):
        rec.with_stage("export", {"tensorrt_version": "10"})
    with pytest.raises(ValueError, match="unknown stage"):
        rec.with_stage("deploy", {})


def test_the_engine_sidecar_calibration_is_the_builds_and_reads_back_as_such():
    qdq = _record(value=0.5).with_stage(
        "calibration", {"calibration": {"method": "entropy", "images": 40},
                        "quantization": {"format": "qdq"}}, precision="int8")
    engine = qdq.with_stage("engine", {"tensorrt_version": "10.3.0", "gpu": "Orin",
                                       "calibration": {"method": "qdq", "images": 40}})
    side = engine.to_json()
    assert side["calibration"] == {"method": "qdq", "images": 40}
    assert side["quantization"] == {"format": "qdq"} and side["tensorrt_version"] == "10.3.0"
    back = ModelRecord.from_json(side, "model.engine.json")
    assert back.engine["calibration"]["method"] == "qdq" and back.engine["gpu"] == "Orin"
    assert back.calibration["quantization"]["format"] == "qdq"
    fp16 = _record(value=0.5).with_stage("engine", {"tensorrt_version": "10.3.0"}, "fp16")
    assert fp16.to_json()["calibration"] is None  # a sidecar always says whether it calibrated


def test_schema1_files_migrate_with_their_defaults_filled_in_once():
    rec = ModelRecord.from_json(SCHEMA1_CHECKPOINT, "old.pt")
    assert rec.threshold.value == 0.25 and rec.train["config_sha256"] == "0123456789abcdef"
    # the oldest files: no precision, a null blur (= official smoothing), a bare threshold
    oldest = dict(SCHEMA1_CHECKPOINT, aggregation={"mode": "fused", "blur": None},
                  threshold={"value": 0.5})
    del oldest["precision"], oldest["channel_order"], oldest["interpolation"]
    rec = ModelRecord.from_json(oldest, "oldest.onnx")
    assert rec.precision == "fp32" and rec.aggregation.blur == OFFICIAL_BLUR
    assert (rec.threshold.policy, rec.threshold.param, rec.threshold.mode) == (
        "quantile", 0.999, "fused")
    assert rec.to_json()["schema"] == BASE_SCHEMA


def test_the_aggregation_setting_round_trips_and_an_empty_blur_means_its_schema_s_meaning():
    tau = make_threshold(0.3, "frame_fpr", None, "fused")
    post = postprocessing("fused", tau, 0, smoothing="none", levels=["res3", "res1"])
    rec = new_record(
        preset="tiny", backbone="efficientnet_lite0",
        recipe=Recipe((224, 224), LITE_MEAN, LITE_STD), strides=[2, 4, 8, 16],
        postprocess=post, classes=["a"], data_fingerprint="f", config={})
    data = rec.to_json()
    # none is an empty list on disk, the level set in the model's order
    assert data["aggregation"] == {"mode": "fused", "blur": [], "levels": ["res1", "res3"]}
    back = ModelRecord.from_json(data, "m.onnx")
    assert back.aggregation.blur == () and back.aggregation.levels == ("res1", "res3")
    # schema 1 wrote an empty list for the official smoothing; schema 2 never wrote one
    old = dict(SCHEMA1_CHECKPOINT, aggregation={"mode": "reference", "blur": []})
    assert ModelRecord.from_json(old, "old.pt").aggregation.blur == OFFICIAL_BLUR
    assert ModelRecord.from_json(dict(old, schema=2), "new.pt").aggregation.blur == ()
    # a file without a level set uses every level
    assert ModelRecord.from_json(SCHEMA1_CHECKPOINT, "old.pt").aggregation.levels == (
        "res1", "res2", "res3", "res4")


def test_unknown_keys_are_kept_and_future_schemas_refused():
    data = dict(SCHEMA1_CHECKPOINT, note="from a later edgeas",
                threshold=dict(SCHEMA1_CHECKPOINT["threshold"], images=40, history=[]))
    out = ModelRecord.from_json(data, "m.onnx").to_json()
    assert out["note"] == "from a later edgeas"
    assert out["threshold"]["images"] == 40 and out["threshold"]["history"] == []
    with pytest.raises(ArtifactError, match="newer than this edgeas"):
        ModelRecord.from_json(dict(data, schema=SCHEMA + 1), "m.onnx")


@pytest.mark.parametrize(("change", "message"), [
    ({"levels": []}, "levels"),
    ({"threshold": {"value": 0.1, "policy": "quantile", "param": 1.5}}, "threshold.param"),
    ({"threshold": {"value": 0.1, "policy": "median"}}, "threshold.policy"),
    ({"aggregation": {"mode": "blurry"}}, "aggregation.mode"),
    ({"aggregation": {"mode": "reference", "blur": [[3, 1.0]]}}, "blur"),
    ({"aggregation": {"mode": "reference", "blur": [[4, 1.0]] * 4}}, "kernel=4"),
    ({"aggregation": {"mode": "fused", "levels": ["res1", "res5"]}}, "unknown level 'res5'"),
    ({"aggregation": {"mode": "fused", "levels": []}}, "aggregation.levels"),
    ({"precision": "int4"}, "precision"),
    ({"min_area": -1}, "min_area"),
    ({"mean": "grey"}, "preprocessing"),
])
def test_a_bad_file_names_the_file_and_the_key(change, message):
    with pytest.raises(ArtifactError, match=message) as info:
        ModelRecord.from_json(dict(SCHEMA1_CHECKPOINT, **change), "bad.onnx")
    assert "bad.onnx" in info.value.message


def test_missing_required_keys_are_listed():
    data = {k: v for k, v in SCHEMA1_CHECKPOINT.items() if k not in ("levels", "classes")}
    with pytest.raises(ArtifactError, match="lacks levels, classes"):
        ModelRecord.from_json(data, "m.onnx")
    with pytest.raises(ArtifactError, match="not a JSON object"):
        ModelRecord.from_json([1, 2], "m.onnx")


def test_the_threshold_record_has_typed_fields_and_old_files_get_defaults():
    from edgeas.record import Threshold

    tau = make_threshold(0.4, "frame_fpr", 0.02, "reference", min_area=9, images=120,
                         margin=1.1, per_class={"a": 0.35, "b": 0.45},
                         history=({"value": 0.2, "policy": "quantile"},))
    rec = new_record(
        preset="tiny", backbone="efficientnet_lite0",
        recipe=Recipe((224, 224), LITE_MEAN, LITE_STD), strides=[2, 4, 8, 16],
        postprocess=postprocessing("reference", tau, 9), classes=["a", "b"],
        data_fingerprint="f", config={})
    t = rec.threshold
    assert isinstance(t, Threshold) and not t.extra
    assert (t.min_area, t.images, t.margin, dict(t.per_class)) == (9, 120, 1.1,
                                                                   {"a": 0.35, "b": 0.45})
    out = rec.to_json()["threshold"]
    assert out == {"value": 0.4, "policy": "frame_fpr", "param": 0.02, "mode": "reference",
                   "min_area": 9, "images": 120, "margin": 1.1,
                   "per_class": {"a": 0.35, "b": 0.45},
                   "history": [{"value": 0.2, "policy": "quantile"}]}
    assert ModelRecord.from_json(rec.to_json(), "x") == rec
    # a file of before issue 12: its threshold was fitted for the record's min_area, on an
    # unrecorded number of images, without margin, per-class values or history
    old = ModelRecord.from_json(dict(SCHEMA1_CHECKPOINT, min_area=4), "old.onnx").threshold
    assert (old.policy, old.min_area, old.images, old.margin) == ("quantile", 4, None, 1.0)
    assert not old.per_class and old.history == ()
    assert "per_class" not in old.to_json()  # optional: written only when there are some


@pytest.mark.parametrize(("threshold", "message"), [
    ({"value": -0.1}, "threshold.value' must be >= 0"),
    ({"value": float("nan")}, "threshold.value' must be finite"),
    ({"value": 0.1, "per_class": {"bottle": float("inf")}}, "per_class.bottle"),
    ({"value": 0.1, "per_class": {"screw": 0.2}}, "class(es) screw"),
    ({"value": 0.1, "margin": 0.5}, "margin must be >= 1"),
    ({"value": 0.1, "images": -3}, "threshold.images"),
    ({"value": 0.1, "history": {"value": 1}}, "threshold.history"),
])
def test_a_bad_threshold_record_names_the_file_and_the_value(threshold, message):
    data = dict(SCHEMA1_CHECKPOINT, threshold=dict(SCHEMA1_CHECKPOINT["threshold"], **threshold))
    with pytest.raises(ArtifactError, match=message.replace("(", r"\(").replace(")", r"\)")
                       ) as info:
        ModelRecord.from_json(data, "bad.onnx")
    assert "bad.onnx" in info.value.message and "\n" not in info.value.message
