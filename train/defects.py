"""Defect renderers for the synthetic inspection set (`edgeas synth`).

Each renderer draws one defect on a clean float32 BGR image (values 0..255) and
returns `(alpha, target)`; the defective image is `clean + alpha * (target - clean)`.
Alpha is zero outside the mask (a stain keeps a faint soft fringe below its
visibility threshold), so the mask is exactly where pixels changed. A draw whose
change would not be visible (a black hole on a black background, a foreign patch
that happens to look like the surface) is redrawn: see `apply_defect`.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

DEFECT_KINDS: tuple[str, ...] = ("scratch", "stain", "foreign", "hole", "blob")

# Minimum mean change (grey levels, max over channels) inside the mask of an
# accepted draw; blobs are low-contrast on purpose, so their bar is lower.
MIN_VISIBLE = {"scratch": 20.0, "stain": 20.0, "foreign": 20.0, "hole": 25.0, "blob": 12.0}
_MAX_TRIES = 40
_SS = 4  # supersampling factor: shapes are drawn at 4x and area-averaged for anti-aliased edges
_BGR_LUMA = np.array([0.114, 0.587, 0.299], np.float32)


def luma(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) @ _BGR_LUMA


def _radius(rng: np.random.Generator, size: int) -> float:
    # Log-uniform so that tiny defects (3-4 px across) are as common as large ones.
    return float(np.exp(rng.uniform(np.log(2.0), np.log(max(3.0, 0.16 * size)))))


def _center(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.uniform(0.1 * size, 0.9 * size, 2)


def _coverage(size: int, draw: Callable[[np.ndarray], None]) -> np.ndarray:
    """Run `draw` on a supersampled canvas (coordinates scaled by _SS); return coverage 0..1."""
    canvas = np.zeros((size * _SS, size * _SS), np.uint8)
    draw(canvas)
    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def _irregular_polygon(
    rng: np.random.Generator, center: np.ndarray, radius: float, jagged: float
) -> np.ndarray:
    """A star-shaped outline: an ellipse with low-frequency wobble plus per-vertex jitter."""
    n = 48
    theta = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in (2, 3, 4, 5):
        r += rng.uniform(0.0, 0.3 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r += jagged * rng.uniform(-1.0, 1.0, n)
    r = np.clip(r, 0.3, None) * radius
    aspect = rng.uniform(0.45, 1.0)
    rot = rng.uniform(0, np.pi)
    x, y = r * np.cos(theta), aspect * r * np.sin(theta)
    c, s = np.cos(rot), np.sin(rot)
    return np.stack([center[0] + c * x - s * y, center[1] + s * x + c * y], axis=1)


def _shape(rng: np.random.Generator, size: int, jagged: float) -> np.ndarray:
    poly = _irregular_polygon(rng, _center(rng, size), _radius(rng, size), jagged)
    pts = np.round(poly * _SS).astype(np.int32)
    return _coverage(size, lambda canvas: cv2.fillPoly(canvas, [pts], 255))


def _hard(cov: np.ndarray, level: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Binary mask from coverage; alpha keeps the anti-aliased edge but only inside the mask."""
    mask = cov >= level
    return np.where(mask, cov, 0.0).astype(np.float32), mask


def _scratch(rng, clean, donor, size):
    strokes = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
    start = _center(rng, size)
    width = int(rng.integers(1, 4)) if size >= 96 else int(rng.integers(1, 3))
    curves = []
    for _ in range(strokes):
        p0 = start + rng.normal(0, 0.04 * size, 2)
        length = float(np.exp(rng.uniform(np.log(max(4.0, 0.05 * size)), np.log(0.5 * size))))
        ang = rng.uniform(0, 2 * np.pi)
        p2 = p0 + length * np.array([np.cos(ang), np.sin(ang)])
        bend = rng.uniform(-0.35, 0.35) * length
        p1 = (p0 + p2) / 2 + bend * np.array([-np.sin(ang), np.cos(ang)])
        t = np.linspace(0.0, 1.0, max(8, int(length)))[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier
        curves.append(np.round(curve * _SS).astype(np.int32))
    cov = _coverage(
        size, lambda canvas: cv2.polylines(canvas, curves, False, 255, thickness=width * _SS)
    )
    alpha, mask = _hard(cov, 0.35)
    if not mask.any():
        return alpha, clean
    # A scratch exposes material of the opposite brightness: dark on light, bright on dark.
    bright = float(luma(clean)[mask].mean()) < 120
    value = rng.uniform(195, 255) if bright else rng.uniform(0, 50)
    return alpha * rng.uniform(0.85, 1.0), np.full_like(clean, value)


# Stain tints (BGR, max component 1): rust, oil, water mark, dirt, ink.
_STAIN_TINTS = np.array(
    [[0.25, 0.6, 1.0], [0.6, 0.8, 1.0], [1.0, 1.0, 1.0], [0.4, 0.55, 0.7], [1.0, 0.5, 0.3]],
    np.float32,
)


def _stain(rng, clean, donor, size):
    radius = _radius(rng, size) * 1.3
    poly = _irregular_polygon(rng, _center(rng, size), radius, 0.05)
    pts = np.round(poly * _SS).astype(np.int32)
    cov = _coverage(size, lambda canvas: cv2.fillPoly(canvas, [pts], 255))
    sigma = max(0.8, rng.uniform(0.2, 0.5) * radius)
    soft = cv2.GaussianBlur(cov, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    if soft.max() <= 0:
        return soft, clean
    alpha = soft / soft.max() * rng.uniform(0.75, 1.0)
    alpha[alpha < 0.08] = 0.0  # no imperceptible change spreading over the whole image
    inside = alpha > 0.25
    tint = _STAIN_TINTS[rng.integers(len(_STAIN_TINTS))]
    # Darken light surfaces and lighten dark ones, so the change is not lost to clipping.
    sign = -1.0 if float(luma(clean)[inside].mean() if inside.any() else 128) > 110 else 1.0
    delta = sign * rng.uniform(60, 110) * tint
    return alpha, clean + delta


def _foreign(rng, clean, donor, size):
    alpha, _ = _hard(_shape(rng, size, 0.08))
    dh, dw = donor.shape[:2]
    y = int(rng.integers(0, dh - size + 1))
    x = int(rng.integers(0, dw - size + 1))
    return alpha, donor[y : y + size, x : x + size].astype(np.float32)


def _hole(rng, clean, donor, size):
    alpha, mask = _hard(_shape(rng, size, 0.22))
    value = rng.uniform(0, 30)
    target = np.full_like(clean, value)
    if mask.sum() > 30:
        # A faint lighter wall just inside the edge reads as depth rather than paint.
        dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
        target += (25.0 * np.exp(-dist / 1.5))[..., None]
    return alpha, target


def _blob(rng, clean, donor, size):
    radius = _radius(rng, size) * 1.6
    center = _center(rng, size)
    noise = rng.standard_normal((size, size)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), max(1.0, rng.uniform(0.15, 0.35) * radius))
    noise = (noise - noise.mean()) / (noise.std() + 1e-6)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    window = np.exp(-(((xx - center[0]) ** 2 + (yy - center[1]) ** 2) / radius**2))
    # Smooth noise, pulled down away from the centre: thresholding leaves irregular lumps.
    score = noise + 2.0 * (window - 1.0)
    thr = 0.0
    mask = (score > thr) & (window > 0.2)  # the cut keeps specks from spreading over the image
    alpha = np.where(mask, 0.5 + 0.5 * np.clip((score - thr) / 0.5, 0, 1), 0).astype(np.float32)
    sign = -1.0 if (not mask.any() or float(luma(clean)[mask].mean()) > 128) else 1.0
    return alpha, clean + sign * rng.uniform(20, 40)


_RENDERERS = {
    "scratch": _scratch,
    "stain": _stain,
    "foreign": _foreign,
    "hole": _hole,
    "blob": _blob,
}


def compose(clean: np.ndarray, alpha: np.ndarray, target: np.ndarray) -> np.ndarray:
    return clean + alpha[..., None] * (target - clean)


def apply_defect(
    clean: np.ndarray,
    noise: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    donor: np.ndarray,
    gray: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one `kind` defect on `clean` (float32 BGR, square) and quantise with `noise`.

    Returns (uint8 BGR image, bool mask). `noise` is the image's sensor noise,
    added after the defect so that the defect is noisy like the rest and the
    pixels outside the mask equal the clean image's exactly. `donor` is a
    photograph of another class (uint8 BGR, at least as large as `clean`).
    `gray` keeps grey classes grey. The draw is repeated (from the same
    generator, so still deterministic) until the change inside the mask is
    visible; after _MAX_TRIES the most visible draw is kept.
    """
    size = clean.shape[0]
    base = quantise(clean, noise)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(_MAX_TRIES):
        alpha, target = _RENDERERS[kind](rng, clean, donor, size)
        if gray:
            target = np.repeat(luma(target)[..., None], 3, axis=2)
        mask = alpha > 0.25
        if mask.sum() < 3:
            continue
        out = quantise(compose(clean, alpha, target), noise)
        change = np.abs(out.astype(np.int16) - base.astype(np.int16)).max(axis=2)
        visible = float(change[mask].mean())
        if best is None or visible > best[0]:
            best = (visible, out, mask)
        if visible >= MIN_VISIBLE[kind] and (change[mask] >= 3).mean() >= 0.8:
            return out, mask
    if best is None:  # pragma: no cover - every renderer yields >= 3 px in a few draws
        raise RuntimeError(f"could not draw a '{kind}' defect on a {size}x{size} image")
    return best[1], best[2]


def quantise(img: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)
