"""Reading images and masks from disk, one way for every stage (numpy and OpenCV only).

np.fromfile + cv2.imdecode instead of cv2.imread: it also reads non-ASCII paths, and a
failure is a DataError that names the file instead of a silent None.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from edgeas.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _decode(path: Path, flags: int, what: str) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)
        decoded = cv2.imdecode(data, flags) if data.size else None
    except (OSError, cv2.error) as exc:
        raise DataError(f"{what} {path} cannot be read ({exc})") from exc
    if decoded is None:
        raise DataError(f"{what} {path} cannot be read: empty or not an image file",
                        hint="remove or replace the file")
    return decoded


def read_bgr(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """uint8 BGR (H, W, 3); grey and 16-bit files are converted."""
    return _decode(Path(path), cv2.IMREAD_COLOR, what)


def read_mask(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 mask at `size` (H, W), resized nearest-neighbour; any value > 0 is a defect."""
    # UNCHANGED keeps 16-bit label masks intact (GRAYSCALE would scale 1 down to 0).
    mask = _decode(Path(path), cv2.IMREAD_UNCHANGED, "mask")
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    binary = (mask > 0).astype(np.uint8)
    h, w = size
    if binary.shape != (h, w):
        binary = cv2.resize(binary, (w, h), interpolation=cv2.INTER_NEAREST)
    return binary
