"""The preprocessing recipe (protocol.md section 1), written once and read from metadata.

Training, evaluation, calibration and the runtime all call `preprocess_bgr`
(or the runtime's fused variant, tested equal to it), with the recipe taken from
the artifact's metadata: nothing downstream re-types the input size or mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edgeas.errors import ArtifactError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite weights expect (x*255 - 127) / 128; on the x/255 scale:
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class Recipe:
    input_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]  # on the x / 255 scale
    std: tuple[float, float, float]
    channel_order: str = "RGB"
    interpolation: str = "linear"

    def to_metadata(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "channel_order": self.channel_order,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Recipe:
        try:
            recipe = cls(
                input_size=(int(meta["input_size"][0]), int(meta["input_size"][1])),
                mean=tuple(float(v) for v in meta["mean"]),
                std=tuple(float(v) for v in meta["std"]),
                channel_order=str(meta.get("channel_order", "RGB")),
                interpolation=str(meta.get("interpolation", "linear")),
            )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ArtifactError(f"metadata has no valid preprocessing recipe ({exc!r})") from exc
        if recipe.channel_order != "RGB" or recipe.interpolation != "linear":
            raise ArtifactError(
                f"unsupported preprocessing: channel_order={recipe.channel_order}, "
                f"interpolation={recipe.interpolation} (this edgeas knows RGB / linear)"
            )
        return recipe


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """uint8 BGR (H,W,3), BGRA (H,W,4) or grayscale (H,W)/(H,W,1) -> uint8 RGB (H,W,3)."""
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got {frame.dtype}")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2RGB)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    raise ValueError(f"expected an image of shape (H,W), (H,W,3) or (H,W,4), got {frame.shape}")


def resize_rgb(rgb: np.ndarray, recipe: Recipe) -> np.ndarray:
    h, w = recipe.input_size
    if rgb.shape[:2] == (h, w):
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)


def normalize(rgb_uint8: np.ndarray, recipe: Recipe) -> np.ndarray:
    """uint8 RGB (H,W,3) at model size -> float32 (3,H,W): (x/255 - mean) / std."""
    x = rgb_uint8.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(recipe.mean, np.float32)) / np.asarray(recipe.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_bgr(frame: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The reference transform: BGR uint8 frame -> normalised float32 (3,H,W)."""
    return normalize(resize_rgb(to_rgb(frame), recipe), recipe)
