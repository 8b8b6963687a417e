"""`edgeas build-engine`: real builds with TensorRT-RTX on this CPU, the TensorRT 10/11
call sequences against clearly named mocks, the import boundary, and the errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")

from blocked_python import edgeas_without, run_without  # noqa: E402
from test_build_engine_mocks import (  # noqa: E402
    MockPycudaDriver,
    MockTensorRT10,
    MockTensorRT11,
    MockTensorRTRTX,
)

from edgeas.artifacts import sha256_file, sidecar_path  # noqa: E402
from edgeas.errors import ArtifactError, ConfigError, DependencyError  # noqa: E402
from edgeas.export.engine import BuildOptions, build_engine, prepare_onnx  # noqa: E402
from edgeas.export.trt_build import Flavour, GpuInfo, parse_onnx, probe_gpu  # noqa: E402
from edgeas.onnxio import get_metadata, set_metadata  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _rtx():
    try:
        import tensorrt_rtx
    except ImportError as exc:
        pytest.skip(f"tensorrt_rtx cannot be imported ({exc}); pip install tensorrt-rtx")
    return Flavour("tensorrt_rtx", tensorrt_rtx, tensorrt_rtx.__version__)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny preset (untrained) as dynamic-batch FP32 ONNX and its typed FP16 graph."""
    from edgeas.export.command import random_init_model
    from edgeas.export.fp16 import convert_to_fp16
    from edgeas.export.onnx_export import export_model

    folder = tmp_path_factory.mktemp("engine")
    model, record = random_init_model("tiny")
    result = export_model(model, record, batch=None, images=2)
    fp32 = folder / "model.onnx"
    fp32.write_bytes(result.model.SerializeToString())
    typed, _ = convert_to_fp16(result.model)
    set_metadata(typed, dataclasses.replace(result.record, precision="fp16").to_json())
    fp16 = folder / "model.fp16.onnx"
    fp16.write_bytes(typed.SerializeToString())
    return {"fp32": fp32, "fp16": fp16, "record": result.record}


SIDECAR_KEYS = {
    "tensorrt_version", "tensorrt_flavour", "gpu", "compute_capability", "gpu_reason",
    "onnx_sha256", "onnx_file", "precision", "inputs", "outputs", "build_options",
    "calibration", "engine_sha256", "engine_bytes", "build_seconds", "built_at",
}


def _check_sidecar(engine: Path, onnx_path: Path, precision: str) -> dict:
    side = json.loads(sidecar_path(engine).read_text())
    assert set(side) >= SIDECAR_KEYS
    meta = get_metadata(onnx.load(str(onnx_path)))
    assert {k: side[k] for k in meta if k != "precision"} == {
        k: v for k, v in meta.items() if k != "precision"
    }
    assert side["precision"] == precision
    assert side["onnx_sha256"] == sha256_file(onnx_path)
    assert side["engine_sha256"] == sha256_file(engine)
    assert side["engine_bytes"] == engine.stat().st_size > 0
    return side


# --------------------------------------------------------------------------- TensorRT-RTX


@pytest.mark.trt
def test_rtx_builds_the_fp32_onnx_from_the_cli_with_torch_blocked(models, tmp_path):
    rtx = _rtx()
    engine = tmp_path / "model.engine"
    result = edgeas_without(
        ("torch",), "build-engine", "--onnx", str(models["fp32"]), "-o", str(engine),
        "--tensorrt", "tensorrt_rtx", "--optimization-level", "0", "--min-batch", "1",
        "--opt-batch", "2", "--max-batch", "4", "--timing-cache", str(tmp_path / "timing.cache"),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    side = _check_sidecar(engine, models["fp32"], "fp32")
    assert side["tensorrt_flavour"] == "tensorrt_rtx" and side["tensorrt_version"] == rtx.version
    assert side["inputs"] == [{"name": "image", "dtype": "float32", "shape": [-1, 3, 224, 224]}]
    assert [o["name"] for o in side["outputs"]] == [f"dist_res{i}" for i in range(1, 5)]
    assert side["build_options"]["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert side["build_options"]["strongly_typed"] is True
    assert side["build_options"]["cleared_flags"] == ["TF32"]  # on the real builder config
    if side["gpu"] is None:
        assert side["gpu_reason"]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert "wrote" in result.stderr and "TensorRT-RTX" in result.stderr


@pytest.mark.trt
def test_rtx_builds_the_typed_fp16_onnx(models, tmp_path):
    flavour = _rtx()
    engine = tmp_path / "model.fp16.engine"
    # targets named on the real builder config. Not 7.5: TensorRT-RTX 1.7 refuses this
    # graph for Turing ("FP32 GEMM is not supported"; the typed graph keeps q.k^T in FP32)
    side = build_engine(models["fp16"], engine,
                        BuildOptions(optimization_level=0, compute_capability="8.6,8.9"), flavour)
    _check_sidecar(engine, models["fp16"], "fp16")
    assert side["build_options"]["compute_capabilities"] == ["8.6", "8.9"]
    assert side["onnx_conversion"] is None and side["build_options"]["flags"] == []
    assert side["build_options"]["batch"] == {"min": 1, "opt": 1, "max": 8}


@pytest.mark.trt
def test_rtx_parses_the_fp16_graph_made_from_the_fp32_onnx(models):
    from edgeas.export.trt_build import make_logger, network_io

    flavour = _rtx()
    prepared = prepare_onnx(flavour, models["fp32"], models["record"], "fp16")
    assert prepared.precision == "fp16" and isinstance(prepared.source, bytes)
    assert prepared.conversion["kept_fp32"]["tail"] > 0
    parsed = parse_onnx(flavour, prepared.source, make_logger(flavour.trt), "converted")
    io = network_io(flavour.trt, parsed.network)
    assert {t["dtype"] for t in io["inputs"] + io["outputs"]} == {"float32"}


@pytest.mark.trt
def test_rtx_parser_error_names_the_node(models, tmp_path):
    flavour = _rtx()
    f = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("NoSuchOp", ["image"], ["dist_res1"], name="/decoder/odd")],
        "g", [onnx.helper.make_tensor_value_info("image", f, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("dist_res1", f, [1, 3, 8, 8])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    set_metadata(model, models["record"].to_json())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(model.SerializeToString())
    with pytest.raises(ArtifactError) as err:
        build_engine(bad, tmp_path / "bad.engine", BuildOptions(), flavour)
    assert "/decoder/odd" in str(err.value) and "cannot parse" in str(err.value)
    assert not (tmp_path / "bad.engine").exists()


# --------------------------------------------------------------------------- errors


def test_missing_tensorrt_is_one_dependency_error_naming_the_install(models, tmp_path):
    result = edgeas_without(("tensorrt", "tensorrt_rtx"), "build-engine", "--onnx",
                            str(models["fp32"]), "-o", str(tmp_path / "m.engine"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1 and "pip install tensorrt" in result.stderr


def test_engine_builder_runs_with_torch_blocked(models, tmp_path):
    """The whole build path (here on the TensorRT 10 mock, FP16 with FP32 pinning and
    the INT8 calibrator module) with any import of torch failing."""
    engine = tmp_path / "m.engine"
    script = (
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from pathlib import Path\n"
        "from test_build_engine_mocks import MockTensorRT10\n"
        "from edgeas.export import engine, trt_build, trt_calibrator  # noqa\n"
        "side = engine.build_engine(\n"
        f"    Path({str(models['fp32'])!r}), Path({str(engine)!r}),\n"
        "    engine.BuildOptions(precision='fp16'),\n"
        "    trt_build.Flavour('tensorrt', MockTensorRT10(), '10.3.0'),\n"
        "    trt_build.GpuInfo('mock', '8.7'))\n"
        "assert side['build_options']['fp32_layers'] > 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    result = run_without(("torch",), script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['torch']"  # only the blocking sentinel
    assert engine.read_bytes() == MockTensorRT10.ENGINE


def test_standard_tensorrt_without_a_gpu_is_a_dependency_error(models, tmp_path):
    flavour = Flavour("tensorrt", MockTensorRT10(), "10.3.0")
    with pytest.raises(DependencyError, match="NVIDIA GPU"):
        build_engine(models["fp32"], tmp_path / "m.engine", BuildOptions(), flavour,
                     GpuInfo(None, None, "no CUDA driver"))


def test_precision_requests_that_cannot_be_met_are_config_errors(models, tmp_path):
    gpu = GpuInfo("mock GPU", "8.6")
    t10 = Flavour("tensorrt", MockTensorRT10(), "10.3.0")
    t11 = Flavour("tensorrt", MockTensorRT11(), "11.4.0")
    cases = [
        (t10, models["fp16"], BuildOptions(precision="fp32"), "cannot become"),
        (t10, models["fp32"], BuildOptions(precision="int8"), "--calib-images"),
        (t11, models["fp32"], BuildOptions(precision="int8"), "edgeas calibrate"),
        (t10, models["fp32"], BuildOptions(precision="fp32", dla_core=0), "FP16 or INT8"),
        (t11, models["fp32"], BuildOptions(precision="fp16", dla_core=0), "TensorRT 10"),
        (t10, models["fp32"], BuildOptions(gpu_fallback=True), "--dla-core"),
        (t10, models["fp32"], BuildOptions(min_batch=4, opt_batch=2), "min <= opt"),
        (t10, models["fp32"], BuildOptions(precision="bf16"), "--precision bf16"),
    ]
    for flavour, onnx_path, options, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_engine(onnx_path, tmp_path / "m.engine", options, flavour, gpu)
    assert not (tmp_path / "m.engine").exists()


# --------------------------------------------------------------------------- mocks


def test_mock_tensorrt10_fp16_uses_flags_pins_fp32_layers_and_writes_the_sidecar(models, tmp_path):
    from edgeas.export.fp16 import fp32_node_names

    trt = MockTensorRT10()
    engine = tmp_path / "orin.engine"
    options = BuildOptions(precision="fp16", workspace_gb=1, min_batch=1, opt_batch=2,
                           max_batch=4, timing_cache=tmp_path / "t.cache", dla_core=1,
                           gpu_fallback=True)
    side = build_engine(models["fp32"], engine, options, Flavour("tensorrt", trt, "10.3.0"),
                        GpuInfo("Orin (mock)", "8.7"))
    assert trt.call_names() == [
        "create_network", "parse_from_file", "create_builder_config", "set_memory_pool_limit",
        "create_optimization_profile", "set_shape", "add_optimization_profile",
        "set_flag", "set_flag", "set_flag", "create_timing_cache", "set_timing_cache",
        "build_serialized_network", "serialize_timing_cache",
    ]
    assert trt.calls[0][1] == (0,)  # weakly typed: precision comes from the flags
    assert trt.calls[3][1] == ("WORKSPACE", 2**30)
    assert trt.calls[5][1][1:] == ((1, 3, 224, 224), (2, 3, 224, 224), (4, 3, 224, 224))
    assert [c[1][0] for c in trt.calls if c[0] == "set_flag"] == [
        "FP16", "PREFER_PRECISION_CONSTRAINTS", "GPU_FALLBACK"]
    kept = set(fp32_node_names(onnx.load(str(models["fp32"]))))
    assert trt.pinned and trt.pinned <= kept
    assert side["build_options"]["fp32_layers"] == len(trt.pinned)
    assert (trt.config.default_device_type, trt.config.DLA_core) == ("DLA", 1)
    assert engine.read_bytes() == trt.ENGINE
    assert (tmp_path / "t.cache").read_bytes() == trt.TIMING
    assert side["tensorrt_flavour"] == "tensorrt" and side["tensorrt_version"] == "10.3.0"
    assert (side["gpu"], side["compute_capability"]) == ("Orin (mock)", "8.7")
    assert side["calibration"] is None and side["precision"] == "fp16"


def test_a_foreign_timing_cache_falls_back_to_an_empty_one_and_the_engine_is_saved_first(
    models, tmp_path, monkeypatch
):
    """set_timing_cache returns False for a cache of another device or TensorRT version:
    the build goes on with an empty cache (said in the sidecar), and the engine is on
    disk before the timing cache is serialised."""
    from edgeas.export import engine as engine_module

    trt = MockTensorRT10()
    real_save = engine_module.save

    def save(output, data, sidecar):
        trt.record("save_engine")
        real_save(output, data, sidecar)

    monkeypatch.setattr(engine_module, "save", save)
    cache = tmp_path / "t.cache"
    cache.write_bytes(trt.FOREIGN_TIMING)
    side = build_engine(models["fp32"], tmp_path / "m.engine", BuildOptions(timing_cache=cache),
                        Flavour("tensorrt", trt, "10.3.0"), GpuInfo("mock", "8.7"))
    creates = [c[1][0] for c in trt.calls if c[0] == "create_timing_cache"]
    assert creates == [trt.FOREIGN_TIMING, b""]
    assert [c[1][0] for c in trt.calls if c[0] == "set_timing_cache"] == [False, False]
    assert side["build_options"]["timing_cache"] == {
        "file": str(cache), "reused": False,
        "note": "made by another GPU or TensorRT version: started empty"}
    names = trt.call_names()
    assert names.index("save_engine") < names.index("serialize_timing_cache")
    assert cache.read_bytes() == trt.TIMING


@pytest.mark.parametrize(("trt", "precision", "cleared"), [
    (MockTensorRT10(), "fp32", ["TF32"]), (MockTensorRT10(), "fp16", []),
    (MockTensorRT11(), "fp32", ["TF32"]),
])
def test_fp32_engines_clear_tf32(models, tmp_path, trt, precision, cleared):
    """TensorRT allows TF32 for FP32 tensors by default (Ampere and newer): an FP32
    engine clears it, so that FP32 means FP32 against ONNX Runtime's reference."""
    side = build_engine(models["fp32"], tmp_path / "m.engine", BuildOptions(precision=precision),
                        Flavour("tensorrt", trt, trt.__version__), GpuInfo("mock", "8.7"))
    assert [c[1][0] for c in trt.calls if c[0] == "clear_flag"] == cleared
    assert side["build_options"]["cleared_flags"] == cleared


def test_dla_refuses_up_front_what_it_cannot_build_without_gpu_fallback(models, tmp_path):
    """The DLA runs FP16/INT8 layers of static shape only (TensorRT's 'DLA Supported
    Layers and Restrictions': the profile's min, opt and max must be equal): FP32-pinned
    layers or a dynamic batch need --gpu-fallback; refused before anything is built."""
    gpu = GpuInfo("Orin (mock)", "8.7")
    static = dict(min_batch=2, opt_batch=2, max_batch=2)
    cases = [
        (BuildOptions(precision="fp16", dla_core=0, **static), "kept in FP32"),
        (BuildOptions(precision="int8", dla_core=0, calib_images=tmp_path), "dynamic batch 1..8"),
    ]
    for options, message in cases:
        trt = MockTensorRT10()
        with pytest.raises(ConfigError, match=message) as info:
            build_engine(models["fp32"], tmp_path / "m.engine", options,
                         Flavour("tensorrt", trt, "10.3.0"), gpu)
        assert "\n" not in info.value.message and "--gpu-fallback" in info.value.hint
        assert "create_builder_config" not in trt.call_names()  # nothing configured
    ok = MockTensorRT10()
    build_engine(models["fp32"], tmp_path / "m.engine",
                 BuildOptions(precision="fp16", dla_core=0, gpu_fallback=True),
                 Flavour("tensorrt", ok, "10.3.0"), gpu)
    assert ok.config.default_device_type == "DLA"


@pytest.mark.parametrize(("wanted", "gpu", "targets"), [
    (None, GpuInfo("NVIDIA GeForce RTX 2080 (mock)", "7.5"), ["7.5"]),  # Turing: from the GPU
    (None, GpuInfo("NVIDIA GeForce RTX 4090 (mock)", "8.9"), None),  # the portable default
    (None, GpuInfo(None, None, "no CUDA driver"), None),
    ("8.6,8.9", GpuInfo(None, None, "no CUDA driver"), ["8.6", "8.9"]),
])
def test_tensorrt_rtx_compute_capabilities_and_no_explicit_batch(models, tmp_path, wanted, gpu,
                                                                   targets):
    """TensorRT-RTX engines run by default on 8.6/8.9/12.0 but Turing (7.5) must be named
    at build time (NVIDIA's TensorRT-RTX api_usage sample); EXPLICIT_BATCH is deprecated
    and ignored there (its 1.x version passed `major < 10`): never set."""
    trt = MockTensorRTRTX()
    side = build_engine(models["fp32"], tmp_path / "m.engine",
                        BuildOptions(compute_capability=wanted),
                        Flavour("tensorrt_rtx", trt, "1.0.0"), gpu)
    typed = 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert trt.calls[0] == ("create_network", (typed,))
    set_cc = [c[1] for c in trt.calls if c[0] == "set_compute_capability"]
    expected = [(f"SM{t.replace('.', '')}", i) for i, t in enumerate(targets or [])]
    assert set_cc == expected
    assert trt.config.num_compute_capabilities == len(targets or [])
    assert side["build_options"]["compute_capabilities"] == targets


def test_compute_capability_errors(models, tmp_path):
    gpu = GpuInfo("mock", "8.7")
    cases = [
        (Flavour("tensorrt_rtx", MockTensorRTRTX(), "1.0.0"), "9.9", "no compute capability 9.9"),
        (Flavour("tensorrt_rtx", MockTensorRTRTX(), "1.0.0"), "sm75", "--compute-capability sm75"),
        (Flavour("tensorrt", MockTensorRT10(), "10.3.0"), "8.7", "TensorRT-RTX only"),
    ]
    for flavour, value, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            build_engine(models["fp32"], tmp_path / "m.engine",
                         BuildOptions(compute_capability=value), flavour, gpu)
        assert "\n" not in info.value.message


def test_mock_tensorrt11_fp16_is_strongly_typed_from_a_converted_graph(models, tmp_path):
    trt = MockTensorRT11()
    side = build_engine(models["fp32"], tmp_path / "m.engine", BuildOptions(precision="fp16"),
                        Flavour("tensorrt", trt, "11.4.0"), GpuInfo("RTX (mock)", "8.9"))
    assert trt.call_names()[:2] == ["create_network", "parse"]  # bytes of the typed graph
    assert trt.calls[0][1] == (1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED,)
    assert "set_flag" not in trt.call_names()
    assert trt.parsed_model_has_fp16
    assert side["onnx_conversion"]["to"] == "fp16" and side["build_options"]["flags"] == []


def _write_images(folder: Path, count: int, seed: int = 0) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (64, 80, 3), np.uint8))


def test_mock_tensorrt10_int8_calibrates_on_normal_images_and_reuses_only_a_matching_cache(
    models, tmp_path, monkeypatch
):
    from edgeas.calibimages import list_images
    from edgeas.preprocess import preprocess_bgr

    cuda = MockPycudaDriver()
    monkeypatch.setitem(sys.modules, "pycuda", cuda.package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    images = tmp_path / "good"
    _write_images(images, 36)
    options = BuildOptions(precision="int8", calib_images=images, calib_batch=8)
    flavour, gpu = Flavour("tensorrt", MockTensorRT10(), "10.3.0"), GpuInfo("mock", "8.7")
    engine = tmp_path / "m.engine"

    side = build_engine(models["fp32"], engine, options, flavour, gpu)
    trt = flavour.trt
    assert trt.batches_seen == 4 and trt.config.calibration_shape == (8, 3, 224, 224)
    assert side["calibration"]["images"] == 32 and side["calibration"]["method"] == "entropy2"
    assert side["calibration"]["cache_reused"] is False
    assert [c[1][0] for c in trt.calls if c[0] == "set_flag"] == ["FP16", "INT8"]
    recipe = models["record"].preprocessing
    import cv2

    first = np.stack([preprocess_bgr(cv2.imread(str(p)), recipe)
                      for p in list_images(images)[:8]])
    assert np.array_equal(cuda.uploads[0], first) and cuda.freed and cuda.popped

    again = build_engine(models["fp32"], engine, options,
                         Flavour("tensorrt", MockTensorRT10(), "10.3.0"), gpu)
    assert again["calibration"]["cache_reused"] is True
    assert again["calibration"]["file_list_sha256"] == side["calibration"]["file_list_sha256"]

    _write_images(images, 1, seed=1)  # 000.png changes: the old cache must not be reused
    changed = MockTensorRT10()
    third = build_engine(models["fp32"], engine, options,
                         Flavour("tensorrt", changed, "10.3.0"), gpu)
    assert third["calibration"]["cache_reused"] is False and changed.batches_seen == 4


def test_a_config_error_after_the_calibrator_exists_pops_its_context(models, tmp_path,
                                                                     monkeypatch):
    """The calibrator's device input pushes the primary context until close(): a
    ConfigError from the builder config (here --workspace-gb 0) must still close it, or
    pycuda aborts at exit (exit 134) instead of the one-line error."""
    from edgeas.export import trt_calibrator

    cuda = MockPycudaDriver()
    monkeypatch.setitem(sys.modules, "pycuda", cuda.package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    made = []  # keeps the calibrator alive: only an explicit close() may pop, not the GC

    def keep(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    make = trt_calibrator.make_entropy_calibrator
    monkeypatch.setattr(trt_calibrator, "make_entropy_calibrator", keep)
    images = tmp_path / "good"
    _write_images(images, 32)
    options = BuildOptions(precision="int8", calib_images=images, workspace_gb=0)
    with pytest.raises(ConfigError, match="--workspace-gb"):
        build_engine(models["fp32"], tmp_path / "m.engine", options,
                     Flavour("tensorrt", MockTensorRT10(), "10.3.0"), GpuInfo("mock", "8.7"))
    assert len(made) == 1 and cuda.depth == 0 and cuda.freed


# --------------------------------------------------------------------------- real GPU


def _tensorrt_and_gpu():
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        pytest.skip(f"needs NVIDIA TensorRT (pip install tensorrt) and a GPU: {exc}")
    gpu = probe_gpu()
    if gpu.name is None:
        pytest.skip(f"needs an NVIDIA GPU: {gpu.reason}")
    return Flavour("tensorrt", tensorrt, tensorrt.__version__), gpu


@pytest.mark.gpu
@pytest.mark.trt
# decided before the `models` fixture exports: without TensorRT there is nothing to do
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="needs NVIDIA TensorRT (not installed)")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_standard_tensorrt_builds_and_deserialises_on_a_gpu(models, tmp_path, precision):
    flavour, gpu = _tensorrt_and_gpu()
    engine = tmp_path / f"{precision}.engine"
    side = build_engine(models["fp32"], engine, BuildOptions(precision=precision), flavour, gpu)
    assert side["gpu"] == gpu.name and side["compute_capability"] == gpu.compute_capability
    trt = flavour.trt
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    cuda_engine = runtime.deserialize_cuda_engine(engine.read_bytes())
    names = [cuda_engine.get_tensor_name(i) for i in range(cuda_engine.num_io_tensors)]
    assert names[0] == "image" and names[1:5] == [f"dist_res{i}" for i in range(1, 5)]


def test_auto_prefers_tensorrt_rtx_without_a_gpu_and_names_what_is_missing():
    from edgeas.export.trt_build import detect_flavour

    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        pytest.skip("tensorrt_rtx cannot be imported")
    assert detect_flavour("auto", GpuInfo(None, None, "none")).name == "tensorrt_rtx"
    with pytest.raises(ConfigError, match="--tensorrt trt"):
        detect_flavour("trt")
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        with pytest.raises(DependencyError, match="tensorrt: "):
            detect_flavour("tensorrt")


def test_probe_gpu_reports_a_device_or_why_there_is_none():
    gpu = probe_gpu()
    if gpu.name is None:
        assert gpu.compute_capability is None and gpu.reason
    else:
        major, minor = gpu.compute_capability.split(".")
        assert int(major) >= 5 and minor.isdigit()
