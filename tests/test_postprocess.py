"""The post-processing registries and the runtime's `resolve`."""

from __future__ import annotations

import logging

import pytest

from edgeas import aggregate as agg
from edgeas.config import AggregationConfig, ThresholdConfig, load_config
from edgeas.errors import ConfigError
from edgeas.postprocess import (
    AGGREGATION_MODES,
    DEFAULT_MODE,
    DEFAULT_POLICY,
    THRESHOLD_POLICIES,
    make_threshold,
    postprocessing,
    resolve,
)
from edgeas.preprocess import LITE_MEAN, LITE_STD, Recipe
from edgeas.record import new_record


def _record(value=0.5, mode="reference", min_area=7):
    return new_record(
        preset="tiny", backbone="b", recipe=Recipe((224, 224), LITE_MEAN, LITE_STD),
        strides=[2, 4, 8, 16],
        postprocess=postprocessing(mode, make_threshold(value, "quantile", None, mode), min_area),
        classes=[], data_fingerprint=None, config={},
    )


def test_one_default_everywhere():
    """The config, the record's migration, aggregate() and aggregate_batch() share one default."""
    import inspect

    assert AggregationConfig().mode == DEFAULT_MODE and ThresholdConfig().policy == DEFAULT_POLICY
    for fn in (agg.aggregate, agg.aggregate_batch):
        assert inspect.signature(fn).parameters["mode"].default == DEFAULT_MODE
    assert set(AGGREGATION_MODES) == {"fused", "reference"}
    assert {n: p.param.default for n, p in THRESHOLD_POLICIES.items()} == {
        "frame_fpr": 0.01, "max": 1.0, "quantile": 0.999, "sigma": 3.0}


@pytest.mark.parametrize(("threshold", "message"), [
    ({"policy": "quantile", "param": 1.5}, "quantile q must be >= 0 and <= 1"),
    ({"policy": "max", "param": 0}, "margin must be > 0"),
    ({"policy": "sigma", "param": "three"}, "threshold.param"),
    ({"policy": "quantil"}, "did you mean 'quantile'"),
    ({"min_area": -2}, "min_area must be >= 0"),
])
def test_a_bad_threshold_setting_fails_when_the_config_loads(tmp_path, threshold, message):
    path = tmp_path / "cfg.yaml"
    lines = "".join(f"  {k}: {v}\n" for k, v in threshold.items())
    path.write_text(f"preset: tiny\nthreshold:\n{lines}")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and str(path) in info.value.message


def test_a_bad_aggregation_mode_fails_when_the_config_loads(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("preset: tiny\naggregation:\n  mode: fusd\n")
    with pytest.raises(ConfigError, match="did you mean 'fused'"):
        load_config(path)


def test_resolve_takes_the_record_and_the_overrides(caplog):
    rec = _record()
    s = resolve(rec)
    assert (s.threshold, s.min_area, s.mode) == (0.5, 7, "reference")
    assert s.threshold_origin == "metadata (quantile, reference)"
    assert s.smoothing == rec.aggregation.blur and s.levels is None
    s = resolve(rec, threshold=0.9, min_area=0, mode="fused")
    assert (s.threshold, s.threshold_origin, s.min_area, s.mode) == (0.9, "override", 0, "fused")
    with caplog.at_level(logging.WARNING, logger="edgeas.stream"):
        resolve(rec, mode="fused")  # the fitted threshold belongs to the other mode
    assert "fitted on reference maps" in caplog.text
    with pytest.raises(ConfigError, match="no fitted threshold"):
        resolve(_record(value=None), model="m.onnx")
    assert resolve(_record(value=None), threshold=0.3).threshold == 0.3
    with pytest.raises(ConfigError, match="unknown aggregation mode"):
        resolve(rec, mode="blurred")
    with pytest.raises(ConfigError, match="min_area"):
        resolve(rec, min_area=-1)


def _per_class_record(per_class, classes=("bottle", "cable", "screw")):
    tau = make_threshold(0.5, "frame_fpr", None, "reference", min_area=7, images=90,
                         per_class=per_class)
    return new_record(
        preset="tiny", backbone="b", recipe=Recipe((224, 224), LITE_MEAN, LITE_STD),
        strides=[2, 4, 8, 16], postprocess=postprocessing("reference", tau, 7),
        classes=list(classes), data_fingerprint=None, config={},
    )


def test_resolve_picks_a_per_class_threshold(caplog):
    rec = _per_class_record({"bottle": 0.3, "cable": 0.8})
    assert resolve(rec).threshold == 0.5  # the default stays the all-class value
    s = resolve(rec, cls="cable")
    assert s.threshold == 0.8
    assert s.threshold_origin == "metadata (frame_fpr, reference, class cable)"
    with caplog.at_level(logging.WARNING, logger="edgeas.stream"):
        assert resolve(rec, cls="screw").threshold == 0.5  # no value of its own
    assert "no per-class threshold for screw" in caplog.text
    assert resolve(rec, threshold=0.9, cls="bottle").threshold == 0.9  # --threshold wins
    for bad in ("botle", "Cable"):
        with pytest.raises(ConfigError) as info:
            resolve(rec, cls=bad, model="m.onnx")
        assert f"unknown class '{bad}'" in info.value.message and "m.onnx" in info.value.message
        assert "did you mean" in info.value.hint
    with pytest.raises(ConfigError, match="unknown class"):
        resolve(rec, threshold=0.9, cls="botle")  # a typo is an error with --threshold too
    with pytest.raises(ConfigError, match="records no classes"):
        resolve(_per_class_record({}, classes=()), cls="bottle")


def test_resolve_checks_the_value_and_warns_when_min_area_departs(caplog):
    rec = _per_class_record({})
    with caplog.at_level(logging.WARNING, logger="edgeas.stream"):
        resolve(rec, min_area=3)
    assert "fitted with min_area 7 but the stream uses 3" in caplog.text
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="finite number >= 0"):
            resolve(rec, threshold=bad)
