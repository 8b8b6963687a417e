"""Shared material of the runtime and stream tests (no tests here).

A tiny model trained briefly on one class of the built-in data set and exported through
the real CLI (`edgeas train`, `edgeas export --checkpoint`), built once per session
however many modules ask for it, and inspection videos made with OpenCV from the same
data set.

Why large holes: after 4 epochs the tiny model scores clean frames up to ~0.25 and
small or faint defects (blobs, thin scratches) no higher, so those cannot be told
apart reliably; holes covering >= 800 px score ~1.5-2.2. The videos use those, with
the threshold 0.5 between the two groups.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

CLASS = "tissue"
SIZE = 224
THRESHOLD = 0.5
MIN_AREA = 20
MIN_HOLE_PX = 800


def edgeas(*args: str, timeout: float = 600, check: bool = True,
           env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "edgeas", *args], capture_output=True,
                            text=True, timeout=timeout, env=env)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _build_model(root: Path) -> Path:
    from edgeas.train.synth import make_dataset

    data, run = root / "data", root / "run"
    make_dataset(data, classes=CLASS, per_class=16, seed=0, size=SIZE)
    cfg = root / "tiny.yaml"
    cfg.write_text("preset: tiny\ntrain:\n  batch: 4\n  micro_batch: 4\n  lr: 0.003\n")
    edgeas("train", "--config", str(cfg), "--data", str(data), "--out", str(run),
           "--epochs", "4")
    model = root / "model.onnx"
    edgeas("export", "--checkpoint", str(run / "last.pt"), "-o", str(model))
    return model


def trained_model_path(tmp_path_factory, dynamic_batch: bool = False) -> Path:
    """The exported model (static batch 1, as `edgeas export` makes it by default, or with
    --dynamic-batch); built by the first module that asks, reused by the others."""
    root = tmp_path_factory.getbasetemp() / "edgeas_trained_tiny"
    model = root / "model.onnx"
    if not model.is_file():
        root.mkdir(parents=True, exist_ok=True)
        _build_model(root)
    if not dynamic_batch:
        return model
    dynamic = root / "model_dynamic.onnx"
    if not dynamic.is_file():
        edgeas("export", "--checkpoint", str(root / "run" / "last.pt"), "-o", str(dynamic),
               "--dynamic-batch")
    return dynamic


@dataclass
class Clip:
    path: Path
    frames: list[np.ndarray]
    defect: list[bool]  # per frame
    masks: dict[int, np.ndarray]  # frame index -> ground-truth mask of its defect


def hole_images(count: int, seed: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` (defective BGR, mask) pairs with a large hole."""
    from edgeas.train.synth import make_defective

    out, s = [], seed
    while len(out) < count:
        _, bad, mask = make_defective(CLASS, "hole", SIZE, np.random.default_rng(s))
        s += 1
        if int(mask.sum()) >= MIN_HOLE_PX:
            out.append((bad, mask))
    return out


def clean_images(count: int, seed: int = 200) -> list[np.ndarray]:
    from edgeas.train.synth import make_normal

    return [make_normal(CLASS, SIZE, np.random.default_rng(seed + i)) for i in range(count)]


def make_clip(path: Path, pattern: str, fps: float = 10.0, repeat: int = 1) -> Clip:
    """A video of clean ('.') and defective ('X') frames, e.g. '...XX...XX..', written
    `repeat` times (the same images again: cheap long clips)."""
    n_bad = pattern.count("X")
    holes = iter(hole_images(n_bad))
    cleans = iter(clean_images(pattern.count(".")))
    frames, defect, masks = [], [], {}
    for i, c in enumerate(pattern):
        if c == "X":
            img, mask = next(holes)
            masks[i] = mask
        else:
            img = next(cleans)
        frames.append(img)
        defect.append(c == "X")
    n = len(frames)
    masks.update({i + k * n: masks[i] for k in range(1, repeat) for i in list(masks)})
    frames, defect = frames * repeat, defect * repeat
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (SIZE, SIZE))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return Clip(path, frames, defect, masks)


def read_events(directory: Path) -> list[dict]:
    path = directory / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def video_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def require_binary(path: str) -> str:
    import shutil

    found = shutil.which(path)
    if not found:
        pytest.skip(f"{path} not installed (CI installs it with apt-get)")
    return found
