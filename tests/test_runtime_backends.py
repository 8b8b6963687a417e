"""Backends: ONNX Runtime on an exported model; refusals of bad models and foreign engines;
TensorRT against ONNX Runtime where a GPU exists."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import numpy as np
import pytest
from test_stream_support import trained_model_path

from edgeas.errors import ArtifactError, ConfigError, DependencyError
from edgeas.ort import disabled_optimizers
from edgeas.runtime.backends import OnnxRuntimeBackend, open_backend
from edgeas.runtime.tensorrt_backend import check_engine_compat

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return trained_model_path(tmp_path_factory)


def test_onnx_runtime_backend_reads_metadata_and_returns_four_maps(model):
    backend = open_backend(model)
    assert isinstance(backend, OnnxRuntimeBackend)
    assert backend.input_hw == (224, 224)
    assert backend.output_names == ["dist_res1", "dist_res2", "dist_res3", "dist_res4"]
    assert backend.record.threshold.value > 0  # fitted at training
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    maps = backend.infer(x)
    assert [m.shape for m in maps] == [(1, 112, 112), (1, 56, 56), (1, 28, 28), (1, 14, 14)]
    # the same optimizers as the backend's session (edgeas.ort: a slow CPU fusion off)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(disabled_optimizers(model)))
    direct = session.run(backend.output_names, {"image": x})
    for got, want in zip(maps, direct):
        np.testing.assert_array_equal(got, want[:, 0])
    assert backend.describe()["device"] == "cpu"


def test_a_static_batch_model_refuses_a_larger_batch(model):
    backend = open_backend(model)
    assert backend.batch == 1
    with pytest.raises(ConfigError, match="takes 1"):
        backend.infer(np.zeros((2, 3, 224, 224), np.float32))
    with pytest.raises(ConfigError, match="expected float32"):
        backend.infer(np.zeros((1, 3, 100, 100), np.float32))


def test_onnx_without_edgeas_metadata_is_refused(model, tmp_path):
    m = onnx.load(str(model))
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, str(bare))
    with pytest.raises(ArtifactError, match="no edgeas metadata") as info:
        open_backend(bare)
    assert "edgeas export" in info.value.hint


def test_metadata_naming_missing_outputs_is_refused(model, tmp_path):
    m = onnx.load(str(model))
    for prop in m.metadata_props:
        if prop.key == "edgeas":
            meta = json.loads(prop.value)
            meta["levels"][0]["output"] = "no_such_output"
            prop.value = json.dumps(meta)
    bad = tmp_path / "renamed.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(ArtifactError, match="no_such_output"):
        open_backend(bad)


def test_unknown_or_missing_model_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        open_backend(tmp_path / "missing.onnx")
    other = tmp_path / "model.tflite"
    other.write_bytes(b"x")
    with pytest.raises(ConfigError, match="unknown model format"):
        open_backend(other)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ArtifactError):
        open_backend(garbage)


SIDE = {"tensorrt_version": "10.3.0", "gpu": "Orin (nvgpu)", "compute_capability": "8.7"}


def test_engine_compat_accepts_the_same_tensorrt_and_gpu():
    check_engine_compat(SIDE, "m.engine", "10.3.0", "Orin (nvgpu)", "8.7")
    # TensorRT-RTX builds on a CPU: no GPU name recorded, so only the version is checked
    check_engine_compat(dict(SIDE, gpu=None, compute_capability=None), "m.engine", "10.3.0",
                        "NVIDIA GeForce RTX 4090", "8.9")


@pytest.mark.parametrize(
    ("local", "message"),
    [
        (("10.7.0", "Orin (nvgpu)", "8.7"), "built with TensorRT 10.3.0; this machine has"),
        (("10.3.0", "NVIDIA A100", "8.0"), "built for the GPU 'Orin (nvgpu)'"),
        (("10.3.0", None, "8.6"), "compute capability 8.7"),
    ],
)
def test_engine_compat_refuses_another_tensorrt_or_gpu(local, message):
    with pytest.raises(ArtifactError, match=re.escape(message)) as info:
        check_engine_compat(SIDE, "m.engine", *local)
    assert "build-engine" in info.value.hint
    assert "\n" not in info.value.message


def test_engine_sidecar_without_version_is_refused():
    with pytest.raises(ArtifactError, match="no tensorrt_version"):
        check_engine_compat({}, "m.engine", "10.3.0", "x", "8.7")


@pytest.mark.trt
def test_an_engine_built_by_build_engine_is_read_through_its_sidecar(model, tmp_path):
    """TensorRT-RTX builds on a CPU: its real sidecar goes through the runtime's checks.
    Without a GPU the run stops at pycuda with a clear message; a sidecar that names
    another TensorRT version is refused before that."""
    trt = pytest.importorskip("tensorrt_rtx", reason="pip install tensorrt-rtx builds on a CPU")
    from test_stream_support import edgeas

    onnx_copy = tmp_path / "model.onnx"
    shutil.copy(model, onnx_copy)
    engine = tmp_path / "model.engine"
    edgeas("build-engine", "--onnx", str(onnx_copy), "-o", str(engine), "--tensorrt",
           "tensorrt_rtx")
    side = tmp_path / "model.engine.json"
    meta = json.loads(side.read_text())
    assert meta["tensorrt_version"] == trt.__version__
    try:
        backend = open_backend(engine)
    except DependencyError as exc:  # no GPU here
        assert "pycuda" in exc.message or "CUDA" in exc.message
    else:  # pragma: no cover - a machine with an RTX GPU
        x = np.zeros((1, 3, 224, 224), np.float32)
        assert [m.shape for m in backend.infer(x)][0] == (1, 112, 112)
        backend.close()
    side.write_text(json.dumps(dict(meta, tensorrt_version="0.0.1")))
    with pytest.raises(ArtifactError, match="built with TensorRT-RTX 0.0.1; this machine has"):
        open_backend(engine)


@pytest.mark.gpu
@pytest.mark.trt
# decided before the `model` fixture trains a model: without TensorRT there is nothing to do
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="needs NVIDIA TensorRT (not installed)")
def test_tensorrt_engine_matches_onnx_runtime(model, tmp_path):
    from edgeas.cuda import cuda_layers
    from edgeas.export.trt_build import probe_gpu

    if all(cuda_layers().values()):
        pytest.skip(f"no CUDA layer (pycuda or cuda-python): {cuda_layers()}")

    if probe_gpu().name is None:
        pytest.skip(f"no GPU: {probe_gpu().reason}")
    from test_stream_support import edgeas

    engine = tmp_path / "model.engine"
    shutil.copy(model, tmp_path / "model.onnx")
    edgeas("build-engine", "--onnx", str(tmp_path / "model.onnx"), "-o", str(engine))
    trt_backend = open_backend(engine)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    expected = open_backend(model, "cpu").infer(x)
    got = trt_backend.infer(x)
    for g, e in zip(got, expected):
        assert np.abs(g - e).max() <= 1e-3 * max(1.0, float(np.abs(e).max()))
    trt_backend.close()
