"""Prediction heads: decoder tokens on the grid (B, D, gh, gw) -> reconstruction of one level.

`conv3` is the reference head. Its three 3x3 convolutions run at the level's full
resolution and width (mask_dim): at res1 (112x112, width 256) that is ~31 of the
reference decoder's ~81 GFLOPs. The edge heads do their width-D work on the 14x14
grid and touch full resolution only with C_level channels (16 to 160):

- `deconv` (the paper's cheap head): a transposed convolution with kernel = stride =
  the level's patch size unpatchifies each token into its own patch x patch block of
  C_level channels (a linear map per pixel of the block, so sub-token detail is
  representable), then a C_level 3x3 conv at full resolution lets neighbouring blocks
  exchange information across patch borders.
- `upsample`: a 1x1 conv D -> C_level on the grid, the reference's bilinear upsampling,
  then the same C_level 3x3 conv. Like the reference head its output is a smooth
  interpolation of token features (no sub-token detail), at a fraction of the cost.

Neither has activations, as the reference head has none: every head is a linear map
of the normalised tokens.
"""

from __future__ import annotations

from torch import nn

from edgeas.train.model.layers import conv3x3


def conv3_head(dim: int, mask_dim: int, cout: int, size: tuple[int, int]) -> nn.Sequential:
    """Reference: bilinear upsampling (align_corners=True), three 3x3 convs, no activations."""
    return nn.Sequential(
        nn.UpsamplingBilinear2d(size=tuple(size)),
        conv3x3(dim, mask_dim),
        conv3x3(mask_dim, mask_dim),
        conv3x3(mask_dim, cout),
    )


def deconv_head(dim: int, cout: int, patch: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(dim, cout, patch, stride=patch), conv3x3(cout, cout))


def upsample_head(dim: int, cout: int, size: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim, cout, 1), nn.UpsamplingBilinear2d(size=tuple(size)), conv3x3(cout, cout)
    )


def build_head(
    kind: str, dim: int, mask_dim: int, cout: int, size: tuple[int, int], patch: int
) -> nn.Sequential:
    """The head of one level: `size` its resolution, `patch` = size / token grid."""
    if kind == "conv3":
        return conv3_head(dim, mask_dim, cout, size)
    if kind == "deconv":
        return deconv_head(dim, cout, patch)
    if kind == "upsample":
        return upsample_head(dim, cout, size)
    raise ValueError(f"unknown head {kind!r}")  # config validation rejects it first
