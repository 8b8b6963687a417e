"""The one metadata record that travels checkpoint -> ONNX -> engine sidecar -> runtime."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from edgeas import __version__
from edgeas.errors import ArtifactError

SCHEMA = 1
ONNX_KEY = "edgeas"
REQUIRED = (
    "schema",
    "edgeas_version",
    "preset",
    "backbone",
    "input_size",
    "channel_order",
    "interpolation",
    "mean",
    "std",
    "levels",
    "aggregation",
    "threshold",
    "min_area",
    "classes",
)
# Post-processing blur per level (protocol.md section 3): (kernel, sigma) for res1..res4.
REFERENCE_BLUR = ((9, 3.0), (7, 7.0 / 3.0), (5, 5.0 / 3.0), (3, 1.0))


def level_records(strides: list[int]) -> list[dict[str, Any]]:
    return [
        {"name": f"res{i + 1}", "stride": int(s), "output": f"dist_res{i + 1}"}
        for i, s in enumerate(strides)
    ]


def config_hash(cfg_dict: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg_dict, sort_keys=True).encode()).hexdigest()[:16]


def build_metadata(
    *,
    preset: str | None,
    backbone: str,
    recipe: dict[str, Any],
    strides: list[int],
    aggregation_mode: str,
    threshold: dict[str, Any],
    min_area: int,
    classes: list[str],
    data_fingerprint: str | None,
    config: dict[str, Any],
    precision: str = "fp32",
) -> dict[str, Any]:
    meta = {
        "schema": SCHEMA,
        "edgeas_version": __version__,
        "preset": preset,
        "backbone": backbone,
        **recipe,
        "levels": level_records(strides),
        "aggregation": {"mode": aggregation_mode, "blur": [list(b) for b in REFERENCE_BLUR]},
        "threshold": threshold,
        "min_area": int(min_area),
        "classes": list(classes),
        "data_fingerprint": data_fingerprint,
        "config_sha256": config_hash(config),
        "precision": precision,
    }
    validate_metadata(meta, "new metadata")
    return meta


def validate_metadata(meta: Any, source: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise ArtifactError(f"{source}: edgeas metadata is not a JSON object")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ArtifactError(f"{source}: edgeas metadata lacks {', '.join(missing)}")
    if meta["schema"] > SCHEMA:
        raise ArtifactError(
            f"{source}: metadata schema {meta['schema']} is newer than this edgeas "
            f"(knows {SCHEMA})",
            hint="upgrade edgeas on this machine",
        )
    return meta


def unset_threshold(policy: str = "quantile", param: float | None = None, mode: str = "reference"):
    return {"value": None, "policy": policy, "param": param, "mode": mode}
