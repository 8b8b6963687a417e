"""The official UniAS code's configuration and checkpoints, translated to edgeas.

Official decoder keys live under `sem_seg_head.` (DDP adds `module.`); edgeas's
decoder registers the same names under `decoder.`, so weights map by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeas.config import EdgeasConfig, config_from_dict
from edgeas.errors import ArtifactError, ConfigError

OFFICIAL_PREFIX = "sem_seg_head."
BACKBONE_NAMES = {"EfficientnetB4": "efficientnet_b4"}


def _get(cfg: dict[str, Any], path: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def official_to_config(model_cfg: dict[str, Any], source: str) -> EdgeasConfig:
    """Translate the official `cfg.MODEL` (a nested dict) into an edgeas config.

    Only the reference architecture is supported; any other choice of layer names,
    norms or orders is an error naming the official key.
    """
    expected = {
        "MASK_FORMER.ATTN.NAME": "SpaticalNChannelAttn",
        "MASK_FORMER.ATTN.pre_norm": False,
        "MASK_FORMER.ATTN.cross_first": True,
        "MASK_FORMER.QUERY.PROCESSOR.NAME": "LinCombWeightedQuery",
        "MASK_FORMER.QUERY.FEATURE_PROJECTOR.NAME": "1Conv3x3",
        "MASK_FORMER.ADAPTOR.NAME": "MGG_CNN",
        "SEM_SEG_HEAD.PIXEL_DECODER_NAME": "TransformerEncoderPixelDecoder",
        "SEM_SEG_HEAD.NORM": "GN",
        "SEM_SEG_HEAD.PRE_NORM": False,
        "SEM_SEG_HEAD.ENCODER_MASK": False,
    }
    for key, want in expected.items():
        got = _get(model_cfg, key, want)
        if got != want:
            raise ConfigError(f"{source}: MODEL.{key} = {got!r}; edgeas implements only {want!r}")
    hidden = _get(model_cfg, "MASK_FORMER.HIDDEN_DIM", 256)
    for key in (
        "QUERY.PROCESSOR.hidden_dim",
        "QUERY.FEATURE_PROJECTOR.hidden_dim",
        "ADAPTOR.hidden_dim",
    ):
        if _get(model_cfg, f"MASK_FORMER.{key}", hidden) != hidden:
            raise ConfigError(f"{source}: MODEL.MASK_FORMER.{key} differs from HIDDEN_DIM")
    heads = _get(model_cfg, "SEM_SEG_HEAD.NHEADS", 4)
    if _get(model_cfg, "MASK_FORMER.ATTN.num_heads", heads) != heads:
        raise ConfigError(f"{source}: different head counts in the pixel decoder and the blocks")
    mask_flags = list(_get(model_cfg, "MASK_FORMER.NEIGHBOR_MASK.MASK", [False, True, True]))
    if mask_flags not in ([False, True, True], [False, False, False]):
        raise ConfigError(
            f"{source}: MODEL.MASK_FORMER.NEIGHBOR_MASK.MASK = {mask_flags}; edgeas masks both "
            "spatial attentions or none"
        )
    backbone = _get(model_cfg, "BACKBONE.NAME", "EfficientnetB4")
    if backbone not in BACKBONE_NAMES:
        raise ConfigError(f"{source}: MODEL.BACKBONE.NAME {backbone!r} is not supported")
    levels = _get(model_cfg, "SEM_SEG_HEAD.IN_FEATURES", ["res1", "res2", "res3", "res4"])
    if list(levels) != ["res1", "res2", "res3", "res4"]:
        raise ConfigError(f"{source}: MODEL.SEM_SEG_HEAD.IN_FEATURES must be res1..res4")
    pool = int(_get(model_cfg, "BACKBONE.EFFICIENTNET.FEATURE_POOL_SIZE", 3))
    data = {
        "input_size": list(_get(model_cfg, "INPUT_SIZE", [224, 224])),
        "backbone": {
            "name": BACKBONE_NAMES[backbone],
            "pretrained": False,
            "reference_padding": True,
        },
        "model": {
            "hidden_dim": hidden,
            "conv_dim": _get(model_cfg, "SEM_SEG_HEAD.CONV_DIM", 256),
            "mask_dim": _get(model_cfg, "MASK_FORMER.MASK_DIM", 256),
            "ffn_dim": _get(model_cfg, "MASK_FORMER.ATTN.dim_feedforward", 2048),
            "pixel_ffn_dim": _get(model_cfg, "SEM_SEG_HEAD.DIM_FEEDFORWARD", 2048),
            "heads": heads,
            "encoder_layers": _get(model_cfg, "SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 3),
            "dropout": float(_get(model_cfg, "SEM_SEG_HEAD.DROPOUT", 0.1)),
            "group_norm_groups": 32,
            "neighbor_size": list(
                _get(model_cfg, "MASK_FORMER.NEIGHBOR_MASK.NEIGHBOR_SIZE", [7, 7])
            ),
            "neighbor_mask": mask_flags[1],
            "query_ratio": _get(model_cfg, "MASK_FORMER.QUERY.PROCESSOR.base_ratio", 2),
            "feature_blur_kernel": pool,
            "feature_blur_sigma": 1.0,
            "jitter_scale": float(
                _get(model_cfg, "BACKBONE.EFFICIENTNET.FEATURE_JITTER_SCALE", 20)
            ),
            "jitter_prob": float(_get(model_cfg, "BACKBONE.EFFICIENTNET.FEATURE_JITTER_PROB", 0.5)),
            "loss_weight": float(_get(model_cfg, "CRITERION.RECON_LOSS.weight", 10)),
        },
    }
    return config_from_dict(data, source)


def strip_official_prefix(state: dict[str, Any], source: str) -> tuple[dict, dict]:
    """Split an official state dict into (decoder keys without prefix, backbone keys)."""
    decoder, backbone = {}, {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name.startswith(OFFICIAL_PREFIX):
            decoder[name[len(OFFICIAL_PREFIX) :]] = value
        elif name.startswith("backbone."):
            backbone[name[len("backbone.") :]] = value
    if not decoder:
        raise ArtifactError(f"{source}: no '{OFFICIAL_PREFIX}*' keys: not an official UniAS state")
    return decoder, backbone


def load_decoder_state(decoder, state: dict[str, Any], source: str) -> None:
    """Load official decoder weights by name; every key must match in name and shape."""
    import torch

    own = decoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ArtifactError(
            f"{source}: decoder keys do not match the configuration "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    for key, value in state.items():
        tensor = torch.as_tensor(np.asarray(value)) if not torch.is_tensor(value) else value
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ArtifactError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(own[key].shape)}",
                hint="models are built for one input size and width; check input_size and dims",
            )
        own[key].copy_(tensor)


def channels_from_state(state: dict[str, Any]) -> list[int]:
    """Backbone channels res1..res4 from the heads' last convs (out_agg.3 is res1)."""
    out = []
    for level in (3, 2, 1, 0):
        key = f"predictor.out_agg.{level}.3.weight"
        if key not in state:
            raise ArtifactError(f"state dict lacks {key}")
        out.append(int(np.asarray(state[key]).shape[0]))
    return out


def import_official_command(
    checkpoint: Path,
    output: Path,
    data: Path | None,
    backbone_weights: Path | None,
    reference_padding: bool,
) -> None:
    from edgeas.train.import_official import import_official

    import_official(checkpoint, output, data, backbone_weights, reference_padding)
