"""The FP16 converter and the graph clean-up on small hand-made ONNX graphs (no torch)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeas import ort  # noqa: E402
from edgeas.errors import ConfigError  # noqa: E402
from edgeas.export.fp16 import (  # noqa: E402
    DEFAULT_KEEP,
    GROUPS,
    convert_to_fp16,
    fp32_node_names,
)
from edgeas.export.fp16_emulate import emulate_fp16, fp16_range  # noqa: E402
from edgeas.export.onnx_graph import MASK_VALUE, clean_model, dead_nodes  # noqa: E402

C = 64


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # what ONNX Runtime 1.31 reads (onnx 1.23 would write 14)
    return model


def _cosine_distance_model() -> onnx.ModelProto:
    """x -> r = Conv(x), t = Conv(x) -> d = 1 - cos(r, t) over channels, exported the way
    torch writes F.cosine_similarity: sum(r t) / sqrt(max(|r|^2 |t|^2, eps^2)).
    With features of the size UniAS sees, |r|^2 |t|^2 is far beyond FP16's 65504."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((C, 8, 1, 1)) * 3).astype(np.float32)
    w2 = (w1 + rng.standard_normal((C, 8, 1, 1)) * 0.3).astype(np.float32)
    f = TensorProto.FLOAT
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
        numpy_helper.from_array(np.array(1e-16, np.float32), "eps2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["r"], name="conv_r"),
        helper.make_node("Conv", ["x", "w2"], ["t"], name="conv_t"),
        helper.make_node("Mul", ["r", "t"], ["rt"], name="mul_rt"),
        helper.make_node("ReduceSum", ["rt", "axis"], ["dot"], keepdims=0, name="dot"),
        helper.make_node("Mul", ["r", "r"], ["rr"], name="mul_rr"),
        helper.make_node("ReduceSum", ["rr", "axis"], ["nr"], keepdims=0, name="nr"),
        helper.make_node("Mul", ["t", "t"], ["tt"], name="mul_tt"),
        helper.make_node("ReduceSum", ["tt", "axis"], ["nt"], keepdims=0, name="nt"),
        helper.make_node("Mul", ["nr", "nt"], ["n2"], name="n2"),
        helper.make_node("Max", ["n2", "eps2"], ["n2c"], name="clamp"),
        helper.make_node("Sqrt", ["n2c"], ["n"], name="sqrt"),
        helper.make_node("Div", ["dot", "n"], ["cos"], name="div"),
        helper.make_node("Sub", ["one", "cos"], ["d"], name="sub"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", f, [2, 8, 6, 6])],
        [helper.make_tensor_value_info("d", f, [2, 6, 6])],
        inits,
    )


def _attention_model(between: str = "Mul") -> onnx.ModelProto:
    """x (N, 16, 8) -> softmax(q k^T / sqrt(8) + mask) v, one head, exported the way torch
    writes it. q carries a large bias B in dimension 0 and k a constant c there (its
    weights into that dimension are zero), as the keys of a trained model carry a large
    common part: q.k^T gains B c on every score of a query, which Softmax ignores, so
    the function is that of a small attention while q.k^T reaches ~4e5."""
    rng = np.random.default_rng(4)
    wq, wk, wv = (rng.standard_normal((8, 8)).astype(np.float32) for _ in range(3))
    wk[:, 0] = 0
    bq, bk = np.zeros(8, np.float32), np.zeros(8, np.float32)
    bq[0], bk[0] = 2e4, 20.0
    mask = np.where(np.eye(16, dtype=bool), -1e4, 0).astype(np.float32)
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(v, k) for k, v in (
        ("wq", wq), ("wk", wk), ("wv", wv), ("bq", bq), ("bk", bk), ("mask", mask),
        ("scale", np.array(8 ** -0.5, np.float32)))]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q0"], name="q_proj"),
        helper.make_node("Add", ["q0", "bq"], ["q"], name="q_bias"),
        helper.make_node("MatMul", ["x", "wk"], ["k0"], name="k_proj"),
        helper.make_node("Add", ["k0", "bk"], ["k"], name="k_bias"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="k_t"),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node(between, ["s", "scale"] if between == "Mul" else ["s"], ["s2"],
                         name="scale"),
        helper.make_node("Add", ["s2", "mask"], ["s3"], name="mask"),
        helper.make_node("Softmax", ["s3"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "v"], ["out"], name="attend"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", f, ["N", 16, 8])],
                  [helper.make_tensor_value_info("out", f, ["N", 16, 8])], inits)


def _run(model, x):
    return ort.run(ort.open_session(model.SerializeToString()), x)


def test_keeping_the_cosine_in_fp32_is_what_prevents_fp16_overflow():
    model = _cosine_distance_model()
    x = np.random.default_rng(1).standard_normal((2, 8, 6, 6)).astype(np.float32) * 2
    ref = _run(model, x)
    w = {t.name: numpy_helper.to_array(t)[:, :, 0, 0] for t in model.graph.initializer[:2]}
    r, t = (np.einsum("oc,nchw->nohw", w[k], x) for k in ("w1", "w2"))
    assert np.max(np.sum(r * r, axis=1) * np.sum(t * t, axis=1)) > 100 * 65504

    naive, _ = convert_to_fp16(model, set())
    broken = ort.accuracy(_run(emulate_fp16(naive), x), ref)["d"]
    # |r|^2 |t|^2 overflows to inf in FP16: cos -> 0, d -> 1 where it should be ~0
    assert broken["max_abs"] > 0.5

    typed, stats = convert_to_fp16(model)
    # everything after the two convolutions (the cosine) stays FP32
    assert (stats["fp16_nodes"], stats["fp32_nodes"]) == (2, len(model.graph.node) - 2)
    assert stats["kept_fp32"]["tail"] + stats["kept_fp32"]["reduce"] == len(model.graph.node) - 2
    for run in (_run(typed, x), _run(emulate_fp16(typed), x)):
        acc = ort.accuracy(run, ref)["d"]
        assert acc["finite"] and acc["cosine_min"] > 0.9999 and acc["max_abs"] < 1e-3


def test_attention_scores_overflow_fp16_and_the_scores_group_keeps_them_fp32():
    model = _attention_model()
    x = np.random.default_rng(5).standard_normal((3, 16, 8)).astype(np.float32)
    ref = _run(model, x)

    # without the group: q.k^T is ~4e5, inf in FP16, NaN after the Softmax, and the
    # range check names the score MatMul, not the output that ends up NaN
    naive, _ = convert_to_fp16(model, DEFAULT_KEEP - {"scores"})
    assert not np.isfinite(_run(emulate_fp16(naive), x)["out"]).all()
    span = fp16_range(naive, x)
    hit = span.overflow
    assert (hit.node, hit.op_type, hit.precision, hit.images) == ("scores", "MatMul", "fp16", 3)
    assert 65520 < hit.max_abs < 1e6 and span.peak is None
    assert hit.describe() == ("node scores (MatMul, fp16) reaches |x| 4e+05 > FP16 max 65504 "
                              "on 3 image(s)")

    typed, stats = convert_to_fp16(model)
    kept = fp32_node_names(model)
    assert {k: kept[k] for k in ("scores", "scale", "mask", "softmax")} == {
        "scores": "scores", "scale": "scores", "mask": "softmax", "softmax": "softmax"}
    assert stats["kept_fp32"]["scores"] == 2 and "q_proj" not in kept and "attend" not in kept
    for run in (_run(typed, x), _run(emulate_fp16(typed), x)):
        acc = ort.accuracy(run, ref)["out"]
        assert acc["finite"] and acc["cosine_min"] > 0.999, acc
    span = fp16_range(typed, x)
    assert span.overflow is None and span.peak.node == "q_bias" and span.peak.images == 0
    assert 1e4 < span.peak.max_abs < 65504


def test_scores_group_keeps_only_a_matmul_that_reaches_a_softmax():
    # Relu is no scale, mask or reshape: the Softmax's input is not a score product
    assert "scores" not in fp32_node_names(_attention_model(between="Relu")).values()


def test_typed_graph_keeps_float32_io_and_fp16_weights():
    model = _cosine_distance_model()
    typed, stats = convert_to_fp16(model, {"norm"})  # nothing to keep: outputs come from FP16
    f = TensorProto.FLOAT
    assert [v.type.tensor_type.elem_type for v in typed.graph.input] == [f]
    assert [v.type.tensor_type.elem_type for v in typed.graph.output] == [f]
    assert [o.name for o in typed.graph.output] == ["d"]
    halves = {t.name for t in typed.graph.initializer if t.data_type == TensorProto.FLOAT16}
    assert {"w1:fp16", "w2:fp16"} <= halves
    assert stats["fp32_nodes"] == 0 and stats["fp16_nodes"] == len(model.graph.node)
    onnx.checker.check_model(typed, full_check=True)


def test_resize_scales_stay_float32_and_fp16_output_gets_a_final_cast():
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Resize", ["y", "", "scales"], ["z"], mode="linear", name="resize"),
        helper.make_node("Relu", ["z"], ["out"], name="relu"),
    ]
    inits = [
        numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", f, [1, 3, 4, 4])],
                   [helper.make_tensor_value_info("out", f, [1, 2, 8, 8])], inits)
    typed, _ = convert_to_fp16(model, set())
    onnx.checker.check_model(typed, full_check=True)
    resize = next(n for n in typed.graph.node if n.op_type == "Resize")
    by_name = {t.name: t for t in typed.graph.initializer}
    assert by_name[resize.input[2]].data_type == f
    assert typed.graph.node[-1].op_type == "Cast" and typed.graph.node[-1].output == ["out"]
    x = np.random.default_rng(2).random((1, 3, 4, 4), dtype=np.float32)
    got, want = _run(typed, x)["out"], _run(model, x)["out"]
    assert got.dtype == np.float32 and np.allclose(got, want, rtol=2e-3, atol=2e-3)


def test_converter_refuses_bad_requests():
    model = _cosine_distance_model()
    with pytest.raises(ConfigError, match="unknown FP32 groups"):
        convert_to_fp16(model, {"norms"})
    typed, _ = convert_to_fp16(model)
    with pytest.raises(ConfigError, match="already holds FP16"):
        convert_to_fp16(typed)
    assert set(GROUPS) == {"norm", "softmax", "scores", "reduce", "tail", "head"}


def test_clean_model_folds_drops_dead_nodes_makes_masks_finite_and_names_stably():
    f = TensorProto.FLOAT
    mask = np.where(np.eye(4, dtype=bool), -np.inf, 0).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["onnx::Mask_17"], ["mshape"], name="/m/Shape"),  # folds
        helper.make_node("Reshape", ["onnx::Mask_17", "mshape"], ["mask2"], name="/m/Reshape"),
        helper.make_node("MatMul", ["q", "k"], ["s"], name="/m/attn/MatMul"),
        helper.make_node("Add", ["s", "mask2"], ["sm"], name="/m/attn/Add"),
        helper.make_node("Softmax", ["sm"], ["p"], axis=-1, name="/m/attn/Softmax"),
        helper.make_node("Relu", ["q"], ["unused"], name="/m/dead/Relu"),  # dead
    ]
    inits = [numpy_helper.from_array(mask, "onnx::Mask_17"),
             numpy_helper.from_array(np.eye(4, dtype=np.float32), "k")]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("q", f, [4, 4])],
        [helper.make_tensor_value_info("p", f, [4, 4])],
        inits,
    )
    cleaned, stats = clean_model(model)
    ops = [n.op_type for n in cleaned.graph.node]
    assert ops == ["MatMul", "Add", "Softmax"] and dead_nodes(cleaned) == []
    assert stats["masks_made_finite"] == 1
    consts = {t.name: numpy_helper.to_array(t) for t in cleaned.graph.initializer}
    folded = next(v for v in consts.values() if v.shape == (4, 4) and v.min() < 0)
    assert np.isfinite(folded).all() and folded.min() == MASK_VALUE
    # tensors are named after their producer; exporter counters (onnx::...) are gone
    assert cleaned.graph.node[0].output[0] == "/m/attn/MatMul:0"
    assert not any(name.startswith("onnx::") for name in consts)
    q = np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32)
    p = _run(cleaned, q)["p"]
    s = q @ np.eye(4, dtype=np.float32)
    s = np.where(np.eye(4, dtype=bool), -np.inf, s)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    assert np.allclose(p, e / e.sum(axis=1, keepdims=True), atol=1e-6)
