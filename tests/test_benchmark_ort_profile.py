"""benchmarks/ort_profile.py: ONNX Runtime's real profiler on a two-node graph, and the
integer/float split of a quantized model's ops."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ort_profile  # noqa: E402

pytest.importorskip("onnxruntime")


def _matmul_relu(path: Path) -> Path:
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["image", "w"], ["h"], name="mm"),
         helper.make_node("Relu", ["h"], ["out"], name="relu")],
        "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 64])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_the_profile_counts_each_run_after_the_warm_up(tmp_path):
    path = _matmul_relu(tmp_path / "m.onnx")
    image = np.ones((1, 64), np.float32)
    result = ort_profile.profile(path, image, runs=4, warmup=2)
    assert result["runs"] == 4 and len(result["ops"]) >= 1
    ops = {o["op"] for o in result["ops"]}
    assert ops & {"MatMul", "FusedMatMul", "Gemm"}  # ONNX Runtime may fuse the pair
    assert sum(o["share"] for o in result["ops"]) == pytest.approx(1.0, abs=1e-3)
    assert result["float_nodes"] == result["nodes"]  # nothing quantized here
    assert result["float_share"] == pytest.approx(1.0)


def test_warm_up_runs_are_dropped_from_a_trace():
    trace = [{"cat": "Session", "name": "model_run", "ts": t, "dur": 10} for t in (0, 100)]
    trace += [{"cat": "Node", "name": "a_kernel_time", "ts": t, "dur": d,
               "args": {"op_name": op}}
              for t, d, op in ((1, 5, "Conv"), (101, 3, "QLinearConv"), (102, 1, "Add"))]
    nodes, runs = ort_profile.node_events(trace, warmup=1)
    assert runs == 1 and [n["ts"] for n in nodes] == [101, 102]
    summary = ort_profile.summarise(nodes, runs, [1.0])
    assert summary["float_share"] == pytest.approx(0.25)
    assert [o["op"] for o in summary["ops"]] == ["QLinearConv", "Add"]
    with pytest.raises(SystemExit, match="none after 2 warm-up"):
        ort_profile.node_events(trace, warmup=2)


@pytest.mark.parametrize("op,integer", [("QLinearMatMul", True), ("MatMulInteger", True),
                                        ("DequantizeLinear", True), ("QGemm", True),
                                        ("Softmax", False), ("Transpose", False)])
def test_integer_ops(op, integer):
    assert ort_profile.is_integer_op(op) is integer


def _profile(total: float, ops: dict[str, float]) -> dict:
    return {"kernel_ms_per_frame": total,
            "ops": [{"op": op, "ms_per_frame": ms} for op, ms in ops.items()]}


def test_the_speedup_bound_is_amdahls_law_over_the_two_profiles():
    fp32 = _profile(60.0, {"Conv": 20.0, "Gemm": 10.0, "Softmax": 5.0, "Add": 25.0})
    int8 = _profile(50.0, {"QLinearConv": 10.0, "QGemm": 5.0, "DequantizeLinear": 8.0})
    b = ort_profile.speedup_bound(fp32, int8, target=1.8)
    assert b["fp32_quantized_ms"] == 30.0 and b["fp32_rest_ms"] == 30.0
    assert b["kernel_speedup"] == 2.0
    assert b["bound_measured"] == pytest.approx(60 / (30 + 15), abs=1e-3)
    assert b["bound_infinite"] == 2.0
    # 1.8x: 60 / 1.8 = 33.3 ms, 3.3 of them left for 30 ms of float kernels: 9x
    assert b["needed_kernel_speedup"] == pytest.approx(30 / (60 / 1.8 - 30), abs=0.01)
    assert ort_profile.speedup_bound(fp32, int8, target=2.5)["needed_kernel_speedup"] == \
        float("inf")
