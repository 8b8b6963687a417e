"""`edgeas synth-clip`: a video of a data set's test images, as a camera over a line sees it.

The demo and the station tests stream it: every test image of every class, normal
and defective, in a fixed shuffled order, each held for a few frames. Beside the
video, `CLIP.json` records which frames show a defect so a run can be checked
against it. Needs only OpenCV (no torch): it also runs on a station.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2

from edgeas.errors import DataError
from edgeas.fileio import atomic_write_text
from edgeas.imageio import IMAGE_SUFFIXES, read_bgr

FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def list_test_images(root: Path) -> list[tuple[Path, str, str]]:
    """(image, class, defect kind or 'good') of every CLASS/test/KIND/* image, sorted."""
    found = []
    for path in sorted(root.glob("*/test/*/*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found.append((path, path.parents[2].name, path.parent.name))
    if not found:
        raise DataError(
            f"{root} has no CLASS/test/KIND/ images",
            hint="make a data set with `edgeas synth DIR` first",
        )
    return found


def write_clip(
    data: Path, out: Path, fps: float = 5.0, hold: int = 2, seed: int = 0, limit: int | None = None
) -> dict:
    """Write the clip and its frame list; returns the frame list's document."""
    if out.suffix.lower() not in FOURCC:
        raise DataError(f"{out}: clip must end in {', '.join(FOURCC)}")
    if hold < 1 or fps <= 0:
        raise DataError(f"--hold must be >= 1 and --fps > 0 (got {hold}, {fps})")
    images = list_test_images(data)
    random.Random(seed).shuffle(images)  # classes and defects interleave, as on a line
    images = images[:limit] if limit else images
    height, width = read_bgr(images[0][0]).shape[:2]
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a stopped run leaves no half clip.
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC[out.suffix.lower()]),
                             fps, (width, height))
    if not writer.isOpened():
        raise DataError(f"OpenCV cannot write {out} (no {FOURCC[out.suffix.lower()]} encoder)")
    frames = []
    try:
        for path, cls, kind in images:
            img = read_bgr(path)
            if img.shape[:2] != (height, width):
                img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
            for _ in range(hold):
                frames.append({"frame": len(frames), "class": cls, "kind": kind,
                               "defect": kind != "good", "image": str(path.relative_to(data))})
                writer.write(img)
    finally:
        writer.release()
    tmp.replace(out)
    doc = {"video": out.name, "fps": fps, "size": [width, height], "frames": frames}
    atomic_write_text(out.with_suffix(".json"), json.dumps(doc, indent=1))
    return doc
