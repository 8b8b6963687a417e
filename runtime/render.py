"""What an operator sees: the frame with a heat map of the anomaly map, the mask outline,
the region boxes and a status bar (OK/NG, score, FPS, latency).

Decisions are made at the model's resolution (README "Streaming station"): the map and
mask arrive at model size and the boxes in frame pixels. One pixel mapping joins the
two: frame pixel X belongs to model pixel floor((X + 0.5) * w / W), the pixel whose
footprint holds X's centre under the preprocessing's plain resize. `mask_to_frame`
upsamples with it and `boxes_to_frame` gives each region's box in the same mapping, so
a drawn box is exactly the bounding box of its region in the upsampled mask (the one
drawn and saved with an event).
"""

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


def _frame_index(n_from: int, n_to: int) -> np.ndarray:
    """For each of n_to frame pixels, the model pixel holding its centre."""
    return (2 * np.arange(n_to, dtype=np.int64) + 1) * n_from // (2 * n_to)


def _edge(i: int, n_from: int, n_to: int) -> int:
    """The first frame pixel whose model pixel is >= i (ceil of an exact fraction)."""
    return max(0, min(n_to, -((n_from - 2 * n_to * i) // (2 * n_from))))


def mask_to_frame(mask: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """A model-size 0/1 mask at the frame's size (nearest, the mapping above)."""
    h, w = mask.shape[:2]
    fh, fw = (int(v) for v in frame_hw)
    if (h, w) == (fh, fw):
        return mask
    return mask.take(_frame_index(h, fh), axis=0).take(_frame_index(w, fw), axis=1)


def boxes_to_frame(regions: list[list[int]], model_hw: tuple[int, int],
                   frame_hw: tuple[int, int]) -> list[list[int]]:
    """Boxes [x, y, w, h] in model pixels -> the same regions' boxes in frame pixels."""
    (h, w), (fh, fw) = model_hw, frame_hw
    if (h, w) == (fh, fw):
        return [list(r) for r in regions]
    out = []
    for x, y, bw, bh in regions:
        x0, x1 = _edge(x, w, fw), _edge(x + bw, w, fw)
        y0, y1 = _edge(y, h, fh), _edge(y + bh, h, fh)
        # a frame smaller than the model may hold no pixel of a tiny region: keep one
        x0, y0 = min(x0, fw - 1), min(y0, fh - 1)
        out.append([x0, y0, max(x1 - x0, 1), max(y1 - y0, 1)])
    return out


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
    heat_scale: float | None = None,
) -> np.ndarray:
    """A new annotated BGR image of the frame's size (the frame itself is not modified).
    `anomaly_map` and `mask` at model (or frame) size, `regions` in frame pixels;
    `heat_scale`: the map's value drawn mid-range when it is not `threshold` (a model
    whose decision head decides: the map shown is UniAS's, the threshold the head's)."""
    out = as_bgr(frame)
    scale = threshold if heat_scale is None else heat_scale
    colours = heat(anomaly_map, scale)
    if colours.shape[:2] != out.shape[:2]:
        # coloured at the map's size, then resized as bytes: JET is linear between its
        # breakpoints, so this is the colour of the resized map there (and close at the
        # breakpoints), at a fraction of the cost of colouring every frame pixel
        colours = cv2.resize(colours, (out.shape[1], out.shape[0]),
                             interpolation=cv2.INTER_LINEAR)
    cv2.addWeighted(colours, HEAT_ALPHA, out, 1 - HEAT_ALPHA, 0, dst=out)
    if mask is not None and mask.any():
        shown = mask_to_frame(mask.astype(np.uint8, copy=False), out.shape[:2])
        contours, _ = cv2.findContours(shown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
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
