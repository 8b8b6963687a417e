"""`edgeas import-official`: a checkpoint of the official UniAS code -> an edgeas checkpoint.

What maps how:
- decoder: `sem_seg_head.*` (DDP: `module.sem_seg_head.*`) -> `decoder.*`, by name;
- backbone: `backbone.*` in the EfficientNet-PyTorch layout, when the checkpoint has it,
  otherwise the B4 weights file named with --backbone-weights (the official code's
  `efficientnet-b4-6ed6700e.pth`), mapped by order onto timm's tf_efficientnet_b4;
- architecture: widths, FFN sizes, layer counts and the input size are read from the
  tensor shapes; head count (4) and neighbour window (7x7) are not visible in shapes and
  take the reference values;
- padding: the official B4 pads for 380 px inputs even at 224; its decoder was trained
  on those features, so the imported backbone pads the same way unless told otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeas.config import EdgeasConfig, config_from_dict
from edgeas.errors import ArtifactError, ConfigError

console = Console(stderr=True)
STATE_KEYS = ("state_dict", "model", "model_state_dict")


def _unwrap(data: Any, source: str) -> dict[str, Any]:
    if isinstance(data, dict):
        for key in STATE_KEYS:
            if isinstance(data.get(key), dict):
                return data[key]
        if any(isinstance(k, str) and "sem_seg_head." in k for k in data):
            return data
    raise ArtifactError(f"{source}: no state dict found (looked for {', '.join(STATE_KEYS)})")


def config_from_shapes(
    decoder: dict[str, Any], source: str, reference_padding: bool, backbone_weights: str | None
) -> EdgeasConfig:
    """Infer the decoder's hyper-parameters from its tensors."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in decoder:
            raise ArtifactError(f"{source}: official key sem_seg_head.{key} is missing")
        return tuple(decoder[key].shape)

    tokens, hidden = shape("predictor.spatial_query_embed.weight")
    grid = int(round(tokens**0.5))
    if grid * grid != tokens:
        raise ArtifactError(f"{source}: {tokens} query tokens is not a square grid")
    layers = {
        int(m.group(1))
        for k in decoder
        if (m := re.match(r"pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.", k))
    }
    data = {
        "preset": "unias-b4",
        "input_size": [grid * 16, grid * 16],
        "backbone": {
            "name": "efficientnet_b4",
            "pretrained": backbone_weights is not None,
            "weights": backbone_weights,
            "reference_padding": reference_padding,
        },
        "model": {
            "hidden_dim": hidden,
            "conv_dim": shape("pixel_decoder.input_proj.weight")[0],
            "mask_dim": shape("predictor.out_agg.0.1.weight")[0],
            "ffn_dim": shape("predictor.transformer_block.0.SpatialFFNLayer.linear1.weight")[0],
            "pixel_ffn_dim": shape("pixel_decoder.transformer.encoder.layers.0.linear1.weight")[0],
            "encoder_layers": len(layers),
            "query_ratio": shape("predictor.spatial_query_feat.weight")[0] // tokens,
            "channel_attention": any("ChannelSelfAttnLayer" in k for k in decoder),
        },
    }
    return config_from_dict(data, f"{source} (inferred)")


def import_official(
    checkpoint: Path,
    output: Path,
    data: Path | None,
    backbone_weights: Path | None,
    reference_padding: bool = True,
) -> dict[str, Any]:
    import torch

    from edgeas.train.backbones import load_efficientnet_pytorch_state
    from edgeas.train.checkpoint import checkpoint_payload, model_recipe, save_checkpoint
    from edgeas.train.model.unias import build_model
    from edgeas.train.official import load_decoder_state, strip_official_prefix
    from edgeas.train.run import fit_thresholds

    source = str(checkpoint)
    try:
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"checkpoint not found: {checkpoint}") from exc
    except Exception as exc:  # unpickling errors come in several types
        raise ArtifactError(
            f"{source}: refused or unreadable with weights_only=True ({str(exc).splitlines()[0]})",
            hint="save just the state dict with the official code: "
            "torch.save(ckpt['state_dict'], 'state.pth')",
        ) from exc
    decoder_state, backbone_state = strip_official_prefix(_unwrap(raw, source), source)
    if not backbone_state and backbone_weights is None:
        raise ConfigError(
            f"{source} holds no backbone weights",
            hint="name the official EfficientNet-B4 weights: --backbone-weights "
            "efficientnet-b4-6ed6700e.pth",
        )
    weights = str(backbone_weights) if backbone_weights and not backbone_state else None
    cfg = config_from_shapes(decoder_state, source, reference_padding, weights)
    model = build_model(cfg, pretrained=weights is not None)
    if backbone_state:
        load_efficientnet_pytorch_state(model.backbone, backbone_state, f"{source} backbone.*")
    load_decoder_state(model.decoder, decoder_state, source)
    model.eval()
    recipe = model_recipe(cfg, model)
    threshold = None  # unset unless fitted on --data below
    classes: list[str] = []
    fingerprint = None
    if data is not None:
        from edgeas.train.data import data_fingerprint, index_dataset, split_train_val
        from edgeas.train.datasets import TrainImages

        index = index_dataset(data)
        classes, fingerprint = index.classes, data_fingerprint(index)
        _, val = split_train_val(index.train, cfg.train.val_fraction, cfg.train.seed)
        val_set = TrainImages(val, recipe, None, classes, seed=cfg.train.seed)
        threshold = fit_thresholds(cfg, model, val_set, torch.device("cpu"))
    payload = checkpoint_payload(cfg, model, classes, fingerprint, threshold)
    payload["model"] = model.state_dict()
    payload["imported_from"] = {
        "file": Path(checkpoint).name,
        "reference_padding": reference_padding,
    }
    save_checkpoint(output, payload)
    value = None if threshold is None else threshold.value
    fitted = "unset (the runtime will require --threshold)" if value is None else (
        f"{value:.5f} ({threshold.policy} {threshold.param:g}, min_area {threshold.min_area}, "
        f"{threshold.images} held-out images)")
    console.print(
        f"imported {source}: decoder width {cfg.model.hidden_dim}, input {cfg.input_size}, "
        f"B4 padding {'official (380 px)' if reference_padding else 'TF-same'}; threshold "
        f"{fitted}; wrote {output}"
    )
    return payload
