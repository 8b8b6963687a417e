"""The decision head's map: where a model has one, the OK/NG decision is taken on it.

Why a second map. On every model measured (benchmarks/EXPERIMENTS.md, issue 12), UniAS's
aggregated map localises defects well (pAP) but ranks whole images less well than the
distance of the frozen backbone's patches to their nearest normal patch (the
PatchCore-style score): image AUROC 0.70 vs 0.86 and recall at 1% false NG 47% vs 67% on
the demo's model; no score computed from the UniAS maps alone closed that gap. A model
trained with `decision.head: knn` therefore carries a memory bank inside its graph and
emits the nearest-neighbour distance grid as one more output; the decision rule
(threshold, min_area, per-class values) runs on the map made from it here, and the
UniAS map stays the heat map that shows the operator where.

The map: the (h, w) distance grid resized to the model's input size (bilinear,
half-pixel centres: OpenCV's INTER_LINEAR) and smoothed by a Gaussian of `sigma` input
pixels (radius round(4 sigma), reflect-101 border), as PatchCore does. numpy and
OpenCV only: this module is on the runtime's import path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edgeas.errors import ModelOutputError

if TYPE_CHECKING:
    from edgeas.record import DecisionHead, ModelRecord


def _grid(dist: np.ndarray) -> np.ndarray:
    a = np.asarray(dist, dtype=np.float32)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ModelOutputError(f"the decision head's output must be one (h, w) grid per "
                               f"image, got shape {np.shape(dist)}")
    return np.ascontiguousarray(a)


def head_map(dist: np.ndarray, out_hw: Sequence[int], sigma: float) -> np.ndarray:
    """One image's decision map (H, W) float32 from its distance grid (h, w)."""
    grid = _grid(dist)
    h, w = int(out_hw[0]), int(out_hw[1])
    up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)
    if sigma > 0:
        radius = int(4 * sigma + 0.5)
        up = cv2.GaussianBlur(up, (2 * radius + 1, 2 * radius + 1), sigmaX=sigma,
                              sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    return np.ascontiguousarray(up, dtype=np.float32)


def head_maps(dists: np.ndarray, out_hw: Sequence[int], sigma: float) -> np.ndarray:
    """(N, H, W) decision maps of a batch of distance grids (N, h, w) or (N, 1, h, w)."""
    batch = np.asarray(dists, dtype=np.float32)
    if batch.ndim == 4:
        batch = batch[:, 0]
    if batch.ndim != 3:
        raise ModelOutputError(f"decision head outputs must be (N, h, w) or (N, 1, h, w), "
                               f"got shape {batch.shape}")
    out = np.empty((len(batch), int(out_hw[0]), int(out_hw[1])), np.float32)
    for i, grid in enumerate(batch):
        out[i] = head_map(grid, out_hw, sigma)
    return out


def split_outputs(record: ModelRecord, outputs: Sequence[np.ndarray]
                  ) -> tuple[list[np.ndarray], np.ndarray | None]:
    """A backend's outputs in `record.model.outputs` order -> (level maps, head output or
    None)."""
    n = len(record.model.levels)
    outputs = list(outputs)
    if record.model.head is None:
        return outputs, None
    if len(outputs) != n + 1:
        raise ModelOutputError(f"the model has {n} levels and a decision head, but "
                               f"{len(outputs)} outputs came back")
    return outputs[:n], outputs[n]


def describe(head: DecisionHead | None) -> str:
    """One line for the operator: what the OK/NG decision is taken on."""
    if head is None:
        return "the aggregated anomaly map"
    return (f"the {head.kind} decision head (nearest of {head.bank} normal patches, "
            f"sigma {head.sigma:g})")
