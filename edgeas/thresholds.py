"""Deployment threshold tau from normal images only (protocol.md section 4).

A station has no anomalous examples, so tau comes from held-out normal
maps made by the aggregation mode the runtime uses:
- `max`: max normal pixel score x margin (param = margin, default 1.0);
- `quantile`: q-quantile of all normal pixel scores (param = q, default
  0.999; numpy's "linear" definition, computed exactly);
- `sigma`: mean + k * std of normal image scores, image score = max of its
  map (param = k, default 3; population std, ddof = 0).
numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgeas.errors import ConfigError, ModelOutputError


def threshold_from_normal(
    maps: np.ndarray | Sequence[np.ndarray],
    policy: str = "quantile",
    param: float | None = None,
) -> float:
    """tau from normal anomaly maps ((N, H, W) array or a sequence of 2-D maps), by a
    policy of `edgeas.postprocess.THRESHOLD_POLICIES` (its default param for None)."""
    from edgeas.postprocess import threshold_policy

    chosen = threshold_policy(policy)
    value = chosen.check(param)
    return chosen.fit(_as_maps(maps), value)


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
