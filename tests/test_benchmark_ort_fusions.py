"""benchmarks/ort_fusions.py: the variants it opens (edgeas's own choice, ONNX Runtime's
defaults, one more optimizer off each) run for real on a small graph and give the same
outputs, and the lone-op probe times the fused and unfused residual LayerNorm."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ort_fusions  # noqa: E402
from test_benchmark_ort_profile import _matmul_relu  # noqa: E402

from edgeas.ort import CPU_DISABLED_OPTIMIZERS  # noqa: E402


def test_every_variant_runs_and_only_edgeas_turns_the_slow_fusion_off(tmp_path):
    path = _matmul_relu(tmp_path / "m.onnx")
    result = ort_fusions.model_variants(path, np.ones((1, 64), np.float32), rounds=1)
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["edgeas"]["ratio"] == 1.0
    assert set(CPU_DISABLED_OPTIMIZERS) <= set(rows["edgeas"]["disabled"])
    assert not set(CPU_DISABLED_OPTIMIZERS) & set(rows["all fusions"]["disabled"])
    assert len(rows) == 2 + len(ort_fusions.CANDIDATES)
    for row in rows.values():
        assert row["runs"] == ort_fusions.CALLS and row["ms_median"] > 0
        assert row["max_rel_diff"] < 1e-6  # a fusion changes speed, not the maps


def test_the_op_probe_times_both_forms_at_both_thread_counts():
    rows = ort_fusions.op_probe(rounds=1)
    assert [r["variant"] for r in rows] == ["fused, 1 thread", "unfused, 1 thread",
                                            "fused, 2 threads", "unfused, 2 threads"]
    assert all(r["us_median"] > 0 and r["runs"] == 20 * ort_fusions.CALLS for r in rows)
    model = ort_fusions.residual_layernorm()
    onnx.checker.check_model(model, full_check=True)
