"""Checkpoints: one dict of tensors and plain values, written atomically, read with
`weights_only=True` so that a checkpoint from a stranger cannot run code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from edgeas.errors import ArtifactError
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
        raise ArtifactError(f"checkpoint not found: {path}")
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


def model_from_checkpoint(data: dict[str, Any], source: str = "checkpoint"):
    """Rebuild the model from the config stored in a checkpoint and load its weights."""
    from edgeas.config import config_from_dict
    from edgeas.train.model.unias import build_model

    cfg = config_from_dict(data["config"], f"{source} (stored config)")
    # Weights come from the checkpoint, including the backbone's: no weight file needed.
    model = build_model(cfg, pretrained=False)
    state = data["model"]
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
