"""Deployment thresholds from normal maps (protocol.md section 4)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeas.errors import ConfigError, ModelOutputError
from edgeas.postprocess import DEFAULT_POLICY, THRESHOLD_POLICIES, make_threshold
from edgeas.thresholds import threshold_from_normal


def normal_maps(seed: int, n: int = 9, h: int = 17, w: int = 13) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 0.1, size=(n, h, w)).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 0.999, 1.0])
def test_quantile_equals_numpy_linear(seed: int, q: float) -> None:
    maps = normal_maps(seed)
    ref = np.quantile(maps.astype(np.float64), q, method="linear")
    assert threshold_from_normal(maps, "quantile", q) == pytest.approx(ref, rel=1e-12, abs=0)


def test_quantile_is_the_default_and_handles_ties() -> None:
    assert DEFAULT_POLICY == "quantile" and THRESHOLD_POLICIES["quantile"].param.default == 0.999
    maps = np.round(normal_maps(5, n=20) * 8) / 8  # few distinct values
    got = threshold_from_normal(maps)
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
    assert rec == {"value": 0.25, "policy": "quantile", "param": 0.999, "mode": "fused"}
    assert type(rec["value"]) is float
    assert make_threshold(0.3, "sigma", 2, "reference").param == 2.0
    assert make_threshold(None, "max", None, "reference").value is None  # unset
    with pytest.raises(ConfigError):
        make_threshold(0.3, "max", None, "blurred")
    with pytest.raises(ConfigError):
        make_threshold(0.3, "nope", None, "fused")
