"""What an operator sees: the frame with a heat map of the anomaly map, the mask outline,
the region boxes and a status bar (OK/NG, score, FPS, latency)."""

from __future__ import annotations

import cv2
import numpy as np

from edgeas.runtime.preprocess import check_frame

OK_COLOUR = (60, 180, 60)  # BGR
NG_COLOUR = (40, 40, 230)
OUTLINE_COLOUR = (255, 255, 255)
HEAT_ALPHA = 0.45


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """Any supported frame (gray, BGR, BGRA) as a new uint8 BGR image."""
    frame = check_frame(frame)
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame.copy()


def heat(anomaly_map: np.ndarray, threshold: float | None) -> np.ndarray:
    """JET colours of the map, scaled so that the threshold sits in the middle of the range
    (without a threshold: the map's own maximum is the top)."""
    top = 2.0 * threshold if threshold else float(anomaly_map.max())
    scale = 255.0 / top if top > 0 else 0.0
    levels = cv2.convertScaleAbs(anomaly_map, alpha=scale)  # saturates to 0..255
    return cv2.applyColorMap(levels, cv2.COLORMAP_JET)


def render(
    frame: np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray | None,
    regions: list[list[int]],
    is_ng: bool,
    score: float,
    threshold: float | None,
    status: str = "",
) -> np.ndarray:
    """A new annotated BGR image of the frame's size (the frame itself is not modified)."""
    out = as_bgr(frame)
    if anomaly_map.shape != out.shape[:2]:
        anomaly_map = cv2.resize(anomaly_map, (out.shape[1], out.shape[0]))
    cv2.addWeighted(heat(anomaly_map, threshold), HEAT_ALPHA, out, 1 - HEAT_ALPHA, 0, dst=out)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, OUTLINE_COLOUR, 1, cv2.LINE_AA)
    colour = NG_COLOUR if is_ng else OK_COLOUR
    for x, y, w, h in regions:
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), colour, 2)
    label = f"{'NG' if is_ng else 'OK'}  score {score:.4f}"
    if threshold is not None:
        label += f" / {threshold:.4f}"
    if status:
        label += f"  {status}"
    _status_bar(out, label, colour)
    return out


def _status_bar(img: np.ndarray, text: str, colour: tuple[int, int, int]) -> None:
    # text scaled to the frame: readable on a 224 px test frame and on 1080p
    scale = max(0.35, img.shape[1] / 1400)
    thickness = 1 if scale < 0.8 else 2
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    bar = th + base + 8
    cv2.rectangle(img, (0, 0), (min(img.shape[1], tw + 12), bar), colour, -1)
    cv2.putText(img, text, (6, bar - base - 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), thickness, cv2.LINE_AA)
