"""The calibration image set: which files, the hash of the list, reading one image.

Both INT8 routes use it (numpy and OpenCV only): `edgeas calibrate` (edgeas.calibration)
and TensorRT 10's own calibrator in `edgeas build-engine` (edgeas.export), which may not
import each other; what the calibration stage does with the tensors (checks, hold-out)
stays in `edgeas.calibration.images`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from edgeas import imageio
from edgeas.errors import CalibrationError, DataError
from edgeas.imageio import IMAGE_SUFFIXES

MIN_IMAGES = 32  # fewer than this gives a calibration that does not generalise
WARN_IMAGES = 128


def images_in(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def normal_images(root: str | os.PathLike, images_option: str = "--calib-images",
                  what: str = "calibration images") -> list[Path]:
    """Every normal image of a folder, or of a data set root (each class's train/good, or
    good/), sorted; a DataError naming `images_option` when there is none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{what}: {root} is not a folder")
    files = images_in(root)
    if not files:
        goods = sorted(root.glob("*/train/good")) or [g for g in [root / "good"] if g.is_dir()]
        files = [p for g in goods for p in images_in(g)]
    if not files:
        raise DataError(
            f"{what}: no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files in {root}, "
            "nor in its */train/good or good/ folders",
            hint=f"point {images_option} at normal images of the station",
        )
    return files


def list_images(
    root: str | os.PathLike,
    limit: int = 256,
    *,
    images_option: str = "--calib-images",
    num_option: str = "--calib-num",
) -> list[Path]:
    """Normal images of a folder, or of a data set root (every class's train/good, or
    good/); at most `limit`, spread evenly over the sorted list so that every class
    is represented. The option names only word the errors for the calling command."""
    files = normal_images(root, images_option)
    if limit < 1:
        raise DataError(f"{num_option} must be >= 1, got {limit}")
    if len(files) > limit:
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit).round()]
    if len(files) < MIN_IMAGES:
        raise CalibrationError(
            f"calibration needs at least {MIN_IMAGES} normal images; {root} has {len(files)}",
            hint=f"add images (>= {WARN_IMAGES} recommended) or use FP16",
        )
    return files


def file_list_sha256(paths: list[Path], root: str | os.PathLike) -> str:
    """Hash of the image list: relative paths and contents, in order."""
    digest = hashlib.sha256()
    for p in paths:
        digest.update(os.path.relpath(p, root).replace(os.sep, "/").encode() + b"\0")
        digest.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return digest.hexdigest()


def read_bgr(path: Path, what: str = "calibration image") -> np.ndarray:
    return imageio.read_bgr(path, what)
