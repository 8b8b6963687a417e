"""Calibration images as tensors, and whether they look like what the model was trained
on; which files make the set (and its hash) is the core's `edgeas.calibimages`, which
TensorRT 10's calibrator in `edgeas.export` shares. numpy and OpenCV only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeas.calibimages import read_bgr
from edgeas.errors import CalibrationError
from edgeas.preprocess import Recipe, preprocess_bgr

# An image whose pixels vary by less than this many grey levels (std over all pixels and
# channels) is blank: a lens cap, a dead frame, a constant test card.
BLANK_STD_LEVELS = 2.0
# Below this spread an image still has content, but far less than the textured product
# photos inspection models see (tens of grey levels): the ranges it yields are too narrow.
LOW_CONTRAST_STD_LEVELS = 8.0
# Fraction of an image's pixel values stuck at 0 or 255 that makes it over/under-exposed.
CLIPPED_FRACTION = 0.5
HOLDOUT_EVERY = 8  # one image in 8 is kept out of calibration for the accuracy gate
MIN_HOLDOUT = 4


def load_tensors(
    paths: Sequence[Path], recipe: Recipe, advance: Callable[[int], None] | None = None
) -> np.ndarray:
    """(N, 3, H, W) float32, each image preprocessed with the model's own recipe."""
    out = np.empty((len(paths), 3, *recipe.input_size), np.float32)
    for i, p in enumerate(paths):
        out[i] = preprocess_bgr(read_bgr(Path(p)), recipe)
        if advance is not None:
            advance(1)
    return out


@dataclass
class ImageCheck:
    """What the calibration images look like, in grey levels (0..255) of the resized RGB
    image the model sees, recovered exactly from the normalised tensors."""

    channel_mean: list[float]  # per channel, over every image
    channel_std: list[float]
    blank: list[str] = field(default_factory=list)
    low_contrast: list[str] = field(default_factory=list)
    clipped: list[str] = field(default_factory=list)
    grayscale: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "channel_mean_levels": [round(v, 2) for v in self.channel_mean],
            "channel_std_levels": [round(v, 2) for v in self.channel_std],
            "blank": len(self.blank), "low_contrast": len(self.low_contrast),
            "clipped": len(self.clipped), "grayscale": self.grayscale,
            "warnings": list(self.warnings),
        }


def _names(paths: list[str], limit: int = 3) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(Path(p).name for p in paths[:limit]) + more


def check_images(tensors: np.ndarray, recipe: Recipe, paths: Sequence[Path]) -> ImageCheck:
    """Refuse calibration sets the model cannot be calibrated on; warn about doubtful ones.

    The tensors come from 8-bit images through the recipe, so their values cannot leave
    the normalised range the metadata implies; what does go wrong is content. Each image
    is judged in grey levels (x * std + mean) * 255:

    - blank: pixel std < BLANK_STD_LEVELS. Every image blank is an error (the ranges
      would describe one constant, and every real frame would saturate); some blank, a
      warning.
    - low contrast: std < LOW_CONTRAST_STD_LEVELS, a warning. Over half of the pixel
      values at 0 or 255 (clipped exposure), a warning.
    - grayscale: the three channels identical in every image, a warning only: right for a
      monochrome station camera, wrong if the model was trained on colour.
    The per-channel mean and std of the set go into the report.
    """
    mean = np.asarray(recipe.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(recipe.std, np.float32).reshape(1, 3, 1, 1)
    levels = np.empty(tensors.shape, np.float32)
    for s in range(0, len(tensors), 32):  # bounded temporaries for large sets
        levels[s : s + 32] = (tensors[s : s + 32] * std + mean) * 255.0
    names = [str(p) for p in paths]
    flat = levels.reshape(len(levels), -1)
    spread = flat.std(axis=1)
    clipped = ((flat <= 0.5) | (flat >= 254.5)).mean(axis=1)
    check = ImageCheck(
        channel_mean=[float(v) for v in levels.mean(axis=(0, 2, 3))],
        channel_std=[float(v) for v in levels.std(axis=(0, 2, 3))],
        blank=[n for n, s in zip(names, spread) if s < BLANK_STD_LEVELS],
        low_contrast=[n for n, s in zip(names, spread)
                      if BLANK_STD_LEVELS <= s < LOW_CONTRAST_STD_LEVELS],
        clipped=[n for n, c in zip(names, clipped) if c > CLIPPED_FRACTION],
        grayscale=bool((levels[:, 0] == levels[:, 1]).all()
                       and (levels[:, 1] == levels[:, 2]).all()),
    )
    n = len(names)
    if len(check.blank) == n:
        raise CalibrationError(
            f"all {n} calibration images are blank (pixel std below {BLANK_STD_LEVELS:g} grey "
            f"levels, e.g. {_names(check.blank)}): INT8 ranges taken from them would clip every "
            "real frame",
            hint="calibrate on normal images of the product, taken by the station camera",
        )
    if check.blank:
        check.warnings.append(f"{len(check.blank)} of {n} images are blank: "
                              f"{_names(check.blank)}")
    if check.low_contrast:
        check.warnings.append(
            f"{len(check.low_contrast)} of {n} images have almost no contrast (pixel std below "
            f"{LOW_CONTRAST_STD_LEVELS:g} grey levels): {_names(check.low_contrast)}")
    if check.clipped:
        check.warnings.append(f"{len(check.clipped)} of {n} images are over- or under-exposed "
                              f"(most pixels at 0 or 255): {_names(check.clipped)}")
    if check.grayscale:
        check.warnings.append("every image is grayscale (identical R, G, B): right only if the "
                              "station camera is monochrome too")
    return check


def split_holdout(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration indices, held-out indices): every HOLDOUT_EVERY-th image, at least
    MIN_HOLDOUT, spread over the list (which is sorted by class) so each class is seen."""
    held = max(MIN_HOLDOUT, count // HOLDOUT_EVERY)
    if count - held < 1:
        raise CalibrationError(f"{count} images are too few to hold {held} out for the gate")
    hold = np.unique(np.linspace(0, count - 1, held).round().astype(int))
    keep = np.setdiff1d(np.arange(count), hold)
    return keep, hold
