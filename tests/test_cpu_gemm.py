"""calibration/cpu_gemm.py: MatMul by a constant weight + constant bias -> Reshape, Gemm,
Reshape, on the trained tiny model (static and dynamic batch) and on small graphs; the
edited graph computes the same maps under ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from test_stream_support import clean_images, hole_images, trained_model_path  # noqa: E402

from edgeas import ort  # noqa: E402
from edgeas.artifacts import read_onnx_metadata  # noqa: E402
from edgeas.calibration.cpu_gemm import matmul_bias_to_gemm  # noqa: E402
from edgeas.preprocess import Recipe, preprocess_bgr  # noqa: E402


def _images(model_path, count: int) -> np.ndarray:
    recipe = Recipe.from_metadata(read_onnx_metadata(model_path))
    frames = clean_images(count - 1, seed=77) + [bad for bad, _ in hole_images(1, seed=78)]
    return np.stack([preprocess_bgr(f, recipe) for f in frames])


@pytest.mark.parametrize("dynamic", [False, True])
def test_the_trained_model_computes_the_same_maps_after_the_edit(tmp_path_factory, dynamic):
    path = trained_model_path(tmp_path_factory, dynamic_batch=dynamic)
    model = onnx.load(str(path))
    edited, edit = matmul_bias_to_gemm(model)
    onnx.checker.check_model(edited, full_check=True)
    ops = [n.op_type for n in edited.graph.node]
    before = [n.op_type for n in model.graph.node]
    assert edit.nodes and ops.count("Gemm") == before.count("Gemm") + len(edit.nodes)
    assert ops.count("MatMul") == before.count("MatMul") - len(edit.nodes)
    assert len(edit.same_values) == 2 * len(edit.nodes)
    assert list(edited.metadata_props) == list(model.metadata_props)  # the record travels
    images = _images(path, 3 if dynamic else 1)
    want = ort.run(ort.open_session(model.SerializeToString()), images)
    got = ort.run(ort.open_session(edited.SerializeToString()), images)
    for name, value in want.items():
        assert ort.relative_error(got[name], value) <= 1e-6, name


def _graph(bias: bool, weight_const: bool = True):
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 7, "w")
    b = numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w" if weight_const else "x2"], ["y"],
                              name="mm")]
    out = "y"
    if bias:
        nodes.append(helper.make_node("Add", ["y", "b"], ["z"], name="add"))
        out = "z"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "n", 4])]
    if not weight_const:
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [4, 3]))
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_only_a_constant_weight_with_a_constant_bias_is_rewritten():
    x = np.random.default_rng(0).normal(size=(5, 2, 4)).astype(np.float32)
    edited, edit = matmul_bias_to_gemm(_graph(bias=True))
    assert edit.nodes == {"mm": "mm/gemm"}
    assert edit.same_values == {"mm/rows_in": "x", "mm/rows_out": "z"}
    session = ort.open_session(edited.SerializeToString())
    want = x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 7) + np.array([0.5, -1, 2])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-6)
    for model in (_graph(bias=False), _graph(bias=True, weight_const=False)):
        unchanged, nothing = matmul_bias_to_gemm(model)
        assert not nothing.nodes and [n.op_type for n in unchanged.graph.node] == \
            [n.op_type for n in model.graph.node]
    for keep, only in (({"mm"}, None), ((), set()), ((), {"other"})):  # kept float
        kept, none = matmul_bias_to_gemm(_graph(bias=True), keep=keep, only=only)
        assert not none.nodes and kept.graph.node[0].name == "mm"
    assert matmul_bias_to_gemm(_graph(bias=True), only={"mm"})[1].nodes == {"mm": "mm/gemm"}
