"""Batched model inference to per-level maps, and aggregation to anomaly maps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def predict_level_maps(
    model: torch.nn.Module,
    dataset: Any,
    batch: int = 8,
    device: torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Run the model in eval mode; returns the four raw maps res1..res4 as (N, h, w) arrays."""
    return predict_maps(model, dataset, batch, device, progress)[0]


def predict_maps(
    model: torch.nn.Module,
    dataset: Any,
    batch: int = 8,
    device: torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """(the four level maps (N, h, w), the decision head's distance grids (N, h3, w3) or
    None when the model has no head), in one pass."""
    from torch.utils.data import DataLoader

    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    levels: list[list[np.ndarray]] = [[], [], [], []]
    grids: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            # A private generator keeps the global RNG (saved in checkpoints) untouched.
            loader = DataLoader(dataset, batch_size=batch, generator=torch.Generator())
            for item in loader:
                images = item[0].to(device)
                out = model(images)
                for i, d in enumerate(out.dists):
                    levels[i].append(d.float().cpu().numpy())
                if out.knn is not None:
                    grids.append(out.knn.float().cpu().numpy())
                if progress is not None:
                    progress(images.shape[0])
    finally:
        model.train(was_training)
    return [np.concatenate(chunks) for chunks in levels], (np.concatenate(grids)
                                                            if grids else None)


def decision_maps(levels: list[np.ndarray], grids: np.ndarray | None, out_hw, mode: str,
                  smoothing: Any, use: Any, sigma: float) -> np.ndarray:
    """The maps the OK/NG decision is taken on (N, H, W): the decision head's when the
    model has one (edgeas.decision_head), else the aggregated UniAS maps."""
    if grids is not None:
        from edgeas.decision_head import head_maps

        return head_maps(grids, out_hw, sigma)
    return aggregate_maps(levels, out_hw, mode, smoothing, use)


def aggregate_maps(levels: list[np.ndarray], out_hw: tuple[int, int], mode: str,
                   smoothing: Any = None, use: Any = None) -> np.ndarray:
    """Per image, the level maps -> one anomaly map (N, H, W) at `out_hw`, for an
    aggregation setting (`smoothing`, level set `use`) in `mode` (edgeas.aggregate)."""
    from edgeas.aggregate import aggregate_batch

    return aggregate_batch(levels, out_hw, mode, smoothing, use)
