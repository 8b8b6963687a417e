"""A level's smoothing at the level's own resolution, for the fused aggregation.

The setting gives one (kernel, sigma) per level at the finest level's resolution (the
reference code smooths there, after resizing). `native_kernel` is the kernel on a grid
`scale` times coarser whose taps, spread `scale` fine pixels apart, have the same
variance: `edgeas.aggregate`'s docstring shows why that makes the two smoothings agree up
to interpolation error. numpy and OpenCV only (the runtime's import path).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np

from edgeas.interp import gaussian_kernel1d

# Up to this variance (in the level's pixels) a 3-tap [a, 1 - 2a, a] kernel has it with
# a unimodal, non-negative shape (centre 1 - 2a >= a); beyond it a sampled Gaussian.
_THREE_TAP_MAX_VARIANCE = 2.0 / 3.0


def kernel_variance(weights: np.ndarray) -> float:
    """Variance (in taps) of a normalised, centred, odd-sized 1-D kernel."""
    w = np.asarray(weights, dtype=np.float64)
    x = np.arange(w.size) - w.size // 2
    return float((w * x * x).sum() / w.sum())


def _sampled_gaussian(variance: float) -> np.ndarray:
    """A normalised Gaussian sampled at whole taps (radius 3 sigma + 1) whose *discrete*
    variance is `variance` (its sigma found by bisection: sampling shrinks it a little)."""
    radius = int(math.ceil(3.0 * math.sqrt(variance))) + 1
    x = np.arange(-radius, radius + 1, dtype=np.float64)

    def taps(sigma: float) -> np.ndarray:
        g = np.exp(-(x * x) / (2.0 * sigma * sigma))
        return g / g.sum()

    lo, hi = 1e-3, 2.0 * math.sqrt(variance) + 1.0
    for _ in range(60):  # the variance grows with sigma: bisect to float precision
        mid = 0.5 * (lo + hi)
        if kernel_variance(taps(mid)) < variance:
            lo = mid
        else:
            hi = mid
    return taps(0.5 * (lo + hi))


@functools.lru_cache(maxsize=128)
def native_kernel(kernel: int, sigma: float, scale: float) -> np.ndarray:
    """float32 1-D kernel for a level `scale` times coarser than the finest, equivalent to
    the setting's (kernel, sigma) at the finest resolution: the setting's own kernel when
    scale is 1, else one of variance Var(setting's kernel) / scale^2."""
    fine = gaussian_kernel1d(kernel, sigma)
    variance = kernel_variance(fine) / (scale * scale)
    if scale == 1.0:
        out = fine
    elif variance <= _THREE_TAP_MAX_VARIANCE:
        a = variance / 2.0
        out = np.array([a, 1.0 - 2.0 * a, a], dtype=np.float32)
    else:
        out = _sampled_gaussian(variance).astype(np.float32)
    out.flags.writeable = False  # cached and shared: nobody may change it
    return out


def level_kernels(pair: tuple[int, float], level_hw: Sequence[int],
                  finest_hw: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(kernel along y, kernel along x) of one level of size level_hw."""
    k, s = pair
    return (native_kernel(int(k), float(s), finest_hw[0] / level_hw[0]),
            native_kernel(int(k), float(s), finest_hw[1] / level_hw[1]))


def smooth_native(level: np.ndarray, kernel_y: np.ndarray, kernel_x: np.ndarray) -> np.ndarray:
    """A new float32 (h, w) or (B, h, w) array: `level` filtered along x, then y, with a
    reflect-101 border (the reference's)."""
    a = np.asarray(level, dtype=np.float32)
    if a.ndim == 2:
        return cv2.sepFilter2D(a, cv2.CV_32F, kernel_x, kernel_y,
                               borderType=cv2.BORDER_REFLECT_101)
    return np.stack([smooth_native(m, kernel_y, kernel_x) for m in a])


def smooth_levels(levels: Sequence[np.ndarray], pairs: Sequence[tuple[int, float]],
                  finest_hw: Sequence[int]) -> list[np.ndarray]:
    """Each level smoothed at its own resolution by the setting's pair (none: unchanged).
    `finest_hw`: the finest level's (h, w), the resolution the pairs are given at."""
    if not pairs:
        return list(levels)
    out = []
    for level, pair in zip(levels, pairs, strict=True):
        ky, kx = level_kernels(pair, level.shape[-2:], finest_hw)
        out.append(smooth_native(level, ky, kx))
    return out
