"""A PatchCore-style nearest-neighbour baseline on edgeas's own frozen backbone (issue 12).

    python benchmarks/patchcore.py --data DIR [--backbone efficientnet_lite0] [--taps 3,4]
        [--coreset 0.1] [--val-fraction 0.25] [--seed 0] [--out results.json]

The peer a user would pick instead of UniAS (anomalib's most used model), built from the
paper's recipe (Roth et al., CVPR 2022) with no new framework:
1. features once: the frozen backbone's taps (default res3 and res4, strides 8 and 16,
   the "middle" levels PatchCore takes from a ResNet), each averaged over its 3x3
   neighbourhood, the coarser resized (bilinear) to the finer's grid, concatenated;
2. a memory bank of every training patch of every class (one unified bank, as UniAS is
   one unified model), reduced by greedy k-center coreset subsampling on a random
   projection (the paper's approximate greedy coreset);
3. a patch's score is its Euclidean distance to the nearest bank entry; the map is the
   score grid resized to the input (bilinear, half-pixel) and smoothed by a Gaussian of
   sigma 4 (the paper's), the image score its maximum.
The same held-out normal images that UniAS's threshold is fitted on (`split_train_val`
with the run's fraction and seed) stay out of the bank and give this baseline a
`frame_fpr` threshold of its own, so both rows report the same decision figures.

Steps 1-3 are train/memory_bank.py's (`patch_features`, `greedy_coreset`,
`nearest_distance`), the one implementation the decision head of `decision.head: knn`
models is fitted with, so that this baseline measures what such a model ships. Its taps
here are 1-based (res3 = 3); memory_bank indexes the backbone's levels from 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeas.train import memory_bank
from edgeas.train.memory_bank import (  # noqa: F401  (this module's API; tests set _CHUNK)
    _CHUNK,
    greedy_coreset,
    nearest_distance,
)

DEFAULT_TAPS = (3, 4)  # res3, res4: strides 8 and 16
SIGMA = 4.0  # the paper's Gaussian on the upsampled score map


@dataclass
class Baseline:
    """What `fit` returns: the bank and how the features were made."""

    bank: torch.Tensor  # (M, C) float32
    taps: tuple[int, ...]
    patches_before_coreset: int


def patch_features(backbone: torch.nn.Module, images: torch.Tensor,
                   taps: tuple[int, ...]) -> torch.Tensor:
    """Locally aware patch features (N, C, h, w) at the first chosen tap's grid; `taps`
    1-based (res1 = 1)."""
    with torch.inference_mode():
        return memory_bank.patch_features(backbone(images), [t - 1 for t in taps])


def _gaussian(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    y = F.pad(maps, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(y, k.transpose(-1, -2))


def _batches(dataset, batch: int):
    for s in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(s, min(s + batch, len(dataset)))]
        yield torch.stack([it[0] for it in items]), items


def fit(backbone, train_set, taps: tuple[int, ...], coreset: float, seed: int,
        batch: int = 16) -> Baseline:
    rows = []
    for images, _ in _batches(train_set, batch):
        f = patch_features(backbone, images, taps)
        rows.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    patches = torch.cat(rows)
    keep = greedy_coreset(patches, coreset, seed)
    return Baseline(patches[keep].contiguous(), taps, patches.shape[0])


def anomaly_maps(baseline: Baseline, backbone, dataset, out_hw: tuple[int, int],
                 batch: int = 16) -> np.ndarray:
    """(N, H, W) float32 maps of every image of `dataset` (its items start with the image)."""
    maps = []
    for images, _ in _batches(dataset, batch):
        f = patch_features(backbone, images, baseline.taps)
        n, c, h, w = f.shape
        d = nearest_distance(f.permute(0, 2, 3, 1).reshape(-1, c), baseline.bank)
        grid = d.view(n, 1, h, w)
        up = F.interpolate(grid, size=out_hw, mode="bilinear", align_corners=False)
        maps.append(_gaussian(up, SIGMA)[:, 0].numpy().astype(np.float32))
    return np.concatenate(maps)


def run(data: Path, backbone_name: str, taps: tuple[int, ...], coreset: float,
        val_fraction: float, seed: int, min_area: int = 16,
        target: float = 0.01) -> dict:
    """Fit on DATA's training split, evaluate on its test split: metrics as `edgeas eval`
    writes them (pixel/image metrics and decision metrics per class and mean)."""
    from edgeas.decisions import decision_metrics
    from edgeas.metrics import evaluate
    from edgeas.preprocess import Recipe
    from edgeas.thresholds import fit_threshold
    from edgeas.train.backbones import build_backbone
    from edgeas.train.data import index_dataset, split_train_val
    from edgeas.train.datasets import TestImages

    torch.manual_seed(seed)
    backbone = build_backbone(backbone_name)
    recipe = Recipe((224, 224), backbone.mean, backbone.std)
    index = index_dataset(data)
    train, val = split_train_val(index.train, val_fraction, seed)
    as_test = lambda samples: TestImages(samples, recipe)  # noqa: E731  (masks: zeros)
    t0 = time.perf_counter()
    baseline = fit(backbone, as_test(train), taps, coreset, seed)
    fit_s = time.perf_counter() - t0
    val_maps = anomaly_maps(baseline, backbone, as_test(val), recipe.input_size)
    tau = fit_threshold(val_maps, "frame_fpr", target, min_area=min_area)
    test = as_test(index.test)
    t1 = time.perf_counter()
    maps = anomaly_maps(baseline, backbone, test, recipe.input_size)
    test_s = time.perf_counter() - t1
    masks = np.stack([test[i][1].numpy() for i in range(len(test))]).astype(np.uint8)
    classes = [s.cls for s in index.test]
    metrics = evaluate(maps, masks, classes, threshold=tau.value)
    decisions = decision_metrics(maps, masks, classes, tau.value, min_area)
    for cls, values in decisions.items():
        metrics[cls].update(values)
    return {"metrics": metrics, "threshold": tau.value, "held_out": len(val),
            "bank": int(baseline.bank.shape[0]), "patches": baseline.patches_before_coreset,
            "fit_s": round(fit_s, 1), "test_s_per_image": round(test_s / len(test), 3),
            "settings": {"backbone": backbone_name, "taps": list(taps), "coreset": coreset,
                         "sigma": SIGMA, "val_fraction": val_fraction, "seed": seed,
                         "min_area": min_area, "frame_fpr": target}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--taps", default=",".join(map(str, DEFAULT_TAPS)),
                   help="backbone levels, res1=1 .. res4=4")
    p.add_argument("--coreset", type=float, default=0.1, help="fraction of patches kept")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-area", type=int, default=16)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    torch.set_num_threads(2)
    result = run(a.data, a.backbone, tuple(int(t) for t in a.taps.split(",")), a.coreset,
                 a.val_fraction, a.seed, a.min_area)
    text = json.dumps(result, indent=2)
    if a.out:
        a.out.write_text(text)
    mean = result["metrics"]["mean"]
    print({k: round(v, 4) for k, v in mean.items()}, file=sys.stderr)


if __name__ == "__main__":
    main()
