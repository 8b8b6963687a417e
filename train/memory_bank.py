"""The nearest-neighbour decision head: a memory bank of normal patches (edgeas.decision_head).

Fitted after training, from the frozen backbone alone (no gradient, no new weights):
1. patch features: the backbone's res3 and res4 (strides 8 and 16), each averaged over
   its 3x3 neighbourhood, res4 resized (bilinear, half-pixel) to res3's grid, joined
   along channels (PatchCore's "locally aware" mid-level features);
2. every training image's patches, reduced by a greedy k-center coreset (each step adds
   the patch farthest from those kept, distances on a random projection to 128
   dimensions), which keeps the bank's coverage of normal appearance at a fraction of
   its size;
3. at inference each patch's Euclidean distance to its nearest bank entry, computed as
   sqrt(max(|x|^2 - 2 x.b + |b|^2, 0)) with one matrix product, which the ONNX export and
   TensorRT take as MatMul + ReduceMin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TAPS = (2, 3)  # indices into the backbone's levels: res3, res4
PROJECTION_DIM = 128
_CHUNK = 4096  # query rows per distance block when fitting (bounds memory)


def patch_features(feats: Sequence[Tensor], taps: Sequence[int] = TAPS) -> Tensor:
    """(N, C, h, w) locally aware patch features at the first tap's grid."""
    chosen = [F.avg_pool2d(feats[t], 3, stride=1, padding=1) for t in taps]
    size = chosen[0].shape[-2:]
    chosen = [chosen[0], *(F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                           for f in chosen[1:])]
    return torch.cat(chosen, dim=1)


def greedy_coreset(features: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Indices of a greedy k-center coreset of `fraction` of the rows of (n, d) features."""
    n = features.shape[0]
    k = max(1, int(round(n * fraction)))
    if k >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    x = features
    if features.shape[1] > PROJECTION_DIM:
        proj = torch.randn(features.shape[1], PROJECTION_DIM, generator=gen)
        x = features @ (proj / PROJECTION_DIM**0.5)
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: one matrix-vector product per step
    sq = (x * x).sum(dim=1)
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=gen))
    nearest = sq - 2 * (x @ x[chosen[0]]) + sq[chosen[0]]
    for i in range(1, k):
        chosen[i] = j = int(torch.argmax(nearest))
        nearest = torch.minimum(nearest, sq - 2 * (x @ x[j]) + sq[j])
    return chosen


def nearest_distance(queries: Tensor, bank: Tensor) -> Tensor:
    """Exact Euclidean distance of each query row to its nearest bank row (fitting and
    tests: torch.cdist in blocks)."""
    out = torch.empty(queries.shape[0])
    for s in range(0, queries.shape[0], _CHUNK):
        out[s : s + _CHUNK] = torch.cdist(queries[s : s + _CHUNK], bank).min(dim=1).values
    return out


class NearestPatchHead(nn.Module):
    """feats (the backbone's levels) -> (N, h, w) distance of each patch to the bank."""

    def __init__(self, bank: Tensor, taps: Sequence[int] = TAPS) -> None:
        super().__init__()
        self.taps = tuple(int(t) for t in taps)
        self.register_buffer("bank", bank.detach().float().contiguous())

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        f = patch_features(feats, self.taps)
        n, c, h, w = f.shape
        x = f.flatten(2).transpose(1, 2)  # (N, hw, C)
        # derived from the bank on every call, never cached: a loaded state dict replaces
        # the bank (the export folds both into constants)
        bank = self.bank
        d2 = (x * x).sum(dim=-1, keepdim=True) - 2 * (x @ bank.t()) + (bank * bank).sum(dim=1)
        d = d2.amin(dim=-1).clamp_min(0).sqrt()
        return d.reshape(n, h, w)


def fit_bank(backbone: nn.Module, batches: Callable[[], object], fraction: float,
             seed: int = 0, progress: Callable[[int], None] | None = None) -> tuple[Tensor, int]:
    """(bank (M, C), patches before the coreset) from the images `batches()` yields
    ((N, 3, H, W) normalised tensors)."""
    rows = []
    with torch.inference_mode():
        for images in batches():
            f = patch_features(backbone(images))
            rows.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
            if progress is not None:
                progress(int(images.shape[0]))
    if not rows:
        raise ValueError("no training images to build the memory bank from")
    patches = torch.cat(rows)
    keep = greedy_coreset(patches, fraction, seed)
    return patches[keep].clone(), int(patches.shape[0])
