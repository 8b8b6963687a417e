"""The built-in inspection data set (`edgeas synth`), from photographs shipped with scikit-image.

Each class is one real photograph. Normal images are views of it with the
variation a fixed camera sees: a different crop of a texture, or a small shift,
rotation (a few degrees) and zoom of an object, brightness/contrast drift and
sensor noise. Anomalous test images are fresh normal views with one defect
drawn by `edgeas.train.defects` (scratch, stain, foreign, hole, blob) and an
exact pixel mask. The result is an MVTec AD folder tree:

    OUT/dataset.json
    OUT/CLASS/train/good/000.png
    OUT/CLASS/test/good/000.png
    OUT/CLASS/test/DEFECT/000.png
    OUT/CLASS/ground_truth/DEFECT/000_mask.png   (0/255, same stem as the image)

Counts per class: `per_class` training images, max(2, round(per_class / 4))
normal test images and max(5, round(per_class * 3 / 8)) anomalous ones, dealt
over the five defect kinds in turn (80 -> 80 train, 20 good, 30 defective).
Every image has its own numpy Generator seeded from (seed, class name, split,
index): the same seed gives byte-identical files, whatever subset of classes is
asked for. The tree is written into a hidden temporary folder beside OUT and
renamed at the end, so a crash never leaves half a data set.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeas import __version__
from edgeas.errors import ConfigError, DataError, require
from edgeas.fileio import atomic_write_text
from edgeas.train.defects import DEFECT_KINDS, apply_defect


@dataclass(frozen=True)
class ClassSpec:
    name: str
    photo: str  # function name in skimage.data
    texture: bool  # stationary texture: any crop is normal; otherwise one view that only jitters
    crop: float  # side of the view as a fraction of the photo's shorter side
    center: tuple[float, float] = (0.5, 0.5)  # (x, y) of an object view, fractions of the photo
    gray: bool = False
    description: str = ""


# Only photographs that ship inside the scikit-image wheel (no download needed).
CLASSES: dict[str, ClassSpec] = {
    c.name: c
    for c in (
        ClassSpec("brick", "brick", True, 0.45, gray=True, description="brick wall texture"),
        ClassSpec("grass", "grass", True, 0.4, gray=True, description="lawn texture"),
        ClassSpec("gravel", "gravel", True, 0.4, gray=True, description="gravel texture"),
        ClassSpec("tissue", "immunohistochemistry", True, 0.5, description="stained tissue"),
        ClassSpec("coins", "coins", False, 0.8, gray=True, description="tray of coins"),
        ClassSpec("coffee", "coffee", False, 0.9, (0.483, 0.5), description="cup on saucer"),
        ClassSpec("cat", "chelsea", False, 0.9, (0.5, 0.5), description="cat's face"),
        ClassSpec("rocket", "rocket", False, 0.9, (0.5, 0.52), description="rocket on pad"),
        ClassSpec("camera", "camera", False, 0.8, (0.45, 0.45), True, "cameraman"),
        ClassSpec("retina", "retina", False, 0.95, description="fundus photograph"),
        ClassSpec("stars", "hubble_deep_field", True, 0.3, description="deep field texture"),
    )
}
# Three textures and three objects, grey and colour: the set `edgeas synth` makes by default.
DEFAULT_CLASSES: tuple[str, ...] = ("brick", "grass", "gravel", "tissue", "coins", "coffee")

_SPLIT_CODES = {"train": 1, "test_good": 2, "test_defect": 3}
_NOISE_SIGMA = 2.0  # sensor noise, grey levels
_MIN_SIZE = 32


def split_counts(per_class: int) -> tuple[int, int]:
    """(normal, anomalous) test images per class for `per_class` training images."""
    return max(2, round(per_class / 4)), max(len(DEFECT_KINDS), round(per_class * 3 / 8))


@functools.cache
def _photo(name: str) -> np.ndarray:
    """The class photograph as uint8 BGR (grey photos become three equal channels)."""
    data = require("skimage.data", "scikit-image", "train")
    img = np.asarray(getattr(data, CLASSES[name].photo)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(cv2.cvtColor(img[..., :3].astype(np.uint8), cv2.COLOR_RGB2BGR))


@functools.cache
def _scaled_photo(name: str, size: int) -> np.ndarray:
    """The photograph resized once so that the class's view is `size` pixels across.

    Area resampling here, then only small (about 1:1) warps per image, avoids the
    aliasing a direct 512 -> 64 warp would add.
    """
    spec, photo = CLASSES[name], _photo(name)
    scale = size / (spec.crop * min(photo.shape[:2]))
    h, w = photo.shape[:2]
    dsize = (max(size, round(w * scale)), max(size, round(h * scale)))
    return cv2.resize(photo, dsize, interpolation=cv2.INTER_AREA)


def _seed(seed: int, cls: str, split: str, index: int) -> np.random.Generator:
    # crc32 of the name (not its position in the list) so a class looks the same in any subset.
    return np.random.default_rng([seed, zlib.crc32(cls.encode()), _SPLIT_CODES[split], index])


def _normal_view(spec: ClassSpec, size: int, rng: np.random.Generator) -> np.ndarray:
    """One normal image (float32 BGR, before noise): jittered view plus photometric drift."""
    photo = _scaled_photo(spec.name, size)
    h, w = photo.shape[:2]
    angle = rng.uniform(-3.0, 3.0)
    zoom = rng.uniform(0.96, 1.04)
    reach = 0.5 * size * 1.06 / zoom + 2  # half-extent of the rotated view in the photo
    if spec.texture:
        cx = rng.uniform(reach, max(reach, w - reach))
        cy = rng.uniform(reach, max(reach, h - reach))
    else:
        cx = spec.center[0] * w + rng.uniform(-0.03, 0.03) * size
        cy = spec.center[1] * h + rng.uniform(-0.03, 0.03) * size
    m = cv2.getRotationMatrix2D((cx, cy), angle, zoom)
    m[:, 2] += (size / 2 - cx, size / 2 - cy)  # bring the view centre to the output centre
    view = cv2.warpAffine(
        photo, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    ).astype(np.float32)
    gain = rng.uniform(0.9, 1.1)
    offset = rng.uniform(-10.0, 10.0)
    mean = view.mean()
    view = (view - mean) * gain + mean + offset
    if not spec.gray:  # slight white-balance drift, as between two camera sessions
        view *= rng.uniform(0.97, 1.03, 3).astype(np.float32)
    return view


def _noise(rng: np.random.Generator, size: int, gray: bool) -> np.ndarray:
    n = rng.normal(0.0, _NOISE_SIGMA, (size, size, 1 if gray else 3)).astype(np.float32)
    return np.repeat(n, 3, axis=2) if gray else n


def make_normal(cls: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A normal image of `cls` (uint8 BGR, size x size)."""
    spec = CLASSES[cls]
    view = _normal_view(spec, size, rng)
    return np.clip(np.rint(view + _noise(rng, size, spec.gray)), 0, 255).astype(np.uint8)


def make_defective(
    cls: str, kind: str, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean uint8 BGR, defective uint8 BGR, bool mask) for one anomalous test image.

    The clean image is what the camera would have seen without the defect, so
    callers (and tests) can check that pixels changed only inside the mask.
    """
    spec = CLASSES[cls]
    view = _normal_view(spec, size, rng)
    noise = _noise(rng, size, spec.gray)
    others = [name for name in CLASSES if CLASSES[name].photo != spec.photo]
    donor = _scaled_photo(others[int(rng.integers(len(others)))], size)
    out, mask = apply_defect(view, noise, kind, rng, donor, spec.gray)
    clean = np.clip(np.rint(view + noise), 0, 255).astype(np.uint8)
    return clean, out, mask


def _parse_classes(classes: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if classes is None:
        return list(DEFAULT_CLASSES)
    names = classes.split(",") if isinstance(classes, str) else list(classes)
    names = [n.strip().lower() for n in names if n.strip()]
    if not names:
        raise ConfigError("--classes is empty", hint=f"known classes: {', '.join(CLASSES)}")
    unknown = [n for n in names if n not in CLASSES]
    if unknown:
        raise ConfigError(
            f"unknown synth class{'es' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
            hint=f"known classes: {', '.join(CLASSES)}",
        )
    return list(dict.fromkeys(names))  # keep the user's order, drop repeats


def _write_png(path: Path, img: np.ndarray, gray: bool = False) -> None:
    # Grey classes are saved as one-channel PNGs, like MVTec's grey classes: a third
    # of the disk space, and cv2.imread(..., IMREAD_COLOR) gives the same BGR back.
    if gray:
        img = img[..., 0]
    if not cv2.imwrite(str(path), img):
        raise DataError(f"could not write {path}", hint="check free disk space and permissions")


def _write_class(root: Path, cls: str, per_class: int, seed: int, size: int) -> dict[str, Any]:
    n_good, n_bad = split_counts(per_class)
    gray = CLASSES[cls].gray
    base = root / cls
    for sub in ["train/good", "test/good"] + [
        f"{top}/{kind}" for kind in DEFECT_KINDS for top in ("test", "ground_truth")
    ]:
        (base / sub).mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(max(per_class, n_good, n_bad))))
    for i in range(per_class):
        img = make_normal(cls, size, _seed(seed, cls, "train", i))
        _write_png(base / "train/good" / f"{i:0{width}d}.png", img, gray)
    for i in range(n_good):
        img = make_normal(cls, size, _seed(seed, cls, "test_good", i))
        _write_png(base / "test/good" / f"{i:0{width}d}.png", img, gray)
    per_kind = dict.fromkeys(DEFECT_KINDS, 0)
    for i in range(n_bad):
        kind = DEFECT_KINDS[i % len(DEFECT_KINDS)]  # round robin: every kind appears
        _, img, mask = make_defective(cls, kind, size, _seed(seed, cls, "test_defect", i))
        stem = f"{per_kind[kind]:0{width}d}"
        _write_png(base / "test" / kind / f"{stem}.png", img, gray)
        _write_png(base / "ground_truth" / kind / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
        per_kind[kind] += 1
    return {"train": {"good": per_class}, "test": {"good": n_good, **per_kind}}


def make_dataset(
    out: str | os.PathLike,
    classes: str | list[str] | tuple[str, ...] | None = None,
    per_class: int = 80,
    seed: int = 0,
    size: int = 224,
) -> dict[str, Any]:
    """Write the synthetic inspection set to `out` (MVTec layout); return dataset.json's content.

    `classes`: names or a comma-separated string (default: DEFAULT_CLASSES).
    `per_class` training images per class; test images per class:
    max(2, round(per_class / 4)) normal and max(5, round(per_class * 3 / 8))
    anomalous (20 and 30 for the default 80). `out` must not exist or be an
    empty folder. Raises ConfigError for bad arguments, DataError for `out`.
    """
    names = _parse_classes(classes)
    if per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {per_class}")
    if size < _MIN_SIZE:
        raise ConfigError(f"--size must be >= {_MIN_SIZE} pixels, got {size}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(
            f"{target} already exists and is not an empty folder",
            hint="choose a new OUT folder, or delete this one to regenerate the set",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would stay on OUT after the rename.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        counts = {cls: _write_class(tmp, cls, per_class, seed, size) for cls in names}
        manifest: dict[str, Any] = {
            "name": "edgeas-synth",
            "layout": "mvtec",
            "edgeas_version": __version__,
            "seed": seed,
            "size": size,
            "per_class": per_class,
            "classes": names,
            "defect_kinds": list(DEFECT_KINDS),
            "counts": counts,
            "sources": {
                cls: {
                    "photo": f"skimage.data.{CLASSES[cls].photo}",
                    "type": "texture" if CLASSES[cls].texture else "object",
                    "description": CLASSES[cls].description,
                }
                for cls in names
            },
        }
        atomic_write_text(tmp / "dataset.json", json.dumps(manifest, indent=2) + "\n")
        if target.exists():
            target.rmdir()  # empty (checked above); os.replace cannot replace a folder
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def synth_command(out: Path, classes: str | None, per_class: int, seed: int, size: int) -> None:
    """`edgeas synth`: make the set and print a summary."""
    from rich.console import Console
    from rich.table import Table

    start = time.perf_counter()
    manifest = make_dataset(out, classes, per_class, seed, size)
    elapsed = time.perf_counter() - start
    table = Table(title=f"edgeas synth -> {out} ({size}x{size}, seed {seed})")
    table.add_column("class")
    table.add_column("skimage photo")
    table.add_column("train", justify="right")
    table.add_column("test good", justify="right")
    table.add_column("test defective", justify="right")
    total = 0
    for cls in manifest["classes"]:
        c = manifest["counts"][cls]
        n_bad = sum(v for k, v in c["test"].items() if k != "good")
        total += c["train"]["good"] + c["test"]["good"] + n_bad
        table.add_row(
            cls, CLASSES[cls].photo, str(c["train"]["good"]),
            str(c["test"]["good"]), str(n_bad),
        )
    console = Console()
    console.print(table)
    console.print(f"{total} images in {elapsed:.1f} s; defect kinds: {', '.join(DEFECT_KINDS)}")
    console.print(f"next: edgeas train --config tiny --data {out} --out runs/synth")
