"""Hand-written model metadata for tests: exactly what edgeas 0.1.0 (schema 1) wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LEVELS = [{"name": f"res{i}", "stride": 2**i, "output": f"dist_res{i}"} for i in range(1, 5)]


def schema1_metadata(**changes: Any) -> dict[str, Any]:
    """A minimal schema-1 record (fused, threshold 0.5, half-grey normalisation)."""
    meta = {
        "schema": 1, "edgeas_version": "0.1.0", "preset": "tiny", "backbone": "b",
        "input_size": [224, 224], "channel_order": "RGB", "interpolation": "linear",
        "mean": [0.5] * 3, "std": [0.5] * 3, "levels": [dict(lv) for lv in LEVELS],
        "aggregation": {"mode": "fused", "blur": None}, "threshold": {"value": 0.5},
        "min_area": 0, "classes": [],
    }
    meta.update(changes)
    return meta


def write_engine(folder: Path, plan: bytes, **sidecar: Any) -> Path:
    """`model.engine` holding `plan` and its schema-1 sidecar with the given engine keys."""
    engine = folder / "model.engine"
    engine.write_bytes(plan)
    (folder / "model.engine.json").write_text(json.dumps(schema1_metadata(**sidecar)))
    return engine
