"""The test split of an MVTec-layout data set, for the accuracy gate of `edgeas calibrate`.

`ROOT/CLASS/test/DEFECT/*.png` with masks `ROOT/CLASS/ground_truth/DEFECT/STEM_mask.png`
(`good` images have none); ROOT may also be one class folder holding `test/`. Written here
rather than reusing `edgeas.train.data`: calibration depends on the core only, never on
the training package, so that it runs on a machine that only has the deployment
dependencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeas import imageio
from edgeas.calibimages import read_bgr
from edgeas.errors import DataError
from edgeas.imageio import IMAGE_SUFFIXES
from edgeas.preprocess import Recipe, preprocess_bgr


@dataclass
class EvalSet:
    root: Path
    paths: list[Path]
    classes: list[str]  # per image
    masks: list[Path | None]  # None: a normal image (empty ground truth)

    def __len__(self) -> int:
        return len(self.paths)


def _class_dirs(root: Path) -> dict[str, Path]:
    if (root / "test").is_dir():
        return {root.name: root}
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and (d / "test").is_dir()}


def index_eval_set(root: str | Path, wanted: Sequence[str] = ()) -> EvalSet:
    """Every test image of the classes in `wanted` (the model's classes) that ROOT holds,
    or of every class when `wanted` is empty or none of them is there."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--eval-data {root}: not a folder")
    found = _class_dirs(root)
    if not found:
        raise DataError(
            f"--eval-data {root}: no CLASS/test/ folders (MVTec layout expected)",
            hint="ROOT/CLASS/test/DEFECT/*.png with ROOT/CLASS/ground_truth/DEFECT/*_mask.png; "
            "`edgeas synth DIR` makes an example",
        )
    names = [c for c in wanted if c in found] or list(found)
    paths: list[Path] = []
    classes: list[str] = []
    masks: list[Path | None] = []
    missing: list[str] = []
    for cls in names:
        base = found[cls]
        for defect_dir in sorted(d for d in (base / "test").iterdir() if d.is_dir()):
            for img in sorted(p for p in defect_dir.iterdir()
                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                mask = None
                if defect_dir.name != "good":
                    mask = base / "ground_truth" / defect_dir.name / f"{img.stem}_mask.png"
                    if not mask.is_file():
                        missing.append(str(mask))
                paths.append(img)
                classes.append(cls)
                masks.append(mask)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"--eval-data {root}: defect images without a mask: "
                        f"{', '.join(missing[:3])}{more}")
    if not paths:
        raise DataError(f"--eval-data {root}: no test images in {', '.join(names)}")
    return EvalSet(root, paths, classes, masks)


def read_mask(path: Path | None, size: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 mask at the model's input size (H, W); a normal image has none: all 0."""
    if path is None:
        return np.zeros(size, np.uint8)
    return imageio.read_mask(path, size)


def load(evalset: EvalSet, index: Sequence[int], recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, H, W) float32, masks (n, H, W) uint8) of the images at `index`."""
    images = np.stack([preprocess_bgr(read_bgr(evalset.paths[i], "test image"), recipe)
                       for i in index])
    masks = np.stack([read_mask(evalset.masks[i], recipe.input_size) for i in index])
    return images, masks
