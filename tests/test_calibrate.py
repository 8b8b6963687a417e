"""`edgeas calibrate` on the briefly trained tiny model of the stream tests: INT8 files
TensorRT and ONNX Runtime accept, metadata carried forward, a TensorRT cache that parses
back to the ranges, input checks, and the accuracy gate firing on near-blank images."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")

from blocked_python import edgeas_without  # noqa: E402
from test_stream_support import clean_images, hole_images, trained_model_path  # noqa: E402

from edgeas import calibcache, calibimages, ort  # noqa: E402
from edgeas.aggregate import aggregate_batch  # noqa: E402
from edgeas.artifacts import read_onnx_metadata  # noqa: E402
from edgeas.calibration import images as im  # noqa: E402
from edgeas.calibration import quantize as qz  # noqa: E402
from edgeas.calibration.command import CalibrateOptions, calibrate_command  # noqa: E402
from edgeas.calibration.cpu_chain import conv_chain_nodes  # noqa: E402
from edgeas.errors import CalibrationError, ConfigError  # noqa: E402
from edgeas.preprocess import Recipe, preprocess_bgr  # noqa: E402


def edgeas(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI in a Python where any import of torch fails: calibration never needs it."""
    return edgeas_without(("torch", "torchvision", "tensorrt", "pycuda"), *args,
                          timeout=timeout)


def _write(folder: Path, frames, suffix: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}{suffix}.png"), frame)
    return folder


def _low_contrast(count: int, seed: int = 0) -> list[np.ndarray]:
    """Mid-grey frames with +-6 grey levels of noise: images, but nothing like the product."""
    rng = np.random.default_rng(seed)
    return [(128 + rng.integers(-6, 7, (224, 224, 3))).astype(np.uint8) for _ in range(count)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_model_path(tmp_path_factory)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("calib")
    test = root / "eval" / "tissue"
    _write(test / "test" / "good", clean_images(4, seed=900))
    holes = hole_images(6)
    _write(test / "test" / "hole", [bad for bad, _ in holes])
    _write(test / "ground_truth" / "hole", [(m > 0).astype(np.uint8) * 255 for _, m in holes],
           "_mask")
    return {
        "root": root,
        "normal": _write(root / "normal", clean_images(36, seed=500)),
        "low": _write(root / "low", _low_contrast(32)),
        "eval": root / "eval",
    }


@pytest.fixture(scope="module")
def calibrated(trained, folders) -> dict:
    out = folders["root"] / "out" / "model.int8.onnx"
    result = edgeas("calibrate", "--onnx", str(trained), "--images", str(folders["normal"]),
                    "-o", str(out), "--eval-data", str(folders["eval"]))
    assert result.returncode == 0, result.stderr
    files = {"qdq": out, "cpu": out.with_name("model.int8.cpu.onnx"),
             "cache": out.with_name("model.int8.cache"),
             "report": out.with_name("model.int8.json")}
    return {**files, "log": result.stderr}


# --------------------------------------------------------------------------- the files


def test_cli_without_torch_writes_four_files_and_a_passed_gate(calibrated):
    for key in ("qdq", "cpu", "cache", "report"):
        assert calibrated[key].stat().st_size > 0, key
    report = json.loads(calibrated["report"].read_text())
    gate = report["gate"]
    assert gate["passed"] and gate["failures"] == []
    assert report["calibration"]["images"] + report["calibration"]["held_out"] == 36
    assert report["calibration"]["held_out"] >= 4
    assert report["gate"]["eval_data"]["images"] == 10
    for name in ("qdq", "qoperator"):
        entry = gate["variants"][name]
        assert entry["held_out"]["images"] == report["calibration"]["held_out"]
        assert entry["eval"]["cosine_min"]["anomaly_map"] >= 0.95
        assert abs(entry["delta_points"]["pixel_ap"]) <= 1.0
    assert gate["fp32_metrics"]["pixel_ap"] > 0.5  # the trained model finds the holes
    log = calibrated["log"]
    assert "worst per-image cosine" in log and "held out" in log and "pAP" in log
    assert "next: edgeas build-engine" in log


def test_qdq_graph_is_what_tensorrt_parses(calibrated):
    model = onnx.load(str(calibrated["qdq"]))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 8
    assert qz.qdq_problems(model) == []
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 200
    weights = 0
    for node in qdq:
        zp = onnx.numpy_helper.to_array(inits[node.input[2]])
        assert zp.dtype == np.int8 and not zp.any(), node.name  # symmetric: zero points 0
        source = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and source is not None:
            assert source.data_type == onnx.TensorProto.INT8, node.name  # never an int32 bias
            weights += 1
            if len(source.dims) > 1:  # a weight matrix: one scale per output channel
                axis = [a.i for a in node.attribute if a.name == "axis"]
                scale = inits[node.input[1]]
                assert axis and list(scale.dims) == [source.dims[axis[0]]], node.name
            assert {c.op_type for c in consumers[node.output[0]]} <= set(qz.OP_TYPES)
        if node.op_type == "QuantizeLinear" and node.input[0] in producer:
            # inputs of Conv/MatMul/Gemm are quantized, never their own outputs
            quantized_for = {c.op_type for d in consumers[node.output[0]]
                             for c in consumers[d.output[0]]}
            assert quantized_for & set(qz.OP_TYPES), node.name
    assert weights >= 180  # every Conv, MatMul and Gemm weight of the tiny model
    # biases stay float, inputs of the convolutions themselves
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 2:
            assert inits[node.input[2]].data_type == onnx.TensorProto.FLOAT


def test_cpu_model_runs_in_onnx_runtime_and_agrees_with_fp32(trained, calibrated):
    meta = read_onnx_metadata(trained)
    recipe = Recipe.from_metadata(meta)
    frames = clean_images(3, seed=4242) + [bad for bad, _ in hole_images(1, seed=4300)]
    images = np.stack([preprocess_bgr(f, recipe) for f in frames])
    cpu = onnx.load(str(calibrated["cpu"]))
    assert sum(n.op_type == "QLinearConv" for n in cpu.graph.node) > 50
    # MatMuls with a constant weight are quantized, the attention's products of two
    # activations stay float (no QLinearSoftmax either): what made INT8 pay on the CPU
    fp32 = onnx.load(str(trained))
    weights = {i.name for i in fp32.graph.initializer}
    matmuls = [n for n in fp32.graph.node if n.op_type == "MatMul"]
    constant = sum(n.input[1] in weights for n in matmuls)
    assert 0 < constant < len(matmuls)
    gemms = sum(n.op_type == "Gemm" for n in fp32.graph.node)
    ops = [n.op_type for n in cpu.graph.node]
    # with a bias after it a constant MatMul became a QGemm (calibration/cpu_gemm.py)
    assert ops.count("QGemm") > gemms
    assert ops.count("QLinearMatMul") + ops.count("QGemm") == constant + gemms
    assert ops.count("MatMul") == len(matmuls) - constant and "QLinearSoftmax" not in ops
    # the backbone's residual Adds join its convolutions (calibration/cpu_chain.py)
    chain = set(conv_chain_nodes(fp32, float_nodes=set(qz.float_head(fp32))))
    residual = [n for n in fp32.graph.node if n.name in chain and n.op_type == "Add"]
    assert residual and ops.count("QLinearAdd") == len(residual)
    want = ort.run(ort.open_session(trained.read_bytes()), images)
    got = ort.run(ort.open_session(cpu.SerializeToString()), images)
    outputs = [lv["output"] for lv in meta["levels"]]
    for name in outputs:
        assert ort.cosine_per_image(got[name], want[name]).min() > 0.9, name
    maps = [aggregate_batch([out[n][:, 0] for n in outputs], recipe.input_size, "reference")
            for out in (got, want)]
    assert ort.cosine_per_image(*maps).min() > 0.9


def test_metadata_travels_into_both_int8_models(trained, folders, calibrated):
    fp32 = read_onnx_metadata(trained)
    report = json.loads(calibrated["report"].read_text())
    for key, fmt in (("qdq", "qdq"), ("cpu", "qoperator")):
        meta = read_onnx_metadata(calibrated[key])
        assert meta["precision"] == "int8"
        assert {k: v for k, v in meta.items() if k not in ("precision", "calibration",
                                                           "quantization")} == {
            k: v for k, v in fp32.items() if k != "precision"}
        calib = meta["calibration"]
        assert calib["method"] == "entropy" and calib == report["calibration"]
        assert meta["quantization"]["format"] == fmt
    # the hash names exactly the images calibration used: all but the held-out ones
    paths = calibimages.list_images(folders["normal"])
    keep, hold = im.split_holdout(len(paths))
    assert calib["images"] == len(keep) and calib["held_out"] == len(hold)
    want = calibimages.file_list_sha256([paths[i] for i in keep], folders["normal"])
    assert calib["file_list_sha256"] == want


def test_cache_parses_and_holds_the_scales_of_the_qdq_model(trained, calibrated):
    head, scales = calibcache.parse(calibrated["cache"].read_text())
    assert head == "TRT-100300-EntropyCalibration2"
    fp32 = onnx.load(str(trained))
    tensors = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output}
    assert set(scales) <= tensors and "image" in scales
    assert len(scales) > 500 and all(s > 0 for s in scales.values())
    # each activation Q/DQ scale of model.int8.onnx is amax / 127 of the same range
    model = onnx.load(str(calibrated["qdq"]))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    checked = 0
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            assert float(inits[node.input[1]]) == pytest.approx(scales[node.input[0]], rel=1e-5)
            checked += 1
    assert checked > 100


def _mock_trt10_build(onnx_path: Path, engine: Path, cache: Path, monkeypatch, version="10.3.0"):
    """build-engine INT8 on the TensorRT 10 mock (a mock: it proves the call sequence and the
    cache handling, nothing about TensorRT itself), with no calibration images."""
    from fake_cuda import FakeCuda
    from test_build_engine_mocks import MockTensorRT10

    from edgeas.export import trt_calibrator
    from edgeas.export.engine import BuildOptions, build_engine
    from edgeas.export.trt_build import Flavour, GpuInfo

    cuda = FakeCuda()  # a stand-in for the CUDA layer: records the uploads, needs no GPU
    monkeypatch.setattr(trt_calibrator, "open_cuda", lambda device=0: cuda)
    trt = MockTensorRT10(version)
    side = build_engine(onnx_path, engine, BuildOptions(precision="int8", calib_cache=cache),
                        Flavour("tensorrt", trt, version), GpuInfo("Orin (mock)", "8.7"))
    return side, trt, cuda


def test_mock_tensorrt10_build_engine_reuses_the_cache_of_calibrate_without_images(
    trained, calibrated, tmp_path, monkeypatch
):
    from edgeas.artifacts import sha256_file

    record = json.loads(calibcache.record_path(calibrated["cache"]).read_text())
    report = json.loads(calibrated["report"].read_text())
    assert record["made_by"] == "edgeas calibrate" and record["onnx_sha256"] == sha256_file(trained)
    assert record["header"] == calibrated["cache"].read_text().splitlines()[0]
    assert {k: record[k] for k in ("method", "images", "file_list_sha256")} == {
        k: report["calibration"][k] for k in ("method", "images", "file_list_sha256")}
    before = calibrated["cache"].read_bytes()

    side, trt, cuda = _mock_trt10_build(trained, tmp_path / "m.engine", calibrated["cache"],
                                        monkeypatch)
    assert trt.batches_seen == 0 and cuda.uploads == []  # the scales came from the cache
    assert side["calibration"]["cache_reused"] is True
    assert side["calibration"]["made_by"] == "edgeas calibrate"
    assert side["calibration"]["file_list_sha256"] == record["file_list_sha256"]
    assert calibrated["cache"].read_bytes() == before


def test_a_cache_of_calibrate_is_refused_for_another_onnx_or_tensorrt_version(
    trained, calibrated, tmp_path, monkeypatch
):
    cache = tmp_path / "model.int8.cache"
    cache.write_bytes(calibrated["cache"].read_bytes())
    record = json.loads(calibcache.record_path(calibrated["cache"]).read_text())
    calibcache.record_path(cache).write_text(json.dumps(dict(record, onnx_sha256="0" * 64)))
    with pytest.raises(ConfigError, match="calibrated on another ONNX"):
        _mock_trt10_build(trained, tmp_path / "a.engine", cache, monkeypatch)
    calibcache.record_path(cache).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="TRT-100300-EntropyCalibration2") as info:
        _mock_trt10_build(trained, tmp_path / "b.engine", cache, monkeypatch, version="10.7.0")
    assert "--trt-version 10.7.0" in info.value.hint
    assert not (tmp_path / "a.engine").exists() and not (tmp_path / "b.engine").exists()


def test_cache_format_round_trips_exactly():
    amax = {"image": 1.0, "a/b:0": 0.3, "name: with colon": 7.25, "zero": 0.0}
    text, skipped = calibcache.render(amax, "10.3.0")
    lines = text.splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2" and skipped == ["zero"]
    assert "image: 3c010204" in lines  # 1/127 as big-endian float32 bits
    head, scales = calibcache.parse(text)
    assert head == lines[0]
    assert scales == {k: float(np.float32(v / 127.0)) for k, v in amax.items() if v}
    assert calibcache.header("8.6.1") == "TRT-8601-EntropyCalibration2"
    assert calibcache.version_number("10.13.2") == 101302


# --------------------------------------------------------------------------- the gate


def test_near_blank_calibration_fails_the_gate_unless_allowed(trained, folders):
    out = folders["root"] / "low" / "out" / "low.int8.onnx"
    args = ["calibrate", "--onnx", str(trained), "--images", str(folders["low"]), "-o", str(out),
            "--eval-data", str(folders["eval"]), "--method", "minmax"]
    failed = edgeas(*args)
    assert failed.returncode == 1, failed.stderr
    assert "almost no contrast" in failed.stderr  # warned, not refused
    assert "INT8 accuracy gate failed" in failed.stderr and "pAP drops" in failed.stderr
    report = json.loads(out.with_name("low.int8.json").read_text())
    assert not report["gate"]["passed"]
    assert report["gate"]["criteria"]["judged_by"] == "pap_drop"
    for fmt in ("qdq", "qoperator"):  # written anyway, for inspection
        assert report["gate"]["variants"][fmt]["delta_points"]["pixel_ap"] < -1.0
    assert out.is_file() and out.with_name("low.int8.cpu.onnx").is_file()
    allowed = edgeas(*args, "--allow-drop")
    assert allowed.returncode == 0, allowed.stderr
    assert "kept by --allow-drop" in allowed.stderr


# --------------------------------------------------------------------------- mixed precision


def test_auto_method_keep_float_and_mixed_precision_write_the_plan_everywhere(
    trained, folders
):
    from edgeas.calibration import sensitivity as sv

    block = "/predictor/transformer_block.0"
    nodes = set(sv.quantizable_blocks(onnx.load(str(trained)))[block])
    out = folders["root"] / "mixed" / "model.int8.onnx"
    result = edgeas("calibrate", "--onnx", str(trained), "--images", str(folders["normal"]),
                    "-o", str(out), "--eval-data", str(folders["eval"]), "--keep-float", block,
                    "--mixed-precision", "--method", "auto")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.with_name("model.int8.json").read_text())
    sens = json.loads(out.with_name("model.int8.sensitivity.json").read_text())
    assert report["files"]["sensitivity"].endswith("model.int8.sensitivity.json")
    assert sens["keep_float"] == [block] and sens["blocks"][block] == len(nodes)
    # --method auto: every method scored per format, the least damaging one taken
    assert report["ranges"]["method"] == "auto" and report["calibration"]["method"] == "auto"
    for fmt, choice in report["method_choice"].items():
        methods = {m: v for m, v in choice.items() if m != "chosen"}
        assert set(methods) == {"entropy", "percentile", "minmax"}
        assert choice["chosen"] == min(methods, key=lambda m: methods[m]["damage"])
        assert report["ranges"]["per_format"][fmt] == choice["chosen"]
        assert sens["formats"][fmt]["method"] == choice["chosen"]
    for fmt, path in (("qdq", out), ("qoperator", out.with_name("model.int8.cpu.onnx"))):
        entry = sens["formats"][fmt]
        assert entry["all_int8"]["cosine_min"]["anomaly_map"] > 0.9
        assert entry["targets"]["cosine_always"] is (fmt == "qdq")
        model = onnx.load(str(path))
        inits = {i.name for i in model.graph.initializer}
        kept = [n for n in model.graph.node if n.name in nodes]
        assert len(kept) == len(nodes)  # still float Conv/MatMul/Gemm, by their own names
        assert all(n.op_type in qz.OP_TYPES for n in kept)
        for n in kept:  # a weight is a float initializer, never a DequantizeLinear output
            assert n.op_type != "Conv" or n.input[1] in inits, n.name
        meta = read_onnx_metadata(path)["quantization"]
        assert meta["float_nodes"] >= len(nodes) and meta["keep_float"] == [block]
        assert meta["method"] == report["ranges"]["per_format"][fmt]
        assert report["float"][fmt]["nodes"] >= len(nodes)
    # the TensorRT 10 cache leaves out what feeds the float nodes: both routes agree
    left_out = set(report["trt_cache"]["left_out_float"])
    _, scales = calibcache.parse(out.with_name("model.int8.cache").read_text())
    assert left_out and not left_out & set(scales)
    bad = edgeas("calibrate", "--onnx", str(trained), "--images", str(folders["normal"]),
                 "-o", str(out), "--keep-float", "/nowhere")
    assert bad.returncode == 2 and "--keep-float /nowhere" in bad.stderr


# --------------------------------------------------------------------------- input checks


def _options(**kw) -> CalibrateOptions:
    return CalibrateOptions(**kw)


def test_too_few_unreadable_or_blank_images_are_refused_before_any_work(trained, tmp_path):
    out = tmp_path / "m.int8.onnx"
    few = _write(tmp_path / "few", clean_images(31, seed=1))
    with pytest.raises(CalibrationError, match="at least 32"):
        calibrate_command(trained, few, out, _options())
    blank = _write(tmp_path / "blank", [np.full((224, 224, 3), 90 + i, np.uint8)
                                        for i in range(32)])
    with pytest.raises(CalibrationError, match="all 32 calibration images are blank"):
        calibrate_command(trained, blank, out, _options())
    assert not out.exists()
    bad = _write(tmp_path / "bad", clean_images(33, seed=2))
    (bad / "007.png").write_bytes(b"\x89PNG but not really")
    result = edgeas("calibrate", "--onnx", str(trained), "--images", str(bad), "-o", str(out))
    assert result.returncode == 2
    message = " ".join(result.stderr.split())  # the console wraps long lines
    assert "007.png cannot be read" in message and "Traceback" not in message


def test_wrong_arguments_are_usage_errors(trained, folders, tmp_path):
    good = tmp_path / "x.int8.onnx"
    for output, opts, message in [
        (tmp_path / "x.engine", _options(), "must be an .onnx file"),
        (trained, _options(), "would overwrite the FP32 model"),
        (good, _options(method="kl"), "--method kl"),
        (good, _options(max_pap_drop=-1.0), "--max-pap-drop"),
        (good, _options(min_cosine=1.5), "--min-cosine"),
        (good, _options(trt_version="ten"), "--trt-version"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            calibrate_command(trained, folders["normal"], output, opts)
        assert info.value.exit_code == 2
    assert not good.exists()


def test_image_checks_warn_about_grey_low_contrast_and_clipped_sets():
    recipe = Recipe((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    rng = np.random.default_rng(0)
    grey = [np.repeat(rng.integers(0, 256, (32, 32, 1), np.uint8), 3, axis=2)
            for _ in range(4)]
    frames = grey + [np.full((32, 32, 3), 255, np.uint8), _low_contrast(1)[0][:32, :32]]
    tensors = np.stack([preprocess_bgr(f, recipe) for f in frames])
    check = im.check_images(tensors, recipe, [Path(f"{i}.png") for i in range(len(frames))])
    assert check.blank == ["4.png"] and check.low_contrast == ["5.png"]
    assert check.clipped == ["4.png"] and not check.grayscale
    assert len(check.warnings) == 3
    only_grey = tensors[:4]
    check = im.check_images(only_grey, recipe, [Path(f"{i}.png") for i in range(4)])
    assert check.grayscale and check.warnings and check.channel_mean[0] == check.channel_mean[2]


def test_held_out_images_are_spread_and_disjoint():
    for count in (32, 33, 100, 256):
        keep, hold = im.split_holdout(count)
        assert len(hold) == max(4, count // 8) and not set(keep) & set(hold)
        assert sorted([*keep, *hold]) == list(range(count))
        assert hold[0] == 0 and hold[-1] == count - 1  # both ends: every class is sampled


# --------------------------------------------------------------------------- TensorRT-RTX


@pytest.mark.trt
def test_rtx_builds_the_qdq_int8_model(calibrated, tmp_path):
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"tensorrt_rtx cannot be imported ({exc}); pip install tensorrt-rtx")
    engine = tmp_path / "model.int8.engine"
    result = edgeas("build-engine", "--onnx", str(calibrated["qdq"]), "--tensorrt",
                    "tensorrt_rtx", "-o", str(engine), "--optimization-level", "0")
    assert result.returncode == 0, result.stderr
    side = json.loads(engine.with_name("model.int8.engine.json").read_text())
    assert side["precision"] == "int8" and side["tensorrt_flavour"] == "tensorrt_rtx"
    assert side["calibration"]["file_list_sha256"] == read_onnx_metadata(
        calibrated["qdq"])["calibration"]["file_list_sha256"]
    assert engine.stat().st_size > 0
