"""Per-level maps -> anomaly map, mask and decision (protocol.md section 3).

What is computed is the *setting* (the record's `aggregation`): a smoothing, one
(kernel, sigma) per level at the finest level's resolution or none, and the level set
whose maps are multiplied. How it is computed is the *mode*, each for any setting (the
registry `edgeas.postprocess.AGGREGATION_MODES`, whose DEFAULT_MODE is every function's
default here):

- ``reference``: the straightforward implementation, the official UniAS code's,
  reproduced to float32 precision: resize each level to the finest level's size (R_i,
  half-pixel bilinear), smooth it there (G_i, reflect-101 border), multiply in the
  official order ((res1 * res4) * res3) * res2, upsample the product to the output size
  (align-corners bilinear). Plain numpy, vectorised over a batch.
- ``fused``: the fast implementation: each level resized to the finest level's size and
  smoothed there, exactly the reference's first two steps (maps of 112x112 at most: a
  fraction of a millisecond with OpenCV), then ONE pass at the output size samples every
  level with the reference's last geometry (align-corners bilinear B), multiplies them
  and writes the map and the mask. The same pass is the CUDA kernel
  (runtime/fused_aggregate.cu); here OpenCV.

Why fused equals reference up to interpolation error. With p_i the smoothed levels at the
finest size, reference computes B(p_1 p_2 ... p_n) and fused B(p_1) B(p_2) ... B(p_n):
they differ only in the order of the last two steps. Along one axis, a sample a fraction
t between grid points j and j + 1 gives, for two maps a and b,

    B(a) B(b) - B(ab) = -t (1 - t) (a_{j+1} - a_j) (b_{j+1} - b_j),

the product of two neighbouring differences on the finest grid, at most a quarter of it,
and zero on grid points; in 2-D the same holds per axis plus terms of the same order. The
smoothed levels change little from one finest pixel to the next, so the difference is
second order in the finest pixel size (measured on trained models: 0.3-1% of the map's
maximum, where sampling each level at its own resolution with half-pixel centres gave
4-7%; benchmarks/EXPERIMENTS.md). eval measures it on every model (aggregation.json):
same OK/NG decision on >= 99.5% of images and |pAP difference| <= 0.2 points is the bar.

numpy and OpenCV only: this module is on the runtime's import path, which must
work on a bare Jetson image without torch.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence

import cv2
import numpy as np

from edgeas.errors import ConfigError, ModelOutputError
from edgeas.interp import gaussian_blur, gaussian_kernel1d, resize_bilinear
from edgeas.interp import out_size as _out_size
from edgeas.postprocess import DEFAULT_MODE, aggregation_mode, check_smoothing

# Batch chunk for the numpy paths: bounds the temporaries to a few tens of MB.
_CHUNK = 32
# Above this many regions to delete, one table lookup over the label image is
# cheaper than clearing each region inside its bounding box.
_MAX_BOX_CLEARS = 32

# (kernel, sigma) per level, res1 first, or "official" / "none" (edgeas.postprocess)
Smoothing = Sequence[tuple[int, float]] | str | None
# indices of the levels in the product, finest first (None: every level)
LevelSet = Sequence[int] | None


# --------------------------------------------------------------------------- checks


# Map shapes are what a model produced, not a setting: ModelOutputError (exit 1), while
# ConfigError stays for the caller's own values (mode, blur, threshold, output size).


def _as_levels(maps: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One image's level maps as contiguous float32 (h, w); engine outputs (1, 1, h, w) work."""
    if isinstance(maps, np.ndarray) or len(maps) == 0:
        raise ModelOutputError(
            "maps must be a list of per-level 2-D maps (res1 first)",
            hint="pass [dist_res1, dist_res2, dist_res3, dist_res4]",
        )
    levels = []
    for i, m in enumerate(maps):
        a = np.asarray(m)
        while a.ndim > 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2 or a.size == 0:
            raise ModelOutputError(
                f"map of level res{i + 1} has shape {np.shape(m)}; expected a 2-D (h, w) map"
            )
        levels.append(np.ascontiguousarray(a, dtype=np.float32))
    return levels


def _as_batched_levels(levels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-level (B, h, w) float32 stacks; a 2-D level counts as a batch of one."""
    if isinstance(levels, np.ndarray) or len(levels) == 0:
        raise ModelOutputError("levels must be a list of per-level (B, h, w) arrays, res1 first")
    out = []
    for i, m in enumerate(levels):
        a = np.asarray(m, dtype=np.float32)
        if a.ndim == 4 and a.shape[1] == 1:  # (B, 1, h, w) as exported graphs emit
            a = a[:, 0]
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.size == 0:
            raise ModelOutputError(f"level res{i + 1} has shape {np.shape(m)}; expected (B, h, w)")
        out.append(a)
    if len({a.shape[0] for a in out}) != 1:
        raise ModelOutputError(f"levels have different batch sizes: {[a.shape[0] for a in out]}")
    return out


def _check_mode(mode: str) -> str:
    return aggregation_mode(mode).name


def _product_order(n_levels: int) -> list[int]:
    # The official code starts from res1 and multiplies the others in its
    # decoder order (coarse to fine): ((res1 * res4) * res3) * res2. float32
    # products are not associative, so the order is part of the contract.
    return [0, *range(n_levels - 1, 0, -1)]


def _float32_threshold(threshold: float) -> np.float32:
    """The float32 t with (a >= t) == (a >= threshold) for every float32 a.

    A float64 threshold would promote the whole map (slow); a Python float is
    rounded to float32 either way (NEP 50). Rounding up keeps it exact.
    """
    tau = float(threshold)
    if math.isnan(tau):
        raise ConfigError("threshold is NaN")
    with np.errstate(over="ignore"):
        t32 = np.float32(tau)
    if float(t32) < tau:
        t32 = np.nextafter(t32, np.float32(np.inf))
    return t32


# --------------------------------------------------------------------------- the setting


def _setting(levels: list[np.ndarray], smoothing: Smoothing, use: LevelSet):
    """(finest (h, w), the chosen levels, their (kernel, sigma) pairs or ()). The pairs
    are given at the finest level's resolution whichever levels are chosen."""
    pairs = check_smoothing(smoothing, len(levels))
    finest = tuple(levels[0].shape[-2:])
    if use is None:
        return finest, levels, pairs
    idx = [int(i) for i in use]
    if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= len(levels):
        raise ConfigError(f"level set {list(use)} must be distinct indices of the "
                          f"{len(levels)} levels")
    idx.sort()
    return finest, [levels[i] for i in idx], tuple(pairs[i] for i in idx) if pairs else ()


# --------------------------------------------------------------------------- reference mode


def _finest_levels(levels: list[np.ndarray], pairs: Sequence[tuple[int, float]],
                   size: tuple[int, int]):
    """(resized, smoothed) at the finest level's size for (B, h, w) stacks: the reference's
    first two steps, which fused shares."""
    # the official code does not resize res1 (a same-size resize is the identity anyway)
    up = [m if m.shape[-2:] == size else resize_bilinear(m, size, align_corners=False)
          for m in levels]
    post = [gaussian_blur(u, k, s) for u, (k, s) in zip(up, pairs, strict=True)] \
        if pairs else up
    return up, post


def _product(post: list[np.ndarray]) -> np.ndarray:
    order = _product_order(len(post))
    product = post[order[0]].copy()
    for i in order[1:]:
        product *= post[i]
    return product


def _reference_small(levels: list[np.ndarray], pairs: Sequence[tuple[int, float]],
                     size: tuple[int, int]):
    """(resized, smoothed, product) at the finest level's size for (B, h, w) stacks."""
    up, post = _finest_levels(levels, pairs, size)
    return up, post, _product(post)


def reference_stages(
    levels: Sequence[np.ndarray], out_hw: Sequence[int], smoothing: Smoothing = None
) -> dict[str, np.ndarray]:
    """Every step of the official post-processing under the conformance names, for
    (B, h_i, w_i) stacks: ``dist_up_res{i}``, ``dist_post_res{i}``, ``anomaly_map_112``
    (at the finest level's size, whatever it is), ``anomaly_map`` (B, 1, H, W), ``image_score``.
    """
    levels = _as_batched_levels(levels)
    h, w = _out_size(out_hw)
    finest, levels, pairs = _setting(levels, smoothing, None)
    up, post, product = _reference_small(levels, pairs, finest)
    amap = resize_bilinear(product, (h, w), align_corners=True)
    out = {f"dist_up_res{i + 1}": u for i, u in enumerate(up)}
    out.update({f"dist_post_res{i + 1}": p for i, p in enumerate(post)})
    out["anomaly_map_112"] = product
    out["anomaly_map"] = amap[:, None]
    out["image_score"] = amap.reshape(amap.shape[0], -1).max(axis=1)
    return out


def reference_maps_batch(
    levels: Sequence[np.ndarray], out_hw: Sequence[int], smoothing: Smoothing = None,
    use: LevelSet = None,
) -> np.ndarray:
    """Reference-mode anomaly maps (B, H, W) float32 for per-level (B, h_i, w_i) stacks."""
    levels = _as_batched_levels(levels)
    h, w = _out_size(out_hw)
    finest, levels, pairs = _setting(levels, smoothing, use)
    n = levels[0].shape[0]
    out = np.empty((n, h, w), np.float32)
    for s in range(0, n, _CHUNK):
        small = _reference_small([m[s : s + _CHUNK] for m in levels], pairs, finest)[2]
        out[s : s + _CHUNK] = resize_bilinear(small, (h, w), align_corners=True)
    return out


def aggregate_batch(
    levels: Sequence[np.ndarray],
    out_hw: Sequence[int],
    mode: str = DEFAULT_MODE,
    smoothing: Smoothing = None,
    use: LevelSet = None,
) -> np.ndarray:
    """Maps (B, H, W) for per-level (B, h_i, w_i) stacks in either mode (for evaluation).
    `smoothing`: the setting's (None: official); `use`: the level set (None: all).

    ``fused`` here samples with numpy's torch-exact bilinear; the runtime's `fused_map`
    computes the same values via OpenCV (both checked in the tests).
    """
    if _check_mode(mode) == "reference":
        return reference_maps_batch(levels, out_hw, smoothing, use)
    levels = _as_batched_levels(levels)
    h, w = _out_size(out_hw)
    finest, levels, pairs = _setting(levels, smoothing, use)
    order = _product_order(len(levels))
    out = np.empty((levels[0].shape[0], h, w), np.float32)
    for s in range(0, out.shape[0], _CHUNK):
        post = _finest_levels([m[s : s + _CHUNK] for m in levels], pairs, finest)[1]
        acc = resize_bilinear(post[order[0]], (h, w), align_corners=True)
        for i in order[1:]:
            acc *= resize_bilinear(post[i], (h, w), align_corners=True)
        out[s : s + _CHUNK] = acc
    return out


# --------------------------------------------------------------------------- fused mode (runtime)


class _Scratch(threading.local):
    """One reusable full-size float buffer per thread, internal only: a fresh multi-MB
    temporary per level and frame costs more than the arithmetic (page faults)."""

    buf: np.ndarray | None = None


_scratch_local = _Scratch()


def _scratch(shape: tuple[int, int]) -> np.ndarray:
    buf = _scratch_local.buf
    if buf is None or buf.shape != shape:
        buf = _scratch_local.buf = np.empty(shape, np.float32)
    return buf


@functools.lru_cache(maxsize=64)
def _kernel(kernel: int, sigma: float) -> np.ndarray:
    """The setting's 1-D Gaussian, made once per (kernel, sigma) rather than per frame and
    level (a tenth of the fused pass at model size); read-only, as it is shared."""
    g = gaussian_kernel1d(kernel, sigma)
    g.flags.writeable = False
    return g


def _smooth_at_finest(level: np.ndarray, pair: tuple[int, float] | None,
                      finest: tuple[int, int]) -> np.ndarray:
    """One level resized to the finest size (half-pixel) and smoothed there (reflect-101):
    the reference's first two steps, with OpenCV (within ~2e-7 of the numpy path, a few
    times faster on one image)."""
    h, w = finest
    up = level if level.shape == finest else cv2.resize(level, (w, h),
                                                        interpolation=cv2.INTER_LINEAR)
    if pair is None:
        return up
    g = _kernel(int(pair[0]), float(pair[1]))
    return cv2.sepFilter2D(up, cv2.CV_32F, g, g, borderType=cv2.BORDER_REFLECT_101)


def fused_levels(maps: Sequence[np.ndarray], smoothing: Smoothing = None,
                 use: LevelSet = None) -> list[np.ndarray]:
    """The fused pass's inputs for one image: the chosen levels (2-D float32, finest
    first), each resized to the finest size and smoothed there. Shared by the OpenCV pass
    below and the CUDA kernel (runtime/cuda_aggregate.py), so both compute one setting the
    same way."""
    finest, levels, pairs = _setting(_as_levels(maps), smoothing, use)
    return [_smooth_at_finest(m, pairs[i] if pairs else None, finest)
            for i, m in enumerate(levels)]


@functools.lru_cache(maxsize=1)
def warp_is_exact() -> bool:
    """Whether this OpenCV's warpAffine samples float maps at exact positions. OpenCV 5
    does; OpenCV 4 rounds positions to 1/32 pixel (up to ~2% of a rough map's range),
    so there the numpy resize, exact and slower, takes its place."""
    rng = np.random.default_rng(0)
    level = rng.random((7, 5), dtype=np.float32)
    warped = _warp(level, 13, 11, None)
    return float(np.abs(warped - resize_bilinear(level, (13, 11), True)).max()) <= 1e-5


def _warp(level: np.ndarray, h: int, w: int, dst: np.ndarray | None) -> np.ndarray:
    lh, lw = level.shape
    sx = (lw - 1) / (w - 1) if w > 1 else 0.0
    sy = (lh - 1) / (h - 1) if h > 1 else 0.0
    warp = np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0]], np.float64)
    return cv2.warpAffine(level, warp, (w, h), dst=dst,
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def resize_align_corners(level: np.ndarray, h: int, w: int,
                         dst: np.ndarray | None = None) -> np.ndarray:
    """Align-corners bilinear of a 2-D float32 `level` to (h, w) (into dst if given).
    cv2.resize only has half-pixel centres; an affine warp with the align-corners scale
    samples where torch does (within float rounding) at cv2.resize's speed, where this
    OpenCV's warp is exact (`warp_is_exact`); else numpy's torch-exact resize."""
    if warp_is_exact():
        return _warp(level, h, w, dst)
    return resize_bilinear(level, (h, w), True, out=dst)


def fused_map(maps: Sequence[np.ndarray], out_hw: Sequence[int], smoothing: Smoothing = None,
              use: LevelSet = None) -> np.ndarray:
    """prod_i B(p_i) at out_hw: the levels smoothed at the finest size (`fused_levels`),
    each sampled align-corners (torch align_corners=True) and multiplied in the official
    order. OpenCV's warp runs multi-threaded with the GIL released; each level is sampled
    into one scratch buffer and multiplied into the output in place: two full-size maps
    in all, and the output is a fresh array the caller owns.
    """
    levels = fused_levels(maps, smoothing, use)
    h, w = _out_size(out_hw)
    order = _product_order(len(levels))
    out = np.empty((h, w), np.float32)
    resize_align_corners(levels[order[0]], h, w, out)
    if len(levels) > 1:
        tmp = _scratch((h, w))
        for i in order[1:]:
            resize_align_corners(levels[i], h, w, tmp)
            np.multiply(out, tmp, out=out)
    return out


def threshold_mask(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 0/1 mask of anomaly_map >= threshold (exact, see _float32_threshold)."""
    a = np.asarray(anomaly_map, dtype=np.float32)
    mask = np.empty(a.shape, np.uint8)
    # comparing into a bool view writes 0/1 bytes directly: no astype pass
    np.greater_equal(a, _float32_threshold(threshold), out=mask.view(np.bool_))
    return mask


def aggregate(
    maps: Sequence[np.ndarray],
    out_hw: Sequence[int],
    threshold: float | None = None,
    mode: str = DEFAULT_MODE,
    smoothing: Smoothing = None,
    use: LevelSet = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Anomaly map (H, W) float32 and mask (H, W) uint8 0/1 (None without a threshold).

    maps: the raw per-level 2-D maps of one image, res1 (finest) first.
    smoothing: "official" (None), "none", or (kernel, sigma) per level, res1 first.
    use: indices of the levels in the product (None: all).
    """
    if _check_mode(mode) == "fused":
        amap = fused_map(maps, out_hw, smoothing, use)
    else:
        finest, levels, pairs = _setting(_as_levels(maps), smoothing, use)
        h, w = _out_size(out_hw)
        small = _reference_small([m[None] for m in levels], pairs, finest)[2][0]
        amap = resize_bilinear(
            small, (h, w), True, out=np.empty((h, w), np.float32), scratch=_scratch((h, w))
        )
    mask = None if threshold is None else threshold_mask(amap, threshold)
    return amap, mask


def image_score(anomaly_map: np.ndarray) -> float:
    """Image-level score: the maximum of the map (official EvalImageMax, top 1 pixel)."""
    return float(np.max(anomaly_map))


# --------------------------------------------------------------------------- decision


def _as_mask(mask: np.ndarray) -> np.ndarray:
    """A new contiguous uint8 0/1 copy of a 2-D mask (any dtype, nonzero = set)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ConfigError(f"mask must be 2-D (H, W), got shape {m.shape}")
    return (m != 0).view(np.uint8)


def _components(mask: np.ndarray):
    return cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)


def _clear_labels(out: np.ndarray, labels: np.ndarray, stats: np.ndarray,
                  small: np.ndarray) -> np.ndarray:
    """`out` with the pixels of the labels in `small` set to 0."""
    if small.size <= _MAX_BOX_CLEARS:
        # small regions have small boxes: touch only those pixels
        for lab in small:
            x, y, w, h = (int(v) for v in stats[lab, :4])
            win = out[y : y + h, x : x + w]
            win[labels[y : y + h, x : x + w] == lab] = 0
        return out
    keep = np.ones(len(stats), np.uint8)
    keep[0] = 0
    keep[small] = 0
    return np.take(keep, labels)


def remove_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Copy of mask (uint8 0/1) without its 8-connected regions of fewer than min_area pixels."""
    out = _as_mask(mask)  # a new array: the caller's mask is never modified
    if min_area <= 1 or not out.any():
        return out
    _, labels, stats, _ = _components(out)
    small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_area) + 1
    return _clear_labels(out, labels, stats, small)


def clean_and_decide(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool, list[list[int]]]:
    """`remove_small_regions` then `decide`, from one connected-components pass: the
    per-frame path of the station. Removing whole 8-connected regions leaves the areas and
    boxes of the others as they were, so the result is the same as the two calls."""
    out = _as_mask(mask)
    if not out.any():
        return out, False, []
    _, labels, stats, _ = _components(out)
    area = stats[1:, cv2.CC_STAT_AREA]
    kept = np.flatnonzero(area >= max(min_area, 1)) + 1
    regions = [[int(v) for v in stats[lab, :4]] for lab in kept]
    if min_area > 1:
        out = _clear_labels(out, labels, stats, np.flatnonzero(area < min_area) + 1)
    return out, bool(regions), regions


def decide(mask: np.ndarray, min_area: int) -> tuple[bool, list[list[int]]]:
    """NG when a region of >= min_area pixels remains; its boxes [x, y, w, h] in mask pixels."""
    m = _as_mask(mask)
    if not m.any():
        return False, []
    _, _, stats, _ = _components(m)
    regions = [[int(v) for v in row[:4]] for row in stats[1:] if row[cv2.CC_STAT_AREA] >= min_area]
    return bool(regions), regions
