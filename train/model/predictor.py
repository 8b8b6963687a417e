"""The UniAS predictor: decoder memory, SAR queries, spatial+channel blocks, MGG-CNN, heads."""

from __future__ import annotations

from torch import Tensor, nn

from edgeas.config import ModelConfig
from edgeas.train.model.heads import build_head
from edgeas.train.model.layers import (
    MGGCNN,
    CrossAttnLayer,
    FFNLayer,
    SelfAttnLayer,
    conv3x3,
    neighbor_mask,
    sine_position_encoding,
)
from edgeas.train.model.sar import QueryProcessor


class PatchEmbed(nn.Module):
    def __init__(self, cin: int, cout: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class SpatialChannelBlock(nn.Module):
    """Spatial branch (cross, self, FFN over N tokens of width D) plus channel branch
    (the same over D tokens of width N), run on the same query and summed."""

    def __init__(self, cfg: ModelConfig, tokens: int, channel: bool) -> None:
        super().__init__()
        d, heads, drop = cfg.hidden_dim, cfg.heads, cfg.dropout
        # Registration order follows the reference (self-attention first) so that
        # state dicts list keys in the same order; execution is cross-first.
        self.SpatialSelfAttnLayer = SelfAttnLayer(d, heads, drop)
        self.channel = channel
        if channel:
            self.ChannelSelfAttnLayer = SelfAttnLayer(tokens, heads, drop)
        self.SpatialCrossAttnLayer = CrossAttnLayer(d, heads, drop)
        if channel:
            self.ChannelCrossAttnLayer = CrossAttnLayer(tokens, heads, drop)
        self.SpatialFFNLayer = FFNLayer(d, cfg.ffn_dim, drop)
        if channel:
            self.ChannelFFNLayer = FFNLayer(tokens, cfg.ffn_dim, drop)

    def forward(
        self,
        q: Tensor,
        src: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        mask: Tensor | None,
        record: dict | None = None,
        tag: str = "",
    ) -> Tensor:
        s = self.SpatialCrossAttnLayer(q, src, pos=pos, query_pos=query_pos, mask=mask)
        s1 = self.SpatialSelfAttnLayer(s, query_pos=query_pos, mask=mask)
        s2 = self.SpatialFFNLayer(s1)
        if record is not None:
            record.update(
                {
                    f"blk_{tag}_SpatialCrossAttnLayer": s,
                    f"blk_{tag}_SpatialSelfAttnLayer": s1,
                    f"blk_{tag}_SpatialFFNLayer": s2,
                }
            )
        if not self.channel:
            return s2
        c = self.ChannelCrossAttnLayer(
            q.permute(2, 1, 0), src.permute(2, 1, 0), pos=pos.permute(2, 1, 0)
        )
        c1 = self.ChannelSelfAttnLayer(c)
        c2 = self.ChannelFFNLayer(c1)
        if record is not None:
            record.update(
                {
                    f"blk_{tag}_ChannelCrossAttnLayer": c,
                    f"blk_{tag}_ChannelSelfAttnLayer": c1,
                    f"blk_{tag}_ChannelFFNLayer": c2,
                }
            )
        return s2 + c2.permute(2, 1, 0)


class Predictor(nn.Module):
    """Turns the pixel-decoder maps P0..P3 (res4..res1) into reconstructions of res4..res1."""

    def __init__(
        self,
        cfg: ModelConfig,
        conv_dim: int,
        grid: tuple[int, int],
        level_sizes: list[tuple[int, int]],
        out_channels: list[int],
        pixel_dims: list[int] | None = None,
    ) -> None:
        """`level_sizes`, `out_channels` and `pixel_dims` (the pixel decoder's width per
        level; default conv_dim everywhere) are in processing order (res4 first)."""
        super().__init__()
        d = cfg.hidden_dim
        tokens = grid[0] * grid[1]
        self.grid = grid
        pixel_dims = pixel_dims or [conv_dim] * len(level_sizes)
        patches = [size[0] // grid[0] for size in level_sizes]
        # Level 0 keeps the pixel decoder's width; finer levels widen by half of D per step.
        embed_dims = [conv_dim] + [d + d * i // 2 for i in range(len(level_sizes) - 1)]
        self.patch_embed = nn.ModuleList(
            [nn.Identity()]
            + [
                PatchEmbed(pixel_dims[i], embed_dims[i], patches[i])
                for i in range(1, len(patches))
            ]
        )
        self.transformer_block = nn.ModuleList(
            SpatialChannelBlock(cfg, tokens, cfg.channel_attention) for _ in level_sizes
        )
        self.spatial_query_feat = nn.Embedding(cfg.query_ratio * tokens, d)
        self.spatial_query_embed = nn.Embedding(tokens, d)
        self.feature_projector = conv3x3(conv_dim, d)
        self.query_processor = QueryProcessor(d, cfg.query_ratio, cfg.mgg_depthwise)
        self.level_embed_src = nn.Embedding(len(level_sizes), d)
        self.input_proj = nn.ModuleList(nn.Conv2d(e, d, 1) for e in embed_dims)
        self.layer_adaptors = nn.ModuleList(
            MGGCNN(d, d, d, cfg.mgg_depthwise) for _ in level_sizes
        )
        self.decoder_norm = nn.LayerNorm(d)
        self.out_agg = nn.ModuleList(
            build_head(cfg.head, d, cfg.mask_dim, cout, size, patch)
            for size, cout, patch in zip(level_sizes, out_channels, patches)
        )
        pos = sine_position_encoding(grid[0], grid[1], d).flatten(1).T[:, None, :]
        self.register_buffer("pos", pos, persistent=False)  # (N, 1, D)
        mask = neighbor_mask(grid, cfg.neighbor_size) if cfg.neighbor_mask else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, pixel_maps: list[Tensor], record: dict | None = None) -> list[Tensor]:
        b = pixel_maps[0].shape[0]
        gh, gw = self.grid
        pos = self.pos.expand(-1, b, -1)
        query_pos = self.spatial_query_embed.weight[:, None, :].expand(-1, b, -1)
        srcs = []
        for i, p in enumerate(pixel_maps):
            embedded = self.patch_embed[i](p)
            proj = self.input_proj[i](embedded)
            if record is not None:
                record[f"src_proj_L{i}"] = proj
                if i > 0:
                    record[f"patch_embed_L{i}"] = embedded
            srcs.append(proj.flatten(2).permute(2, 0, 1) + self.level_embed_src.weight[i])
        g = self.feature_projector(pixel_maps[0])
        q_grid = self.query_processor(g, self.spatial_query_feat.weight, record)
        q = q_grid.flatten(2).permute(2, 0, 1)
        if record is not None:
            record.update(pos_dec=pos, sar_feature_proj=g, q0=q)
            record.update({f"src_L{i}": s for i, s in enumerate(srcs)})
        recons = []
        for i, block in enumerate(self.transformer_block):
            out = block(q, srcs[i], pos, query_pos, self.attn_mask, record, f"L{i}")
            q_grid = self.layer_adaptors[i](out.permute(1, 2, 0).reshape(b, -1, gh, gw))
            q = q_grid.flatten(2).permute(2, 0, 1)
            normed = self.decoder_norm(q)
            recons.append(self.out_agg[i](normed.permute(1, 2, 0).reshape(b, -1, gh, gw)))
            if record is not None:
                record.update(
                    {f"q_block_L{i}": out, f"q_mgg_L{i}": q_grid, f"decoder_norm_L{i}": normed}
                )
        return recons


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
