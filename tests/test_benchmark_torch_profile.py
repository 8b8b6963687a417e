"""benchmarks/torch_profile.py: aten and ONNX Runtime ops sorted into the same kinds of
work, the comparison rows, and a real profile of the tiny preset's PyTorch graph."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_profile as tp  # noqa: E402


def test_ops_of_both_runtimes_fall_into_the_same_kinds():
    torch_ops = {"aten::mkldnn_convolution": 10.0, "aten::addmm": 4.0, "aten::mm": 1.0,
                 "aten::_scaled_dot_product_flash_attention_for_cpu": 2.0, "aten::add": 3.0}
    assert tp.by_kind(torch_ops, tp.TORCH_KINDS) == {
        "convolution": 10.0, "matrix product": 5.0, "attention": 2.0, "rest": 3.0}
    ort_ops = {"Conv": 5.0, "Gemm": 4.0, "FusedMatMul": 1.5, "Softmax": 0.5,
               "Transpose": 2.0, "LayerNormalization": 1.0}
    assert tp.by_kind(ort_ops, tp.ORT_KINDS) == {
        "convolution": 5.0, "matrix product": 4.0, "attention": 2.0, "rest": 3.0}
    rows = {r["kind"]: r for r in tp.compare(tp.by_kind(torch_ops, tp.TORCH_KINDS),
                                             tp.by_kind(ort_ops, tp.ORT_KINDS))}
    assert rows["convolution"]["torch_over_ort"] == 2.0
    assert rows["total"]["torch_ms"] == 20.0 and rows["total"]["ort_ms"] == 14.0


def test_the_tiny_presets_graph_is_profiled_for_real():
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    result = tp.torch_profile("tiny", image, runs=1, warmup=0)
    kinds = result["kinds"]
    assert result["runs"] == 1 and result["frame_ms_median"] > 0
    assert kinds["convolution"] > 0 and kinds["matrix product"] > 0 and kinds["rest"] > 0
    assert sum(kinds.values()) == pytest.approx(result["self_ms_per_frame"], rel=1e-3, abs=1e-2)
