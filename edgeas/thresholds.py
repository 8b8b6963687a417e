"""Deployment threshold tau from normal images only (protocol.md section 4).

A station has no anomalous examples, so tau comes from held-out normal
maps made by the aggregation mode the runtime uses:
- `frame_fpr` (the default): the smallest tau at which at most a target fraction
  (param, default 0.01, in [0, 1)) of the images would be NG under the full decision
  rule, min_area included. From their decision scores s_i (`edgeas.decisions`: image i
  is NG at t exactly when s_i >= t) with k = the largest count with k / N <= target:
  tau = the next float32 above the (k+1)-th largest s_i, so at most k images are NG at
  tau and k + 1 or more at any float32 below it. Ties at that score all go OK (fewer
  than k may be NG). With N < 1 / target the set cannot tell the target from 0, and
  tau lies above every held-out image: `frame_fpr_advice` says so;
- `max`: max normal pixel score x margin (param = margin, default 1.0);
- `quantile`: q-quantile of all normal pixel scores (param = q, default
  0.999; numpy's "linear" definition, computed exactly);
- `sigma`: mean + k * std of normal image scores, image score = max of its
  map (param = k, default 3; population std, ddof = 0).
Every policy's tau is then multiplied by the margin (>= 1, default 1: unchanged).
numpy (and OpenCV through `edgeas.decisions`) only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeas.decisions import allowed_ng, decision_scores
from edgeas.errors import ConfigError, ModelOutputError

log = logging.getLogger("edgeas.thresholds")
Maps = np.ndarray | Sequence[np.ndarray]


@dataclass(frozen=True)
class ThresholdFit:
    value: float  # tau, margin included
    images: int  # how many normal maps it was fitted on
    warning: str | None = None  # e.g. too few images for the target


def fit_threshold(maps: Maps, policy: str | None = None, param: float | None = None, *,
                  min_area: int = 0, margin: float | None = None) -> ThresholdFit:
    """tau from normal anomaly maps ((N, H, W) array or a sequence of 2-D maps, at model
    resolution), by a policy of `edgeas.postprocess.THRESHOLD_POLICIES` (None: the
    default policy; its default param for None), then x margin (None: 1)."""
    from edgeas.postprocess import DEFAULT_POLICY, MARGIN, FitContext, threshold_policy

    chosen = threshold_policy(policy or DEFAULT_POLICY)
    value = chosen.check(param)
    factor = MARGIN.check(margin, "threshold.margin")
    if isinstance(min_area, bool) or int(min_area) != min_area or min_area < 0:
        raise ConfigError(f"min_area must be a whole number >= 0, got {min_area!r}")
    arrays = _as_maps(maps)
    tau = chosen.fit(arrays, value, FitContext(int(min_area)))
    if factor != 1.0:  # skipped at 1 so that the unmargined value is the policy's own
        tau *= factor
    advice = chosen.advice(len(arrays), value) if chosen.advice is not None else None
    return ThresholdFit(float(tau), len(arrays), advice)


def threshold_from_normal(maps: Maps, policy: str | None = None, param: float | None = None,
                          *, min_area: int = 0, margin: float | None = None) -> float:
    """`fit_threshold(...).value`; its warning, if any, goes to the log."""
    fit = fit_threshold(maps, policy, param, min_area=min_area, margin=margin)
    if fit.warning:
        log.warning("%s", fit.warning)
    return fit.value


def fit_frame_fpr(arrays: list[np.ndarray], target: float, min_area: int) -> float:
    smallest = min(a.size for a in arrays)
    if max(min_area, 1) > smallest:
        raise ConfigError(f"min_area {min_area} is larger than a map ({smallest} pixels): "
                          "no image could ever be NG", hint="min_area counts model pixels")
    scores = np.sort(decision_scores(arrays, min_area))[::-1]
    k = allowed_ng(len(arrays), target)
    above = np.float32(scores[k])  # the (k+1)-th largest: it must be OK at tau
    return float(np.nextafter(above, np.float32(np.inf)))


def frame_fpr_advice(images: int, target: float) -> str | None:
    """A warning when `images` held-out images cannot resolve the target rate."""
    if target <= 0 or images == 0 or allowed_ng(images, target) >= 1:
        return None
    return (f"only {images} held-out normal image(s) for a false-NG target of {target:g}: "
            f"at least {math.ceil(1 / target)} are needed to resolve it, so the threshold "
            "lies above every held-out image (a stricter target than asked)")


def fit_max(arrays: list[np.ndarray], margin: float) -> float:
    return float(max(float(a.max()) for a in arrays)) * margin


def fit_sigma(arrays: list[np.ndarray], k: float) -> float:
    image_scores = np.array([a.max() for a in arrays], dtype=np.float64)
    return float(image_scores.mean() + k * image_scores.std())


def fit_quantile(arrays: list[np.ndarray], q: float) -> float:
    return _quantile_linear(arrays, q)


def _as_maps(maps: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(maps, np.ndarray):
        if maps.ndim < 2:
            raise ModelOutputError(
                f"normal maps must be 2-D or (N, H, W), got shape {maps.shape}"
            )
        arrays = [maps] if maps.ndim == 2 else list(maps.reshape(-1, *maps.shape[-2:]))
    else:
        arrays = [np.asarray(m) for m in maps]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        raise ConfigError(
            "no normal maps to fit a threshold on", hint="give held-out normal images"
        )
    # Non-finite scores come from the model (or a broken image), not from the user's
    # settings: a run-time failure, with the count so that one bad pixel is told from a
    # model that diverged.
    bad = sum(int(a.size - np.count_nonzero(np.isfinite(a))) for a in arrays)
    if bad:
        total = sum(a.size for a in arrays)
        raise ModelOutputError(
            f"normal maps contain {bad} NaN or inf value(s) out of {total}",
            hint="the model produced non-finite scores: check the checkpoint and the images",
        )
    return arrays


def _quantile_linear(arrays: list[np.ndarray], q: float) -> float:
    """np.quantile(all_pixels, q, method="linear"), via a partial sort instead of a full sort."""
    flat = np.concatenate([a.reshape(-1) for a in arrays])
    h = (flat.size - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, flat.size - 1)
    part = np.partition(flat, (lo, hi))
    a, b = float(part[lo]), float(part[hi])
    t = h - lo
    # numpy's lerp: from the nearer end, so q = 1 gives the max exactly.
    return b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t
