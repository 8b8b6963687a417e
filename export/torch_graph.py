"""The torch module that is exported: UniAS without its training parts, plus the optional
reference aggregation (protocol.md sections 2-3).

Nothing here changes the model: `ExportGraph` calls the model's own backbone and
decoder and only replaces how the feature blur is *expressed* (see `ExportBlur`),
which `edgeas.export.onnx_export` proves equal to `model(image)` with ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeas.interp import gaussian_kernel1d

DIST_OUTPUTS = ("dist_res1", "dist_res2", "dist_res3", "dist_res4")
HEAD_OUTPUT = "knn_dist"  # the decision head's distance grid (edgeas.decision_head)
MAP_OUTPUTS = ("anomaly_map", "score")


class ExportBlur(nn.Module):
    """The model's per-channel Gaussian blur with its kernels stored per channel count.

    `GaussianBlur` expands its 1-D kernel to `x.shape[1]` channels at run time. The
    TorchScript ONNX exporter traces that channel count as a dynamic value and then
    refuses the convolution ("kernel of unknown shape"); here the expanded kernels
    are constants, one pair per backbone level. Same padding, same convolutions, same
    weights, so the arithmetic is the same.
    """

    def __init__(self, blur: nn.Module, channels: Sequence[int]) -> None:
        super().__init__()
        self.pad = int(blur.pad)
        k = blur.weight.numel()
        w = blur.weight.detach().float()
        for c in sorted(set(int(c) for c in channels)):
            self.register_buffer(f"h{c}", w.view(1, 1, 1, k).expand(c, 1, 1, k).clone())
            self.register_buffer(f"v{c}", w.view(1, 1, k, 1).expand(c, 1, k, 1).clone())

    def forward(self, x: Tensor) -> Tensor:
        c = int(x.shape[1])  # static: the channel count of a level never varies
        p = self.pad
        x = F.pad(x, (p, p, p, p), mode="reflect")
        x = F.conv2d(x, getattr(self, f"h{c}"), groups=c)
        return F.conv2d(x, getattr(self, f"v{c}"), groups=c)


class ReferenceAggregation(nn.Module):
    """`reference` mode of protocol.md section 3 in torch, for the `--with-map` outputs.

    Resize res2..res4 to the finest level's size (bilinear, half-pixel), blur each
    level with its own Gaussian (reflect border), multiply in the official order
    ((res1 * res4) * res3) * res2, then bilinear align_corners=True to the input size.
    Kernels come from `edgeas.interp.gaussian_kernel1d` so that the graph and the
    numpy reference use the same float32 weights.
    """

    def __init__(
        self,
        level_sizes: Sequence[tuple[int, int]],
        out_hw: tuple[int, int],
        blur: Sequence[Sequence[float]],
        use: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if blur and len(blur) != len(level_sizes):
            raise ValueError(f"{len(blur)} blur pairs for {len(level_sizes)} levels")
        self.finest = tuple(int(v) for v in level_sizes[0])
        self.out_hw = tuple(int(v) for v in out_hw)
        # the level set: the product runs over these (finest first); () blur = no smoothing
        self.use = sorted(use) if use is not None else list(range(len(level_sizes)))
        self.pads = {i: int(blur[i][0]) // 2 for i in self.use} if blur else {}
        for i in self.pads:
            k, s = blur[i]
            g = torch.from_numpy(gaussian_kernel1d(int(k), float(s)).astype(np.float32))
            self.register_buffer(f"gh{i}", g.view(1, 1, 1, -1).clone())
            self.register_buffer(f"gv{i}", g.view(1, 1, -1, 1).clone())
        # the product order is part of the contract: the finest chosen level, then the
        # others coarse to fine (all four: ((res1 * res4) * res3) * res2)
        self.order = [self.use[0], *reversed(self.use[1:])]

    def forward(self, dists: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        post = {}
        for i in self.use:
            d = dists[i]
            if tuple(d.shape[-2:]) != self.finest:  # the official code leaves res1 as it is
                d = F.interpolate(d, size=self.finest, mode="bilinear", align_corners=False)
            if i in self.pads:
                p = self.pads[i]
                d = F.pad(d, (p, p, p, p), mode="reflect")
                d = F.conv2d(d, getattr(self, f"gh{i}"))
                d = F.conv2d(d, getattr(self, f"gv{i}"))
            post[i] = d
        product = post[self.order[0]]
        for i in self.order[1:]:
            product = product * post[i]
        amap = F.interpolate(product, size=self.out_hw, mode="bilinear", align_corners=True)
        return amap, amap.flatten(1).amax(dim=1)


class ExportGraph(nn.Module):
    """image (N,3,H,W) -> dist_res1..4 (N,1,h,w) [, knn_dist (N,1,h3,w3) when the model
    has a decision head] [, anomaly_map (N,1,H,W), score (N,)]."""

    def __init__(self, model: nn.Module, with_map: bool, blur: Sequence | None = None,
                 use: Sequence[int] | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        decoder = model.decoder
        self.blur = ExportBlur(decoder.blur, model.backbone.channels)
        self.post = None
        if with_map:
            h, w = model.cfg.input_size
            sizes = [(h // s, w // s) for s in model.backbone.strides]
            from edgeas.postprocess import OFFICIAL_BLUR

            self.post = ReferenceAggregation(sizes, (h, w),
                                             OFFICIAL_BLUR if blur is None else blur, use)

    @property
    def output_names(self) -> list[str]:
        head = [HEAD_OUTPUT] if getattr(self.model, "knn", None) is not None else []
        return list(DIST_OUTPUTS) + head + (list(MAP_OUTPUTS) if self.post is not None else [])

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        # UniAS.forward / UniASDecoder.forward, with the blur expressed as ExportBlur;
        # `decode` is the model's own (jitter and dropout are off in eval mode).
        feats = self.model.backbone(image)
        targets = [self.blur(f) for f in feats]
        inputs = [torch.cat([t, f - t], dim=1) for f, t in zip(feats, targets)]
        out = self.model.decoder.decode(targets, inputs)
        dists = [d[:, None] for d in out.dists]
        head = () if self.model.knn is None else (self.model.knn(feats)[:, None],)
        if self.post is None:
            return (*dists, *head)
        amap, score = self.post(dists)
        return (*dists, *head, amap, score)


def reference_outputs(
    model: nn.Module, images: np.ndarray, with_map: bool, blur: Sequence | None = None,
    use: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """What the exported graph must reproduce, computed with the unmodified `model(image)`."""
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        result = model(x)
        dists = [d[:, None] for d in result.dists]
        out = {name: d.numpy() for name, d in zip(DIST_OUTPUTS, dists)}
        if result.knn is not None:
            out[HEAD_OUTPUT] = result.knn[:, None].numpy()
        if with_map:
            h, w = model.cfg.input_size
            from edgeas.postprocess import OFFICIAL_BLUR

            sizes = [(h // s, w // s) for s in model.backbone.strides]
            amap, score = ReferenceAggregation(sizes, (h, w),
                                               OFFICIAL_BLUR if blur is None else blur, use)(dists)
            out.update(anomaly_map=amap.numpy(), score=score.numpy())
    return out
