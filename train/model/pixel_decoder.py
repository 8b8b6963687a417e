"""Mask2Former's transformer-encoder FPN ("pixel decoder") as UniAS uses it."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from edgeas.train.model.layers import ConvNorm, EncoderLayer, sine_position_encoding


class _Encoder(nn.Module):
    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _Transformer(nn.Module):
    # Only exists so that parameter names match the official `transformer.encoder.layers.N`.
    def __init__(self, encoder: _Encoder) -> None:
        super().__init__()
        self.encoder = encoder


class PixelDecoder(nn.Module):
    """Coarse-to-fine FPN over decoder inputs res1..res4; returns P0 (res4) .. P3 (res1).

    `in_channels` are the decoder-input widths of res1..res4 (2C each: the blurred
    feature and its high-pass residual). `fine_dims` (edge option) are the widths of
    res1..res3; empty means conv_dim at every level (the reference). Where a level is
    narrower than the one above it, `reduce_k` (1x1, no bias) maps the coarser output
    to its width before the upsampling: the two commute, so it runs at the coarse size.
    """

    def __init__(
        self,
        in_channels: list[int],
        conv_dim: int,
        grid: tuple[int, int],
        heads: int,
        ffn_dim: int,
        layers: int,
        dropout: float,
        gn_groups: int,
        fine_dims: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.dims = [*(fine_dims or [conv_dim] * 3), conv_dim]  # res1..res4
        # Lateral (adapter_k) and output (layer_k) convs of res1..res3, named like the reference.
        for k in (1, 2, 3):
            w = self.dims[k - 1]
            self.add_module(
                f"adapter_{k}", ConvNorm(in_channels[k - 1], w, 1, gn_groups, False, False)
            )
            self.add_module(f"layer_{k}", ConvNorm(w, w, 3, gn_groups, True, False))
            if self.dims[k] != w:
                self.add_module(f"reduce_{k}", nn.Conv2d(self.dims[k], w, 1, bias=False))
        self.input_proj = nn.Conv2d(in_channels[3], conv_dim, 1)
        self.transformer = _Transformer(
            _Encoder([EncoderLayer(conv_dim, heads, ffn_dim, dropout) for _ in range(layers)])
        )
        self.layer_4 = ConvNorm(conv_dim, conv_dim, 3, None, True, False)
        pos = sine_position_encoding(grid[0], grid[1], conv_dim).flatten(1).T[:, None, :]
        self.register_buffer("pos", pos, persistent=False)  # (N, 1, D): added to q and k only

    def forward(self, inputs: list[Tensor], record: dict | None = None) -> list[Tensor]:
        top = self.input_proj(inputs[3])
        b, d, h, w = top.shape
        x = top.flatten(2).permute(2, 0, 1)
        for i, layer in enumerate(self.transformer.encoder.layers):
            x = layer(x, self.pos)
            if record is not None:
                record[f"pixdec_enc_layer{i}"] = x
        encoded = x.permute(1, 2, 0).reshape(b, d, h, w)
        out = self.layer_4(encoded)
        if record is not None:
            record.update(
                pixdec_input_proj=top,
                pixdec_trans_enc=encoded,
                pixdec_pos=self.pos[:, 0].T.reshape(1, d, h, w).expand(b, -1, -1, -1),
            )
        outputs = [out]
        for k in (3, 2, 1):
            lateral = getattr(self, f"adapter_{k}")(inputs[k - 1])
            reduce = getattr(self, f"reduce_{k}", None)
            if reduce is not None:
                out = reduce(out)
            up = F.interpolate(out, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            out = getattr(self, f"layer_{k}")(lateral + up)
            outputs.append(out)
        return outputs
