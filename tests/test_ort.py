"""The core's ONNX Runtime session factory: the FP16 guard is chosen from the graph's own
weights (read without the onnx package) and is visible on the session's options."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeas import ort  # noqa: E402
from edgeas.onnxio import has_fp16_initializers  # noqa: E402


def _scaled(dtype) -> onnx.ModelProto:
    """y = x * w with a (1, 3, 1, 1) weight of `dtype` (FP16 weights are cast up first), float
    I/O: the shape of the typed FP16 graphs export writes, in three nodes."""
    w = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, dtype), "w")
    nodes = [helper.make_node("Mul", ["x", "w32"], ["y"])]
    if dtype == np.float16:
        nodes.insert(0, helper.make_node("Cast", ["w"], ["w32"], to=TensorProto.FLOAT))
    else:
        nodes[0].input[1] = "w"
    graph = helper.make_graph(
        nodes, "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _onnx_says_fp16(model: onnx.ModelProto) -> bool:
    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_fp16_scan_agrees_with_onnx_on_bytes_and_files(dtype, tmp_path):
    model = _scaled(dtype)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    want = _onnx_says_fp16(model)
    assert want == (dtype == np.float16)
    assert has_fp16_initializers(model.SerializeToString()) is want
    assert has_fp16_initializers(path) is want
    assert has_fp16_initializers(str(path)) is want


def test_unreadable_models_are_left_to_onnx_runtime(tmp_path):
    empty, junk = tmp_path / "empty.onnx", tmp_path / "junk.onnx"
    empty.write_bytes(b"")
    junk.write_bytes(b"\xff" * 64)
    for model in (b"", b"\x3a\xff\xff", empty, junk, tmp_path / "missing.onnx"):
        assert has_fp16_initializers(model) is False


def _disabled(session) -> list[str]:
    return session.get_session_options().get_session_config_entry(
        ort.DISABLED_OPTIMIZERS_KEY).split(",")


def test_fp16_sessions_get_the_guard_and_fp32_sessions_keep_the_layout_optimizer(tmp_path):
    x = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    fp16 = _scaled(np.float16)
    path16 = tmp_path / "m.fp16.onnx"
    onnx.save(fp16, str(path16))
    for model in (fp16.SerializeToString(), path16):
        session = ort.open_session(model, threads=1)
        assert _disabled(session) == ["NchwcTransformer", "SkipLayerNormFusion"]
        options = session.get_session_options()
        assert options.intra_op_num_threads == 1 and options.log_severity_level == ort.QUIET
        np.testing.assert_allclose(ort.run(session, x)["y"], x * 0.5)
    fp32 = ort.open_session(_scaled(np.float32).SerializeToString(), quiet=False)
    assert ort.disabled_optimizers(_scaled(np.float32).SerializeToString()) == (
        "SkipLayerNormFusion",)
    assert _disabled(fp32) == ["SkipLayerNormFusion"]
    assert fp32.get_session_options().log_severity_level != ort.QUIET
    # a GPU provider keeps the fusion (its kernel there is the fast one)
    gpu = ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert ort.disabled_optimizers(_scaled(np.float32).SerializeToString(), gpu) == ()
    assert ort.disabled_optimizers(fp16.SerializeToString(), gpu) == ("NchwcTransformer",)


def _residual_layernorm() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "beta")]
    nodes = [helper.make_node("Add", ["x", "skip"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1)]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [5, 1, 8])
              for n in ("x", "skip")]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_residual_layernorm_runs_unfused_on_the_cpu_with_the_fused_result(tmp_path):
    model = _residual_layernorm()
    path = tmp_path / "ln.onnx"
    onnx.save(model, str(path))
    opt = tmp_path / "ln.opt.onnx"
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(opt)
    fused = onnxruntime.InferenceSession(str(path), options, providers=list(ort.CPU))
    assert "SkipLayerNormalization" in [n.op_type for n in onnx.load(str(opt)).graph.node]
    session = ort.open_session(path)
    rng = np.random.default_rng(4)
    feed = {n: rng.normal(size=(5, 1, 8)).astype(np.float32) for n in ("x", "skip")}
    np.testing.assert_allclose(session.run(None, feed)[0], fused.run(None, feed)[0],
                               rtol=1e-5, atol=1e-5)


def test_a_caller_can_name_the_optimizers_to_switch_off_instead():
    model = _scaled(np.float32).SerializeToString()
    everything = ort.open_session(model, disabled=[])
    with pytest.raises(RuntimeError):  # no entry at all: nothing is disabled
        everything.get_session_options().get_session_config_entry(ort.DISABLED_OPTIMIZERS_KEY)
    assert _disabled(ort.open_session(model, disabled=["GeluFusion"])) == ["GeluFusion"]
