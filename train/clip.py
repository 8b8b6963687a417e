"""`edgeas synth-clip`: a video of a data set's test images, as a camera over a line sees it.

The demo and the station tests stream it: every test image of every class, normal
and defective, in a fixed shuffled order, each held for a few frames. Beside the
video, `CLIP.json` records which frames show a defect so a run can be checked
against it. Needs only OpenCV (no torch): it also runs on a station.

Camera-sized frames (`frame=(W, H)`): the station feeds the whole frame, resized, to
the model, and the model was trained on views the part fills. So by default the test
image is resampled onto the whole frame (the view fills the sensor, as the training
views fill the model input; a square view on a 16:9 sensor is stretched and the
station's resize undoes it). `fill` < 1 shrinks it to that fraction of each side, on a
plain background; `keep_aspect` scales it uniformly to `fill` of the frame's height
instead (a square part in the middle of a wide frame). The geometry goes into the JSON.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np

from edgeas.errors import DataError
from edgeas.fileio import atomic_write_text
from edgeas.imageio import IMAGE_SUFFIXES, read_bgr

FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


SPLITS = {"test": "*/test/*/*", "train": "*/train/good/*"}


def list_test_images(root: Path, split: str = "test") -> list[tuple[Path, str, str]]:
    """(image, class, defect kind or 'good') of every CLASS/test/KIND/* image, sorted;
    with split "train" every CLASS/train/good/* image (normal parts only: the clip a
    station's camera records to fit its threshold on, `edgeas threshold fit`)."""
    if split not in SPLITS:
        raise DataError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    found = []
    for path in sorted(root.glob(SPLITS[split])):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found.append((path, path.parents[2].name, path.parent.name))
    if not found:
        raise DataError(
            f"{root} has no {SPLITS[split].replace('*', 'X').replace('X/', 'CLASS/', 1)} "
            "images", hint="make a data set with `edgeas synth DIR` first",
        )
    return found


BACKGROUND = (128, 128, 128)  # the plain belt around a part that does not fill the frame


def parse_frame_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DataError(f"--frame must be WIDTHxHEIGHT, e.g. 1280x720 (got {text!r})") from None
    if width < 16 or height < 16:
        raise DataError(f"--frame must be at least 16x16 pixels (got {text!r})")
    return width, height


def part_box(source_hw: tuple[int, int], frame: tuple[int, int], fill: float,
             keep_aspect: bool) -> tuple[int, int, int, int]:
    """[x, y, w, h] of the part in a (W, H) frame, centred."""
    width, height = frame
    if keep_aspect:
        h = round(fill * height)
        w = min(width, round(h * source_hw[1] / source_hw[0]))
    else:
        w, h = round(fill * width), round(fill * height)
    return (width - w) // 2, (height - h) // 2, max(w, 1), max(h, 1)


def compose(img: np.ndarray, frame: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The image resampled into `box` of a plain frame of size (W, H)."""
    x, y, w, h = box
    out = np.empty((frame[1], frame[0], 3), np.uint8)
    out[:] = BACKGROUND
    # Upscaling: cubic, the smoothest of OpenCV's cheap kernels; area for a shrink.
    inter = cv2.INTER_CUBIC if w >= img.shape[1] else cv2.INTER_AREA
    out[y : y + h, x : x + w] = cv2.resize(img, (w, h), interpolation=inter)
    return out


def write_clip(
    data: Path, out: Path, fps: float = 5.0, hold: int = 2, seed: int = 0,
    limit: int | None = None, frame: tuple[int, int] | None = None, fill: float = 1.0,
    keep_aspect: bool = False, split: str = "test",
) -> dict:
    """Write the clip and its frame list; returns the frame list's document.

    `frame`: (W, H) of camera-sized frames (default: the images' own size, no
    background); `fill` and `keep_aspect`: where the part lies in it (module doc).
    """
    if out.suffix.lower() not in FOURCC:
        raise DataError(f"{out}: clip must end in {', '.join(FOURCC)}")
    if hold < 1 or fps <= 0:
        raise DataError(f"--hold must be >= 1 and --fps > 0 (got {hold}, {fps})")
    if not 0 < fill <= 1:
        raise DataError(f"--fill must be in (0, 1], got {fill}")
    images = list_test_images(data, split)
    random.Random(seed).shuffle(images)  # classes and defects interleave, as on a line
    images = images[:limit] if limit else images
    source_hw = read_bgr(images[0][0]).shape[:2]
    box = None
    if frame is not None:
        width, height = frame
        box = part_box(source_hw, frame, fill, keep_aspect)
    else:
        height, width = source_hw
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
            if box is not None:
                img = compose(img, (width, height), box)
            elif img.shape[:2] != (height, width):
                img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
            for _ in range(hold):
                frames.append({"frame": len(frames), "class": cls, "kind": kind,
                               "defect": kind != "good", "image": str(path.relative_to(data))})
                writer.write(img)
    finally:
        writer.release()
    tmp.replace(out)
    doc: dict = {"video": out.name, "fps": fps, "size": [width, height]}
    if box is not None:
        # where the part is, so that a reader can map frame pixels to image pixels
        doc["geometry"] = {"image_size": [source_hw[1], source_hw[0]], "part_box": list(box),
                           "fill": fill, "keep_aspect": keep_aspect,
                           "background": list(BACKGROUND)}
    doc["frames"] = frames
    atomic_write_text(out.with_suffix(".json"), json.dumps(doc, indent=1))
    return doc
