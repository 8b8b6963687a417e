"""Ground truth beside a stream's source: which frames show a defect.

Two kinds are recognised, so that `edgeas stream` can say how right its calls were
without a flag:
- a video with its frame list beside it, `CLIP.json` for `CLIP.mp4`, as `edgeas
  synth-clip` writes it: {"frames": [{"frame": i, "defect": bool, ...}, ...], ...}, one
  entry per frame of the video (an image held for `hold` frames has `hold` entries), so
  the stream's frame i is the entry with "frame" == i (its position when it has none);
- a folder in the MVTec layout, CLASS/test/KIND/: KIND "good" is normal, any other
  kind defective.
This module is the reading side of that format (train/clip.py writes it); the runtime
uses it, so it needs neither torch nor the train stage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("edgeas.stream")

CLIP_SUFFIX = ".json"  # the frame list of CLIP.mp4 is CLIP.json
NORMAL_KIND = "good"  # the MVTec name of the normal images' folder
TEST_SPLIT = "test"


@dataclass(frozen=True)
class GroundTruth:
    """Labels for a stream's frames: `label(index, source)` -> True (defect), False
    (clean) or None (no label for that frame)."""

    origin: str  # where the labels come from, as the summary names it
    by: str  # "frame index" (a clip's list) or "folder name"
    frames: tuple[bool | None, ...] = ()  # a clip: the label of each frame index
    folder_label: bool | None = None  # a labelled folder: every image's label

    def label(self, index: int, source: str = "") -> bool | None:
        if self.by == "folder name":
            return self.folder_label
        return self.frames[index] if 0 <= index < len(self.frames) else None


def clip_truth_path(video: Path) -> Path:
    return video.with_suffix(CLIP_SUFFIX)


def parse_clip(doc: Any, origin: str) -> GroundTruth:
    """The labels of a synth-clip frame list; ValueError naming what is wrong."""
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ValueError("no 'frames' list")
    labels: dict[int, bool] = {}
    for pos, entry in enumerate(frames):
        defect = entry.get("defect") if isinstance(entry, dict) else None
        if not isinstance(defect, bool):
            raise ValueError(f"frames[{pos}] has no boolean 'defect'")
        index = entry.get("frame", pos)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"frames[{pos}]: 'frame' must be a frame number, got {index!r}")
        if index in labels:
            raise ValueError(f"frame {index} is listed twice")
        labels[index] = defect
    per_frame = tuple(labels.get(i) for i in range(max(labels) + 1))
    return GroundTruth(origin, "frame index", frames=per_frame)


def read_clip(path: Path) -> GroundTruth:
    """A clip's frame list from its JSON file (OSError / ValueError when unreadable)."""
    return parse_clip(json.loads(path.read_text()), path.name)


def folder_truth(folder: Path) -> GroundTruth | None:
    """Labels of a CLASS/test/KIND folder, None for a folder of any other layout."""
    folder = folder.resolve()
    if folder.parent.name != TEST_SPLIT:
        return None
    kind = folder.name
    return GroundTruth(f"{folder.parent.parent.name}/{TEST_SPLIT}/{kind}/", "folder name",
                       folder_label=kind != NORMAL_KIND)


def find_ground_truth(kind: str, target: str) -> GroundTruth | None:
    """The ground truth beside a source (`SourceSpec.kind`, `.target`), None when there is
    none. A JSON file beside a video that is not a frame list is ignored with a warning:
    it cannot be ground truth, and the station runs as it would without it."""
    if kind == "folder":
        return folder_truth(Path(target))
    if kind != "file" or not Path(target).is_file():
        return None
    path = clip_truth_path(Path(target))
    if not path.is_file():
        return None
    try:
        return read_clip(path)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        log.warning("%s is not a frame list of this video (%s): decisions are not checked",
                    path, exc)
        return None


__all__ = ["CLIP_SUFFIX", "GroundTruth", "clip_truth_path", "find_ground_truth",
           "folder_truth", "parse_clip", "read_clip"]
