"""calibration/cpu_chain.py: which Add/Pad/Clip/Relu nodes join the CPU INT8 model's
convolutions, on small graphs, and what ONNX Runtime's quantizer makes of them through
`calibration.quantize` (QLinearAdd in the chain, float Adds elsewhere, maps close to FP32)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeas import ort  # noqa: E402
from edgeas.calibration import quantize as qz  # noqa: E402
from edgeas.calibration.cpu_chain import conv_chain_nodes  # noqa: E402
from edgeas.calibration.ranges import collect  # noqa: E402


def _graph():
    """x -> conv_a -> relu6 -> pad -> conv_b -> residual(conv_b, relu6) -> relu, and beside
    it a float branch: x -> reduce -> add_float(reduce, residual), which makes the Relu's
    input one with two readers, and an Add of a graph input with a constant."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "wa"),
        numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32) / 3, "wb"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array([0.5], np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
        helper.make_node("Clip", ["a", "lo", "hi"], ["a6"], name="relu6"),
        helper.make_node("Pad", ["a6", "pads"], ["ap"], name="pad"),
        helper.make_node("Conv", ["ap", "wb"], ["b"], name="conv_b"),
        helper.make_node("Add", ["b", "a6"], ["res"], name="residual"),
        helper.make_node("Relu", ["res"], ["out"], name="relu"),
        helper.make_node("ReduceMean", ["x"], ["m"], name="reduce", keepdims=1, axes=[1]),
        helper.make_node("Add", ["m", "res"], ["mixed"], name="add_float"),
        helper.make_node("Add", ["x", "half"], ["shifted"], name="add_input"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("out", "mixed", "shifted")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_chain_is_what_quantized_convolutions_feed():
    # not the Relu: its input has a second reader, which would keep the negative values
    assert conv_chain_nodes(_graph()) == ["relu6", "pad", "residual"]


def test_a_float_convolution_breaks_the_chain_and_float_nodes_stay_float():
    model = _graph()
    # conv_b float: the residual Add has a float input
    assert conv_chain_nodes(model, float_nodes={"conv_b"}) == ["relu6", "pad"]
    assert conv_chain_nodes(model, float_nodes={"pad"}) == ["relu6", "residual"]
    assert conv_chain_nodes(model, float_nodes={"relu6"}) == []  # all downstream of it
    # with `only`, convolutions outside it count as float
    assert conv_chain_nodes(model, only={"conv_a"}) == ["relu6", "pad"]
    assert conv_chain_nodes(model, only=set()) == []


def _ranges(model):
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(8)]
    return collect(model, batches, "minmax", lambda raw: ort.open_session(raw)), batches


def test_cpu_model_quantizes_the_chain_and_leaves_other_adds_float():
    model = _graph()
    ranges, batches = _ranges(model)
    cpu = qz.quantize(model, ranges, "qoperator")
    by_name = {n.name: n.op_type for n in cpu.graph.node}
    ops = list(by_name.values())
    assert ops.count("QLinearConv") == 2 and ops.count("QLinearAdd") == 1
    assert by_name.get("add_float") == "Add" and by_name.get("add_input") == "Add"
    assert "Clip" not in ops  # it vanishes into the convolution before it
    assert by_name["relu"] == "Relu"  # a second reader of its input: kept float
    want = ort.open_session(model.SerializeToString())
    got = ort.open_session(cpu.SerializeToString())
    for x in batches[:3]:
        ref = dict(zip(("out", "mixed", "shifted"), want.run(None, {"x": x})))
        out = dict(zip(("out", "mixed", "shifted"), got.run(None, {"x": x})))
        for name, value in ref.items():
            assert ort.cosine_per_image(out[name], value).min() > 0.995, name


def test_the_qdq_model_and_excluded_convolutions_keep_their_float_adds():
    model = _graph()
    ranges, _ = _ranges(model)
    qdq_ops = [n.op_type for n in qz.quantize(model, ranges, "qdq").graph.node]
    assert qdq_ops.count("Add") == 3 and "QLinearAdd" not in qdq_ops
    cpu = qz.quantize(model, ranges, "qoperator", exclude=["conv_b"])
    by_name = {n.name: n.op_type for n in cpu.graph.node}
    assert by_name["residual"] == "Add" and by_name["conv_b"] == "Conv"
    only = qz.quantize(model, ranges, "qoperator", only=["conv_a", "conv_b"])
    assert [n.op_type for n in only.graph.node].count("QLinearAdd") == 1
