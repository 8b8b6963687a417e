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

from edgeas.errors import ConfigError

POLICIES = ("max", "quantile", "sigma")
DEFAULT_POLICY = "quantile"
DEFAULT_PARAMS: dict[str, float] = {"max": 1.0, "quantile": 0.999, "sigma": 3.0}
MODES = ("fused", "reference")


def effective_param(policy: str, param: float | None) -> float:
    """The parameter a policy will use (its default when `param` is None), validated."""
    if policy not in POLICIES:
        raise ConfigError(
            f"unknown threshold policy {policy!r}",
            hint=f"use one of: {', '.join(POLICIES)}",
        )
    value = DEFAULT_PARAMS[policy] if param is None else param
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold parameter must be a number, got {param!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"threshold parameter must be finite, got {param!r}")
    if policy == "quantile" and not 0.0 <= value <= 1.0:
        raise ConfigError(f"quantile q must be in [0, 1], got {value}", hint="e.g. 0.999")
    if policy == "max" and value <= 0.0:
        raise ConfigError(f"margin must be positive, got {value}", hint="e.g. 1.0 or 1.1")
    return value


def threshold_from_normal(
    maps: np.ndarray | Sequence[np.ndarray],
    policy: str = DEFAULT_POLICY,
    param: float | None = None,
) -> float:
    """tau from normal anomaly maps ((N, H, W) array or a sequence of 2-D maps)."""
    value = effective_param(policy, param)
    arrays = _as_maps(maps)
    if policy == "max":
        return float(max(float(a.max()) for a in arrays)) * value
    if policy == "sigma":
        image_scores = np.array([a.max() for a in arrays], dtype=np.float64)
        return float(image_scores.mean() + value * image_scores.std())
    return _quantile_linear(arrays, value)


def threshold_record(
    value: float | None, policy: str, param: float | None, mode: str
) -> dict[str, object]:
    """The metadata entry {value, policy, param, mode}; value None means "unset"."""
    if mode not in MODES:
        raise ConfigError(
            f"unknown aggregation mode {mode!r}", hint=f"use one of: {', '.join(MODES)}"
        )
    if value is not None:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"threshold value must be finite, got {value}")
    return {"value": value, "policy": policy, "param": effective_param(policy, param), "mode": mode}


def _as_maps(maps: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(maps, np.ndarray):
        if maps.ndim < 2:
            raise ConfigError(f"normal maps must be 2-D or (N, H, W), got shape {maps.shape}")
        arrays = [maps] if maps.ndim == 2 else list(maps.reshape(-1, *maps.shape[-2:]))
    else:
        arrays = [np.asarray(m) for m in maps]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        raise ConfigError(
            "no normal maps to fit a threshold on", hint="give held-out normal images"
        )
    for a in arrays:
        if not np.isfinite(a).all():
            raise ConfigError("normal maps contain NaN or inf")
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
