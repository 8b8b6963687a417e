"""Data set indexing: MVTec AD, VisA and plain folders, validated in one pass.

The layout is detected from the root folder:

- MVTec AD: `ROOT/CLASS/train/good/*`, `ROOT/CLASS/test/DEFECT/*` and
  `ROOT/CLASS/ground_truth/DEFECT/STEM_mask.png` (also accepted: ROOT being
  one class folder, i.e. holding `train/good`).
- VisA: `ROOT/split_csv/1cls.csv` with columns object, split, label, image,
  mask (paths relative to ROOT; label normal/anomaly; mask empty when normal).
- plain: `ROOT/good/*` training images, optionally `ROOT/test/good`,
  `ROOT/test/DEFECT` and `ROOT/ground_truth/DEFECT/STEM_mask.png`; the class
  name is ROOT's folder name.

Everything wrong with a data set (missing folders, no training images,
unreadable or empty files, defect images without a mask, masks of the wrong
size) is collected first and raised as one DataError listing every bad file,
so a user fixes the folder once instead of once per error.
"""

from __future__ import annotations

import csv
import hashlib
import os
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeas.errors import DataError
from edgeas.imageio import IMAGE_SUFFIXES, read_mask  # noqa: F401  (part of this API)
from edgeas.imageio import read_bgr as read_image  # noqa: F401

IMAGE_EXTENSIONS = frozenset(IMAGE_SUFFIXES)
VISA_CSV = Path("split_csv") / "1cls.csv"
_LAYOUT_HINT = (
    "expected one of three layouts: MVTec AD (ROOT/CLASS/train/good/, ROOT/CLASS/test/DEFECT/, "
    "ROOT/CLASS/ground_truth/DEFECT/*_mask.png), VisA (ROOT/split_csv/1cls.csv with columns "
    "object,split,label,image,mask) or plain (ROOT/good/ with the normal training images, "
    "optional ROOT/test/DEFECT/ and ROOT/ground_truth/DEFECT/*_mask.png); "
    "`edgeas synth DIR` makes an example"
)


@dataclass(frozen=True)
class Sample:
    path: Path
    cls: str
    defect: str  # "good" for normal images
    mask: Path | None


@dataclass
class DataIndex:
    root: Path
    layout: str  # "mvtec" | "visa" | "plain"
    classes: list[str]
    train: list[Sample]
    test: list[Sample]


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(root: Path) -> str | None:
    if (root / VISA_CSV).is_file() or (root / "split_csv").is_dir():
        return "visa"
    if any((d / "train" / "good").is_dir() for d in _subdirs(root)):
        return "mvtec"
    if (root / "train" / "good").is_dir():
        return "mvtec-class"
    if (root / "good").is_dir():
        return "plain"
    return None


def _folder_class(
    base: Path, cls: str, train_dir: Path, problems: list[str]
) -> tuple[list[Sample], list[Sample]]:
    """One class in MVTec form: train_dir of normal images, base/test/*, base/ground_truth/*."""
    train = [Sample(p, cls, "good", None) for p in _images(train_dir)]
    if not train:
        problems.append(f"{train_dir}: no training images (expected .png/.jpg files)")
    test: list[Sample] = []
    for defect_dir in _subdirs(base / "test"):
        defect = defect_dir.name
        for p in _images(defect_dir):
            if defect == "good":
                test.append(Sample(p, cls, "good", None))
                continue
            mask = base / "ground_truth" / defect / f"{p.stem}_mask.png"
            if not mask.is_file():
                problems.append(f"{p}: defect image without a mask (expected {mask})")
                mask = None
            test.append(Sample(p, cls, defect, mask))
    return train, test


def _index_mvtec(root: Path, classes: list[str] | None, problems: list[str]):
    found = [d.name for d in _subdirs(root) if (d / "train" / "good").is_dir()]
    names = _select(found, classes, root)
    train: list[Sample] = []
    test: list[Sample] = []
    for cls in names:
        tr, te = _folder_class(root / cls, cls, root / cls / "train" / "good", problems)
        train += tr
        test += te
    return names, train, test


def _index_plain(root: Path, classes: list[str] | None, problems: list[str]):
    names = _select([root.name], classes, root)
    train, test = _folder_class(root, root.name, root / "good", problems)
    return names, train, test


def _index_visa(root: Path, classes: list[str] | None, problems: list[str]):
    csv_path = root / VISA_CSV
    if not csv_path.is_file():
        problems.append(f"{csv_path}: missing (a VisA root lists its files there)")
        return [], [], []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"object", "split", "label", "image", "mask"}
    missing = needed - set(rows[0].keys() if rows else ())
    if missing:
        problems.append(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
        return [], [], []
    found = sorted({r["object"].strip() for r in rows if r["object"]})
    names = _select(found, classes, root)
    wanted = set(names)
    train: list[Sample] = []
    test: list[Sample] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        cls = (row["object"] or "").strip()
        if cls not in wanted:
            continue
        split, label = (row["split"] or "").strip(), (row["label"] or "").strip()
        where = f"{csv_path}:{line}"
        if split not in ("train", "test") or label not in ("normal", "anomaly"):
            problems.append(f"{where}: split must be train/test and label normal/anomaly")
            continue
        image = root / (row["image"] or "").strip()
        if not (row["image"] or "").strip() or not image.is_file():
            problems.append(f"{image}: image listed in {where} does not exist")
            continue
        mask_rel = (row["mask"] or "").strip()
        mask = root / mask_rel if mask_rel else None
        if label == "anomaly":
            if split == "train":
                problems.append(f"{image}: anomalous image in the training split ({where})")
                continue
            if mask is None or not mask.is_file():
                problems.append(f"{image}: defect image without a mask ({where})")
                mask = None
            test.append(Sample(image, cls, "anomaly", mask))
        else:
            (train if split == "train" else test).append(Sample(image, cls, "good", None))
    for cls in names:
        if not any(s.cls == cls for s in train):
            problems.append(f"{csv_path}: class '{cls}' has no normal training images")
    return names, train, test


def _select(found: list[str], wanted: list[str] | None, root: Path) -> list[str]:
    if wanted is None:
        return sorted(found)
    unknown = [c for c in wanted if c not in found]
    if unknown:
        raise DataError(
            f"class(es) {', '.join(unknown)} not found in {root}",
            hint=f"classes there: {', '.join(sorted(found)) or '(none)'}",
        )
    return sorted(dict.fromkeys(wanted))


def _image_shape(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if data.size == 0:
        return None, "empty file"
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        return None, "not a readable image"
    return (int(img.shape[0]), int(img.shape[1])), None


def _check_files(samples: Sequence[Sample], problems: list[str]) -> None:
    """Decode every image and mask (threads: OpenCV releases the GIL while decoding)."""
    paths = sorted({s.path for s in samples} | {s.mask for s in samples if s.mask is not None})
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        shapes = dict(zip(paths, pool.map(_image_shape, paths)))
    for path in paths:
        if shapes[path][1] is not None:
            problems.append(f"{path}: {shapes[path][1]}")
    for s in samples:
        if s.mask is None:
            continue
        image_hw, mask_hw = shapes[s.path][0], shapes[s.mask][0]
        if image_hw is not None and mask_hw is not None and image_hw != mask_hw:
            problems.append(
                f"{s.mask}: mask is {mask_hw[1]}x{mask_hw[0]} but its image {s.path.name} "
                f"is {image_hw[1]}x{image_hw[0]} (W x H)"
            )


def index_dataset(
    root: str | os.PathLike, classes: list[str] | None = None, check_files: bool = True
) -> DataIndex:
    """Find every sample under `root` (layout detected) and validate the set.

    `classes` restricts the index to these classes (a DataError names unknown
    ones). With `check_files` every image and mask is decoded once, which
    catches truncated files and mask sizes before training starts. Samples are
    sorted by class, then by path; raises one DataError listing all problems.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist", hint=_LAYOUT_HINT)
    layout = detect_layout(root)
    if layout is None:
        raise DataError(f"{root}: unknown data set layout", hint=_LAYOUT_HINT)
    problems: list[str] = []
    if layout == "mvtec-class":
        # ROOT is a single MVTec class folder: index its parent, restricted to that class.
        if classes not in (None, [root.name]):
            raise DataError(f"{root} is the single class '{root.name}'; cannot select {classes}")
        layout, classes, root = "mvtec", [root.name], root.parent
    indexer = {"mvtec": _index_mvtec, "visa": _index_visa, "plain": _index_plain}[layout]
    names, train, test = indexer(root, classes, problems)
    if not names and not problems:
        problems.append(f"{root}: no classes found")
    if check_files:
        _check_files(train + test, problems)
    if problems:
        listing = "\n".join(f"  - {_relative(p, root)}" for p in problems)
        raise DataError(
            f"data set {root} ({layout} layout) has {len(problems)} problem(s):\n{listing}",
            hint="fix or remove the files listed above and run again",
        )
    order = lambda s: (s.cls, str(s.path))  # noqa: E731 - one-line sort key
    return DataIndex(root, layout, names, sorted(train, key=order), sorted(test, key=order))


def _relative(problem: str, root: Path) -> str:
    # Problems start with an absolute path; show it relative to the root to keep lines short.
    prefix = str(root) + os.sep
    return problem.replace(prefix, "")


def split_train_val(
    samples: Iterable[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out `fraction` of each class's normal images for fitting thresholds.

    Deterministic for a seed whatever the input order: each class is shuffled
    by its own generator (seeded by the seed and the class name). A class with
    at least two images gives at least one validation image when fraction > 0
    and always keeps at least one for training. Both lists keep sorted order.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.cls, []).append(s)
    train: list[Sample] = []
    val: list[Sample] = []
    for cls in sorted(by_class):
        items = sorted(by_class[cls], key=lambda s: str(s.path))
        n_val = round(len(items) * fraction)
        if fraction > 0 and len(items) >= 2:
            n_val = min(max(1, n_val), len(items) - 1)
        rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
        held = set(rng.permutation(len(items))[:n_val].tolist())
        for i, s in enumerate(items):
            (val if i in held else train).append(s)
    return train, val


def data_fingerprint(index: DataIndex) -> str:
    """sha256 over the layout name and the sorted relative paths and byte sizes of every
    image and mask: cheap (no file contents read) and independent of where the set lives.
    """
    files = {s.path for s in index.train + index.test}
    files |= {s.mask for s in index.train + index.test if s.mask is not None}
    lines = sorted(f"{p.relative_to(index.root).as_posix()}\t{p.stat().st_size}" for p in files)
    digest = hashlib.sha256(f"{index.layout}\n".encode())
    for line in lines:
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()
