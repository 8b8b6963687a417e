"""UniAS: frozen backbone -> blurred targets -> pixel decoder -> predictor -> reconstructions.

Public level order is res1 (finest) .. res4; the decoder works coarse to fine
(L0 = res4 .. L3 = res1) internally, as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeas.config import EdgeasConfig, ModelConfig
from edgeas.train.model.layers import GaussianBlur
from edgeas.train.model.pixel_decoder import PixelDecoder
from edgeas.train.model.predictor import Predictor

COS_EPS = 1e-8


@dataclass
class UniASOutput:
    """Per level, res1..res4: reconstruction r, target t and distance map 1 - cos(r, t)."""

    recons: list[Tensor]
    targets: list[Tensor]
    dists: list[Tensor]  # (B, h, w)
    knn: Tensor | None = None  # (B, h3, w3): the decision head's distances, when it has one


def distance_map(recon: Tensor, target: Tensor) -> Tensor:
    return 1 - F.cosine_similarity(recon, target, dim=1, eps=COS_EPS)


def reconstruction_loss(out: UniASOutput, weight: float) -> Tensor:
    """weight * sum over levels of MSE(r, t) + mean(1 - cos(r, t)) (the corrected sign)."""
    total = out.recons[0].new_zeros(())
    for r, t, d in zip(out.recons, out.targets, out.dists):
        total = total + F.mse_loss(r, t) + d.mean()
    return weight * total


class UniASDecoder(nn.Module):
    """Everything after the backbone. Its parameter names match the official `sem_seg_head`."""

    def __init__(
        self,
        cfg: ModelConfig,
        channels: list[int],
        level_sizes: list[tuple[int, int]],
        grid: tuple[int, int],
    ) -> None:
        """`channels` and `level_sizes` of the backbone taps res1..res4."""
        super().__init__()
        self.cfg = cfg
        self.blur = GaussianBlur(cfg.feature_blur_kernel, cfg.feature_blur_sigma)
        self.pixel_decoder = PixelDecoder(
            [2 * c for c in channels],
            cfg.conv_dim,
            grid,
            cfg.heads,
            cfg.pixel_ffn_dim,
            cfg.encoder_layers,
            cfg.dropout,
            cfg.group_norm_groups,
            cfg.pixel_fine_dims,
        )
        self.predictor = Predictor(
            cfg,
            cfg.conv_dim,
            grid,
            list(reversed(level_sizes)),
            list(reversed(channels)),
            list(reversed(self.pixel_decoder.dims)),
        )

    def jitter(self, x: Tensor) -> Tensor:
        """Training-time feature jitter: one coin flip per level and batch."""
        cfg = self.cfg
        if cfg.jitter_scale <= 0 or torch.rand(()) >= cfg.jitter_prob:
            return x
        scale = x.norm(dim=1, keepdim=True) / x.shape[1] * cfg.jitter_scale
        return x + torch.randn_like(x) * scale

    def forward(self, feats: list[Tensor], record: dict | None = None) -> UniASOutput:
        """`feats`: raw backbone features res1..res4."""
        targets = [self.blur(f) for f in feats]
        inputs = [torch.cat([t, f - t], dim=1) for f, t in zip(feats, targets)]
        if record is not None:
            record.update({f"target_res{i + 1}": t for i, t in enumerate(targets)})
            record.update({f"decoder_in_res{i + 1}": x for i, x in enumerate(inputs)})
        return self.decode(targets, inputs, record)

    def decode(
        self, targets: list[Tensor], inputs: list[Tensor], record: dict | None = None
    ) -> UniASOutput:
        """From targets and decoder inputs (cat[t, f - t]) of res1..res4 to the output."""
        if self.training:
            inputs = [self.jitter(x) for x in inputs]
        pixel_maps = self.pixel_decoder(inputs, record)  # P0 (res4) .. P3 (res1)
        recons = list(reversed(self.predictor(pixel_maps, record)))
        dists = [distance_map(r, t) for r, t in zip(recons, targets)]
        if record is not None:
            record.update({f"pixdec_out_L{i}": p for i, p in enumerate(pixel_maps)})
        return UniASOutput(recons, targets, dists)


class UniAS(nn.Module):
    """The whole model: `forward(image)` takes normalised images (B, 3, H, W)."""

    def __init__(self, cfg: EdgeasConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        h, w = cfg.input_size
        sizes = [(h // s, w // s) for s in backbone.strides]
        self.decoder = UniASDecoder(cfg.model, list(backbone.channels), sizes, cfg.grid)
        self.knn: nn.Module | None = None  # the decision head, attached after training

    def attach_bank(self, bank: Tensor) -> None:
        """Give the model its nearest-neighbour decision head (train/memory_bank.py):
        `bank` (M, C) normal patches; stored in the state dict as `knn.bank`."""
        from edgeas.train.memory_bank import NearestPatchHead

        self.knn = NearestPatchHead(bank).to(next(self.decoder.parameters()).device)

    @property
    def head_stride(self) -> int:
        from edgeas.train.memory_bank import TAPS

        return int(self.backbone.strides[TAPS[0]])

    def forward(self, image: Tensor) -> UniASOutput:
        with torch.no_grad():
            feats = self.backbone(image)
        out = self.decoder(feats)
        if self.knn is not None and not self.training:
            with torch.no_grad():
                out.knn = self.knn(feats)
        return out

    def loss(self, out: UniASOutput) -> Tensor:
        return reconstruction_loss(out, self.cfg.model.loss_weight)


def build_model(cfg: EdgeasConfig, pretrained: bool | None = None) -> UniAS:
    """Build the backbone named by the config (weights as configured) and the decoder."""
    from edgeas.train.backbones import build_backbone

    b = cfg.backbone
    backbone = build_backbone(
        b.name,
        pretrained=b.pretrained if pretrained is None else pretrained,
        weights=b.weights,
        reference_padding=b.reference_padding,
    )
    return UniAS(cfg, backbone)
