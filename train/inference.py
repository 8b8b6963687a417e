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
    from torch.utils.data import DataLoader

    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    levels: list[list[np.ndarray]] = [[], [], [], []]
    try:
        with torch.inference_mode():
            # A private generator keeps the global RNG (saved in checkpoints) untouched.
            loader = DataLoader(dataset, batch_size=batch, generator=torch.Generator())
            for item in loader:
                images = item[0].to(device)
                out = model(images)
                for i, d in enumerate(out.dists):
                    levels[i].append(d.float().cpu().numpy())
                if progress is not None:
                    progress(images.shape[0])
    finally:
        model.train(was_training)
    return [np.concatenate(chunks) for chunks in levels]


def aggregate_maps(levels: list[np.ndarray], out_hw: tuple[int, int], mode: str,
                   smoothing: Any = None, use: Any = None) -> np.ndarray:
    """Per image, the level maps -> one anomaly map (N, H, W) at `out_hw`, for an
    aggregation setting (`smoothing`, level set `use`) in `mode` (edgeas.aggregate)."""
    from edgeas.aggregate import aggregate_batch

    return aggregate_batch(levels, out_hw, mode, smoothing, use)
