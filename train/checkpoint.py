"""Checkpoints: one dict of tensors and plain values, written atomically, read with
`weights_only=True` so that a checkpoint from a stranger cannot run code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from edgeas.errors import ArtifactError, ConfigError
from edgeas.fileio import atomic_write_bytes

FORMAT = "edgeas-checkpoint"
SCHEMA = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Serialise in memory first, then rename into place: never a half-written file."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "schema": SCHEMA, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")  # a name the user typed: exit 2
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ArtifactError(
            f"{path}: refused to load: the file holds objects other than tensors and plain "
            f"values, which could run code ({str(exc).splitlines()[0]})",
            hint="only load checkpoints you trust with tools that allow code; edgeas does not",
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(
            f"{path}: not an edgeas checkpoint",
            hint="official UniAS checkpoints are converted with `edgeas import-official`",
        )
    if data.get("schema", 0) > SCHEMA:
        raise ArtifactError(f"{path}: checkpoint schema {data['schema']} is newer than this edgeas")
    return data


def model_recipe(cfg, model):
    """The preprocessing recipe of a built model: its input size and its backbone's
    normalisation (the one place training, import and export read it from)."""
    from edgeas.preprocess import Recipe

    return Recipe(tuple(cfg.input_size), tuple(model.backbone.mean), tuple(model.backbone.std))


def model_record(cfg, model, classes: list[str], fingerprint: str | None, threshold=None):
    """The ModelRecord of a trained, imported or untrained model; `threshold` None = unset
    (policy, parameter and mode taken from the config)."""
    from edgeas.postprocess import make_threshold, postprocessing
    from edgeas.record import DecisionHead, new_record

    if threshold is None:
        threshold = make_threshold(None, cfg.threshold.policy, cfg.threshold.param,
                                   cfg.aggregation.mode, min_area=cfg.threshold.min_area,
                                   margin=cfg.threshold.margin)
    return new_record(
        preset=cfg.preset,
        backbone=cfg.backbone.name,
        recipe=model_recipe(cfg, model),
        strides=list(model.backbone.strides),
        postprocess=postprocessing(cfg.aggregation.mode, threshold, cfg.threshold.min_area,
                                   cfg.aggregation.smoothing, cfg.aggregation.levels),
        classes=list(classes),
        data_fingerprint=fingerprint,
        config=cfg.to_dict(),
        head=None if getattr(model, "knn", None) is None else DecisionHead(
            "knn", "knn_dist", model.head_stride, float(cfg.decision.sigma),
            int(model.knn.bank.shape[0]), getattr(model.knn, "map_threshold", None)),
    )


def checkpoint_payload(cfg, model, classes: list[str], fingerprint: str | None,
                       threshold=None) -> dict[str, Any]:
    """The config and the record as a checkpoint stores them (plain values only)."""
    record = model_record(cfg, model, classes, fingerprint, threshold)
    return {"config": cfg.to_dict(), "metadata": record.to_json()}


def model_from_checkpoint(data: dict[str, Any], source: str = "checkpoint"):
    """Rebuild the model from the config stored in a checkpoint and load its weights."""
    from edgeas.config import config_from_dict
    from edgeas.train.model.unias import build_model

    cfg = config_from_dict(data["config"], f"{source} (stored config)")
    # Weights come from the checkpoint, including the backbone's: no weight file needed.
    model = build_model(cfg, pretrained=False)
    state = data["model"]
    if "knn.bank" in state:  # a decision head: its bank's size is the checkpoint's
        model.attach_bank(torch.zeros_like(state["knn.bank"]))
    own = model.state_dict()
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ArtifactError(
            f"{source}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the model built from "
            f"its config expects {tuple(own[bad[0]].shape)}",
            hint="a model is built for one input size; checkpoints do not transfer between sizes",
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(
            f"{source}: weights do not match the stored config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return cfg, model
