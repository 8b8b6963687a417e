from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEAS_SHARED", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance" / "unias_official_small"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    if not (CONFORMANCE / "state_dict.npz").exists():
        pytest.skip(f"conformance vectors not found at {CONFORMANCE} (set EDGEAS_SHARED)")
    return CONFORMANCE


@pytest.fixture(scope="session")
def full_keys_file() -> Path:
    path = SHARED / "conformance" / "unias_official_full_keys.txt"
    if not path.exists():
        pytest.skip(f"{path} not found (set EDGEAS_SHARED)")
    return path


@pytest.fixture(scope="session")
def fp16_overflow_onnx() -> Path:
    """The trained unias-edge whose FP16 emulation overflowed (regressions/README.md)."""
    path = SHARED / "regressions" / "unias-edge-fp16-overflow.onnx"
    if not path.exists():
        pytest.skip(f"regression model not found at {path} (set EDGEAS_SHARED)")
    return path
