"""The activation ranges of `edgeas calibrate`: histogram bookkeeping, the three methods,
and the entropy search against a direct per-bin evaluation of its definition."""

from __future__ import annotations

import numpy as np
import pytest

from edgeas.calibration import ranges as rg
from edgeas.errors import CalibrationError


def _kl_direct(hist: np.ndarray, i: int) -> float:
    """KL(P || Q) written out bin by bin, as NVIDIA's entropy calibration describes it."""
    p = [float(v) for v in hist[:i]]
    p[-1] += float(hist[i:].sum())
    q = [0.0] * i
    for level in range(rg.QUANT_BINS):
        members = [j for j in range(i) if (j * rg.QUANT_BINS) // i == level]
        filled = [j for j in members if hist[j] > 0]
        for j in filled:
            q[j] = float(sum(hist[m] for m in members)) / len(filled)
    if p[-1] > 0 and q[-1] == 0:
        return float("inf")
    sp, sq = sum(p), sum(q)
    return sum(a / sp * np.log((a / sp) / (b / sq)) for a, b in zip(p, q) if a > 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_sum_kl_equals_the_direct_definition(seed):
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, 50, 700)
    hist[rng.random(700) < 0.3] = 0  # empty bins inside levels and at candidate edges
    cands = np.array([128, 129, 200, 255, 256, 333, 512, 699, 700])
    got = rg.kl_divergences(hist, cands)
    want = np.array([_kl_direct(hist, int(i)) for i in cands])
    assert np.array_equal(np.isinf(got), np.isinf(want))
    assert np.allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-9, atol=1e-12)


def test_methods_read_the_expected_clip_from_one_histogram():
    rng = np.random.default_rng(0)
    body = rng.normal(0.0, 1.0, 400_000).astype(np.float32)
    hists = rg.Histograms()
    for chunk in np.array_split(body, 8):
        hists.update("t", chunk)
        hists.count += 1
    hists.update("t", np.array([60.0, -3.0], np.float32))  # one far outlier
    assert hists.hist["t"].sum() == body.size + 2
    assert hists.amax("t", "minmax") == 60.0
    assert hists.low["t"] == pytest.approx(float(body.min()))
    pct = hists.amax("t", "percentile")
    assert pct == pytest.approx(np.percentile(np.abs(body), rg.PERCENTILE), rel=0.05)
    ent = hists.amax("t", "entropy")
    assert 2.0 < ent < 10.0  # clips the outlier, keeps the body


def test_the_cap_doubles_without_moving_counts():
    hists = rg.Histograms()
    hists.update("t", np.linspace(0, 1, 1000, dtype=np.float32))
    before = hists.hist["t"].copy()
    hists.update("t", np.array([3.5], np.float32))  # the cap goes 1 -> 2 -> 4
    assert hists.cap["t"] == 4.0
    merged = before.reshape(-1, 4).sum(axis=1)  # four old bins per new bin, in order
    assert np.array_equal(hists.hist["t"][: rg.BINS // 4], merged)
    assert hists.hist["t"][rg.BINS // 4 :].sum() == 1
    assert hists.hist["t"][int(3.5 / 4.0 * rg.BINS)] == 1


def test_non_finite_activations_are_a_calibration_error():
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        rg.Histograms().update("bad", np.array([1.0, np.nan], np.float32))
