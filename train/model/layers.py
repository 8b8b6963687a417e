"""Building blocks of UniAS shared by the pixel decoder and the predictor.

Module and attribute names follow the official UniAS code so that its
checkpoints map onto these modules by name (see edgeas.train.official).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gaussian_kernel1d(kernel: int, sigma: float) -> Tensor:
    offsets = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return (weights / weights.sum()).float()


class GaussianBlur(nn.Module):
    """Separable, normalised Gaussian with mirror ('reflect') borders, per channel."""

    def __init__(self, kernel: int, sigma: float) -> None:
        super().__init__()
        self.pad = kernel // 2
        self.register_buffer("weight", gaussian_kernel1d(kernel, sigma), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        k = self.weight.numel()
        x = F.pad(x, (self.pad, self.pad, self.pad, self.pad), mode="reflect")
        x = F.conv2d(x, self.weight.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
        return F.conv2d(x, self.weight.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def sine_position_encoding(height: int, width: int, dim: int) -> Tensor:
    """DETR's normalised 2-D sine encoding, (dim, H, W): dim/2 channels for y, then x.

    Within each half, channel 2i is sin(e / T^(2i/(dim/2))) and 2i+1 the matching cos,
    with e the 1-based row (column) index scaled to (0, 2*pi].
    """
    feats = dim // 2
    eps, scale, temperature = 1e-6, 2 * math.pi, 10000.0
    y = torch.arange(1, height + 1, dtype=torch.float32)[:, None].expand(height, width)
    x = torch.arange(1, width + 1, dtype=torch.float32)[None, :].expand(height, width)
    y = y / (height + eps) * scale
    x = x / (width + eps) * scale
    dim_t = torch.arange(feats, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / feats)
    pos_x = x[:, :, None] / dim_t
    pos_y = y[:, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
    pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).contiguous()


def neighbor_mask(grid: tuple[int, int], window: list[int]) -> Tensor:
    """(N, N) bool, True = blocked: a query may not attend inside its own window."""
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near_y = (ys[:, None] - ys[None, :]).abs() <= window[0] // 2
    near_x = (xs[:, None] - xs[None, :]).abs() <= window[1] // 2
    return near_y & near_x


class ConvNorm(nn.Conv2d):
    """Conv with an optional GroupNorm child named `norm` and an optional ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: int, groups_norm: int | None, relu: bool, bias: bool
    ) -> None:
        super().__init__(cin, cout, kernel, padding=kernel // 2, bias=bias)
        self.norm = nn.GroupNorm(groups_norm, cout) if groups_norm else None
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


def conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


class SeparableConv3x3(nn.Sequential):
    """Depthwise 3x3 (no bias) then pointwise 1x1 (with bias): 9*cin + cin*cout MACs per
    pixel instead of 9*cin*cout, the same receptive field as the 3x3 it replaces."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1)
        )


class MGGCNN(nn.Module):
    """Multi-granularity conv block: four branches of 1, 1, 2 and 3 convolutions, GELU'd, summed.

    `depthwise` swaps every 3x3 for a SeparableConv3x3 (edge option): the branches keep
    their 1/3/5/7-cell receptive fields at about 1/7 of the cost at width 256.
    """

    def __init__(self, cin: int, hidden: int, cout: int, depthwise: bool = False) -> None:
        super().__init__()
        c3 = SeparableConv3x3 if depthwise else conv3x3
        self.conv0 = nn.Conv2d(cin, cout, 1)
        self.conv1 = c3(cin, cout)
        self.conv2 = nn.Sequential(c3(cin, hidden), c3(hidden, cout))
        self.conv3 = nn.Sequential(c3(cin, hidden), c3(hidden, hidden), c3(hidden, cout))

    def forward(self, x: Tensor) -> Tensor:
        return (
            F.gelu(self.conv0(x))
            + F.gelu(self.conv1(x))
            + F.gelu(self.conv2(x))
            + F.gelu(self.conv3(x))
        )


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class CrossAttnLayer(nn.Module):
    """Post-norm cross-attention: LN(q + MHA(q + qpos, mem + pos, mem))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        out = self.multihead_attn(
            _with_pos(tgt, query_pos),
            _with_pos(memory, pos),
            memory,
            attn_mask=mask,
            need_weights=False,
        )[0]
        return self.norm(tgt + self.dropout(out))


class SelfAttnLayer(nn.Module):
    """Post-norm self-attention: LN(x + MHA(x + qpos, x + qpos, x))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, tgt: Tensor, query_pos: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        q = _with_pos(tgt, query_pos)
        out = self.self_attn(q, q, tgt, attn_mask=mask, need_weights=False)[0]
        return self.norm(tgt + self.dropout(out))


class FFNLayer(nn.Module):
    """Post-norm feed-forward: LN(x + W2 ReLU(W1 x))."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: Tensor) -> Tensor:
        out = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm(tgt + self.dropout(out))


class EncoderLayer(nn.Module):
    """DETR post-norm encoder layer (self-attention with q = k = x + pos, then FFN)."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        q = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, q, src, need_weights=False)[0]))
        out = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(out))
