"""Bilinear resizing and Gaussian blurring in numpy, exact to PyTorch's float32 kernels.

Used by the reference aggregation (evaluation, thresholds, conformance); no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeas.errors import ConfigError


def out_size(out_hw: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in out_hw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"out_hw must be (height, width), got {out_hw!r}") from exc
    if h < 1 or w < 1:
        raise ConfigError(f"out_hw must be positive, got {out_hw!r}")
    return h, w


def _axis_taps(n_in: int, n_out: int, align_corners: bool):
    """Source indices and weights of torch's bilinear along one axis.

    torch computes scale and source position in float32, which moves samples
    by up to ~4e-6 px at 112 -> 1920; reproduced here rather than exact.
    """
    dst = np.arange(n_out, dtype=np.float32)
    if align_corners:
        scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
        src = scale * dst
    else:
        scale = np.float32(n_in) / np.float32(n_out)
        # scale * (dst + 0.5) - 0.5 is compiled into one fused multiply-add in
        # torch's CPU kernel: one rounding, emulated by exact float64 arithmetic
        src = (np.float64(scale) * (dst.astype(np.float64) + 0.5) - 0.5).astype(np.float32)
        src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1) - w1).astype(np.float32)
    return i0, i1, w0, w1


def resize_bilinear(
    x: np.ndarray,
    out_hw: Sequence[int],
    align_corners: bool,
    out: np.ndarray | None = None,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """torch's F.interpolate(mode='bilinear') on the last two axes of x, any leading axes.

    Width first, then height, as torch associates it on CPU. `out`, `scratch`:
    optional float32 buffers of the output's shape (no multi-MB allocations).
    """
    x = np.asarray(x, dtype=np.float32)
    h, w = out_size(out_hw)
    j0, j1, u0, u1 = _axis_taps(x.shape[-1], w, align_corners)
    t = np.take(x, j0, axis=-1)
    t *= u0
    t += np.take(x, j1, axis=-1) * u1
    i0, i1, v0, v1 = _axis_taps(x.shape[-2], h, align_corners)
    # the row pass runs at the output size: gathers and in-place products only
    shape = (*t.shape[:-2], h, w)
    if out is None or out.shape != shape or out.dtype != np.float32:
        out = np.empty(shape, np.float32)
    if scratch is None or scratch.shape != shape or scratch.dtype != np.float32:
        scratch = np.empty(shape, np.float32)
    # mode='clip' (indices are in range) lets take write into `out` unbuffered
    np.take(t, i0, axis=-2, out=out, mode="clip")
    out *= v0[:, None]
    np.take(t, i1, axis=-2, out=scratch, mode="clip")
    scratch *= v1[:, None]
    out += scratch
    return out


def gaussian_kernel1d(kernel: int, sigma: float) -> np.ndarray:
    """kornia's normalised 1-D Gaussian: exp(-x^2 / (2 sigma^2)) at integer offsets (odd size)."""
    x = np.arange(kernel, dtype=np.float32) - np.float32(kernel // 2)
    s = np.float32(sigma)
    g = np.exp(-(x * x) / (np.float32(2) * s * s)).astype(np.float32)
    return (g / g.sum(dtype=np.float32)).astype(np.float32)


def _filter_last_axis(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    k = g.size
    pad = [(0, 0)] * (x.ndim - 1) + [(k // 2, k // 2)]
    # numpy 'reflect' mirrors without repeating the edge = torch 'reflect' = BORDER_REFLECT_101
    xp = np.pad(x, pad, mode="reflect")
    n = x.shape[-1]
    acc = xp[..., 0:n] * g[0]
    for i in range(1, k):
        acc += xp[..., i : i + n] * g[i]
    return acc


def gaussian_blur(x: np.ndarray, kernel: int, sigma: float) -> np.ndarray:
    """kornia.filters.gaussian_blur2d(border_type='reflect') on the last two axes of x."""
    g = gaussian_kernel1d(kernel, sigma)
    x = np.asarray(x, dtype=np.float32)
    # kornia's separable filter runs along x (width) first, then along y
    t = _filter_last_axis(x, g)
    return np.swapaxes(_filter_last_axis(np.swapaxes(t, -1, -2), g), -1, -2)
