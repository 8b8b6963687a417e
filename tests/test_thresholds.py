"""Deployment thresholds from normal maps (protocol.md section 4)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeas.errors import ConfigError, ModelOutputError
from edgeas.postprocess import DEFAULT_POLICY, THRESHOLD_POLICIES, make_threshold
from edgeas.thresholds import fit_threshold, threshold_from_normal


def normal_maps(seed: int, n: int = 9, h: int = 17, w: int = 13) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 0.1, size=(n, h, w)).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 0.999, 1.0])
def test_quantile_equals_numpy_linear(seed: int, q: float) -> None:
    maps = normal_maps(seed)
    ref = np.quantile(maps.astype(np.float64), q, method="linear")
    assert threshold_from_normal(maps, "quantile", q) == pytest.approx(ref, rel=1e-12, abs=0)


def test_quantile_handles_ties() -> None:
    # frame_fpr became the default for stations (issue 12); quantile keeps its default q
    assert DEFAULT_POLICY == "frame_fpr" and THRESHOLD_POLICIES["quantile"].param.default == 0.999
    maps = np.round(normal_maps(5, n=20) * 8) / 8  # few distinct values
    got = threshold_from_normal(maps, "quantile")
    assert isinstance(got, float)
    assert got == pytest.approx(np.quantile(maps.astype(np.float64), 0.999), rel=1e-12)


def test_max_with_margin() -> None:
    maps = normal_maps(1)
    peak = float(maps.max())
    assert threshold_from_normal(maps, "max") == pytest.approx(peak)
    assert threshold_from_normal(maps, "max", 1.2) == pytest.approx(1.2 * peak)


def test_sigma_uses_image_scores_hand_values() -> None:
    maps = np.zeros((3, 2, 2), dtype=np.float32)
    maps[0, 0, 0], maps[1, 1, 1], maps[2, 0, 1] = 1.0, 2.0, 3.0  # image scores 1, 2, 3
    std = np.sqrt(2.0 / 3.0)  # population std of (1, 2, 3)
    assert threshold_from_normal(maps, "sigma") == pytest.approx(2.0 + 3.0 * std)
    assert threshold_from_normal(maps, "sigma", 1.0) == pytest.approx(2.0 + std)


def test_sequence_of_maps_of_different_sizes() -> None:
    rng = np.random.default_rng(3)
    seq = [rng.random((10, 12)).astype(np.float32), rng.random((7, 5)).astype(np.float32)]
    flat = np.concatenate([m.ravel() for m in seq]).astype(np.float64)
    assert threshold_from_normal(seq, "quantile", 0.95) == pytest.approx(
        np.quantile(flat, 0.95), rel=1e-12
    )
    assert threshold_from_normal(seq, "max") == pytest.approx(flat.max())
    assert threshold_from_normal(seq[0], "max") == pytest.approx(seq[0].max())  # one 2-D map


@pytest.mark.parametrize(
    ("maps", "policy", "param"),
    [
        (np.zeros((2, 3, 3)), "median", None),  # unknown policy
        (np.zeros((0, 3, 3)), "quantile", None),  # empty
        ([], "max", None),  # empty sequence
        (np.zeros((2, 3, 3)), "quantile", 1.5),  # q out of range
        (np.zeros((2, 3, 3)), "max", 0.0),  # margin not positive
        (np.zeros((2, 3, 3)), "sigma", float("nan")),
    ],
)
def test_bad_input_raises_config_error(maps, policy: str, param: float | None) -> None:
    with pytest.raises(ConfigError) as info:
        threshold_from_normal(maps, policy, param)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "maps",
    [
        np.full((2, 3, 3), np.nan),  # NaN scores (this case expected ConfigError before)
        [np.zeros((3, 3)), np.array([[0.0, np.inf], [-np.inf, 1.0]])],
        np.zeros(5),  # not a map
    ],
)
def test_bad_model_output_is_a_model_output_error(maps) -> None:
    """What the model produced is a run-time failure (exit 1), not the user's config."""
    with pytest.raises(ModelOutputError) as info:
        threshold_from_normal(maps, "quantile", None)
    assert not isinstance(info.value, ConfigError) and info.value.exit_code == 1


def test_non_finite_maps_are_counted() -> None:
    maps = np.zeros((2, 3, 3))
    maps[0, 0, 0], maps[1, 2, :2] = np.nan, np.inf
    with pytest.raises(ModelOutputError, match="3 NaN or inf value"):
        threshold_from_normal(maps)


def test_threshold_record_fills_default_param() -> None:
    rec = make_threshold(np.float32(0.25), "quantile", None, "fused").to_json()
    # the record of issue 12: also min_area, images, margin and history (per_class if any)
    assert rec == {"value": 0.25, "policy": "quantile", "param": 0.999, "mode": "fused",
                   "min_area": 0, "images": None, "margin": 1.0, "history": []}
    assert type(rec["value"]) is float
    assert make_threshold(0.3, "sigma", 2, "reference").param == 2.0
    assert make_threshold(None, "max", None, "reference").value is None  # unset
    with pytest.raises(ConfigError):
        make_threshold(0.3, "max", None, "blurred")
    with pytest.raises(ConfigError):
        make_threshold(0.3, "nope", None, "fused")


# --------------------------------------------------------------------------- frame_fpr


def _ng_rate(maps: np.ndarray, tau: float, min_area: int) -> float:
    """Brute force: the station's own rule (mask, min-area cleaning, decision) per map."""
    from edgeas.aggregate import clean_and_decide, threshold_mask

    return float(np.mean([clean_and_decide(threshold_mask(m, tau), min_area)[1] for m in maps]))


def _blobby_maps(seed: int, n: int, ties: bool = False) -> np.ndarray:
    """Smooth normal-looking maps (regions of many sizes), optionally with tied values."""
    import cv2

    rng = np.random.default_rng(seed)
    maps = np.stack([cv2.GaussianBlur(rng.gamma(2.0, 0.1, (24, 20)).astype(np.float32),
                                      (5, 5), 1.5) for _ in range(n)])
    return np.round(maps * 40) / 40 if ties else maps


@pytest.mark.parametrize(("target", "min_area", "ties"), [
    (0.01, 0, False), (0.05, 0, False), (0.1, 6, False), (0.29, 12, False),
    (0.25, 4, True), (0.0, 6, False), (0.5, 30, True),
])
def test_frame_fpr_is_the_smallest_tau_within_the_target(target, min_area, ties) -> None:
    from edgeas.decisions import allowed_ng

    maps = _blobby_maps(int(target * 100) + min_area, n=100, ties=ties)
    fit = fit_threshold(maps, "frame_fpr", target, min_area=min_area)
    assert fit.images == 100 and fit.warning is None
    k = allowed_ng(100, target)
    assert _ng_rate(maps, fit.value, min_area) <= target  # at most the target at tau
    below = float(np.nextafter(np.float32(fit.value), np.float32(-np.inf)))
    assert _ng_rate(maps, below, min_area) > target  # more than the target just below it
    assert _ng_rate(maps, below, min_area) * 100 >= k + 1


def test_frame_fpr_counts_min_area_and_margin_scales_it() -> None:
    maps = _blobby_maps(3, n=50)
    loose = fit_threshold(maps, "frame_fpr", 0.1, min_area=0).value
    strict = fit_threshold(maps, "frame_fpr", 0.1, min_area=25).value
    assert strict < loose  # a region must be larger to count: a lower tau reaches the target
    assert fit_threshold(maps, "frame_fpr", 0.1, min_area=25, margin=1.5).value == \
        pytest.approx(1.5 * strict)
    with pytest.raises(ConfigError, match="margin must be >= 1"):
        fit_threshold(maps, "frame_fpr", 0.1, margin=0.9)
    with pytest.raises(ConfigError, match="larger than a map"):
        fit_threshold(maps, "frame_fpr", 0.1, min_area=24 * 20 + 1)


def test_frame_fpr_warns_when_the_set_is_too_small(caplog) -> None:
    import logging

    maps = _blobby_maps(4, n=40)
    fit = fit_threshold(maps, "frame_fpr", 0.01)
    assert fit.warning and "40 held-out" in fit.warning and "at least 100" in fit.warning
    assert fit.value > float(maps.max())  # above every held-out image
    with caplog.at_level(logging.WARNING, logger="edgeas.thresholds"):
        threshold_from_normal(maps, "frame_fpr", 0.01)
    assert "at least 100" in caplog.text
    assert fit_threshold(maps, "frame_fpr", 0.05).warning is None  # 40 x 0.05 = 2 images


def test_the_pixel_policies_are_unchanged_by_the_new_default() -> None:
    maps = normal_maps(7)
    assert threshold_from_normal(maps, "quantile", 0.999, margin=1.0) == \
        threshold_from_normal(maps, "quantile", 0.999, min_area=50)  # min_area: not used
    assert fit_threshold(maps, "max").value == float(maps.max())


@pytest.mark.parametrize(("threshold", "key"), [
    ("policy: frame_fpr\n  param: 1.5", "threshold.param"),
    ("policy: frame_fpr\n  param: 1.0", "threshold.param"),
    ("param: .nan", "threshold.param"),
    ("margin: 0.5", "threshold.margin"),
    ("margin: .nan", "threshold.margin"),
])
def test_bad_frame_fpr_settings_fail_at_config_load(tmp_path, threshold, key) -> None:
    from edgeas.config import load_config

    path = tmp_path / "cfg.yaml"
    path.write_text(f"preset: tiny\nthreshold:\n  {threshold}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in info.value.message and str(path) in info.value.message
