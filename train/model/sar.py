"""Sample-aware reweighting (SAR) of the learned queries."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeas.train.model.layers import MGGCNN


class _MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class _ChannelWeight(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.agg = _MLP([dim, dim // 2, dim // 2, dim])

    def forward(self, g: Tensor) -> Tensor:
        return torch.sigmoid(self.agg(g.mean(dim=(2, 3))) + self.agg(g.amax(dim=(2, 3))))


class _SpatialWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, g: Tensor) -> Tensor:
        pooled = torch.cat([g.mean(dim=1, keepdim=True), g.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class QueryProcessor(nn.Module):
    """R[l] = Q[l] * sw[l mod N] + Q[l] * cw, laid out on the token grid, then an MGG-CNN.

    With `ratio` x N queries, R becomes (B, ratio*D, gh, gw) where channel
    ratio*h + j holds query j*N + s at cell s: the reference reshapes (B, D, ratio*N)
    row-major, so the query groups interleave per channel.
    """

    def __init__(self, dim: int, ratio: int, depthwise: bool = False) -> None:
        super().__init__()
        self.ratio = ratio
        self.channel_weight = _ChannelWeight(dim)
        self.spatial_weight = _SpatialWeight()
        self.adaptor = MGGCNN(ratio * dim, dim, dim, depthwise)

    def forward(self, g: Tensor, queries: Tensor, record: dict | None = None) -> Tensor:
        b, d, gh, gw = g.shape
        cw = self.channel_weight(g)  # (B, D)
        sw = self.spatial_weight(g)  # (B, 1, gh, gw)
        sw_tokens = sw.flatten(1).repeat(1, self.ratio)  # (B, ratio*N): weight of query l
        # (B, ratio*N, D): both weightings of the same query, added.
        r = queries[None] * sw_tokens[:, :, None] + queries[None] * cw[:, None, :]
        grid = r.permute(0, 2, 1).reshape(b, self.ratio * d, gh, gw)
        out = self.adaptor(grid)
        if record is not None:
            record.update(
                sar_channel_weight=cw, sar_spatial_weight=sw, sar_pre_mgg=grid, sar_mgg_out=out
            )
        return out
