"""`edgeas export-triton`: the model repository, its config.pbtxt parsed with Triton's own
schema (tritonclient's model_config_pb2), and the one-line refusals. No server needed
(tests/test_triton_stream.py serves these repositories)."""

from __future__ import annotations

import json
import re

import pytest
from test_stream_support import edgeas, trained_model_path

from edgeas.artifacts import read_onnx_metadata

pytest.importorskip("onnxruntime")
pb = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                         reason="tritonclient[grpc] is not installed (the `triton` extra)")
text_format = pytest.importorskip("google.protobuf.text_format")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return (trained_model_path(tmp_path_factory),
            trained_model_path(tmp_path_factory, dynamic_batch=True))


def _config(path):
    return text_format.Parse(path.read_text(), pb.ModelConfig())


def _error_lines(run):
    return [line for line in run.stderr.splitlines() if line.startswith("error:")]


def test_repository_config_parses_with_tritons_schema(models, tmp_path):
    _, dynamic = models
    repo = tmp_path / "repo"
    run = edgeas("export-triton", "--onnx", str(dynamic), "-o", str(repo), "--name", "line1",
                 "--max-batch", "4", "--instances", "2", "--queue-delay-us", "500")
    assert "queue delay of 500 us" in run.stderr
    cfg = _config(repo / "line1" / "config.pbtxt")
    assert cfg.name == "line1" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 4
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [
        ("image", pb.DataType.TYPE_FP32, [3, 224, 224])]
    # the level maps at strides 2, 4, 8, 16 of the 224 input, batch dimension left out
    assert [(t.name, list(t.dims)) for t in cfg.output] == [
        ("dist_res1", [1, 112, 112]), ("dist_res2", [1, 56, 56]), ("dist_res3", [1, 28, 28]),
        ("dist_res4", [1, 14, 14])]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [
        (2, pb.ModelInstanceGroup.Kind.KIND_CPU)]
    assert cfg.HasField("dynamic_batching")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert json.loads(cfg.parameters["edgeas"].string_value) == read_onnx_metadata(dynamic)
    assert (repo / "line1" / "1" / "model.onnx").read_bytes() == dynamic.read_bytes()
    assert not [p for p in repo.rglob("*") if p.name.startswith(".")]  # no temp files left


def test_a_fixed_batch_onnx_is_refused_unless_batching_is_off(models, tmp_path):
    static, _ = models
    repo = tmp_path / "repo"
    run = edgeas("export-triton", "--onnx", str(static), "-o", str(repo), check=False)
    assert run.returncode == 2, run.stderr
    assert len(_error_lines(run)) == 1 and "fixed batch of 1" in run.stderr
    assert "--dynamic-batch" in run.stderr and "Traceback" not in run.stderr
    assert not (repo / "edgeas" / "config.pbtxt").exists()
    edgeas("export-triton", "--onnx", str(static), "-o", str(repo), "--max-batch", "0")
    cfg = _config(repo / "edgeas" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [1, 3, 224, 224]  # the whole shape, batch included
    assert list(cfg.output[3].dims) == [1, 1, 14, 14]


def test_an_engine_is_served_as_a_plan_on_gpu_instances(models, tmp_path):
    _, dynamic = models
    repo = tmp_path / "repo"
    edgeas("export-triton", "--onnx", str(dynamic), "-o", str(repo))  # an ONNX first
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"a serialized plan")  # never deserialised here: copied as it is
    meta = dict(read_onnx_metadata(dynamic), tensorrt_version="10.3.0", gpu="Orin",
                compute_capability="8.7", onnx_sha256="0" * 64, calibration=None,
                build_options={"batch": {"min": 1, "opt": 4, "max": 8}})
    (tmp_path / "model.engine.json").write_text(json.dumps(meta))
    edgeas("export-triton", "--onnx", str(dynamic), "--engine", str(engine), "-o", str(repo))
    cfg = _config(repo / "edgeas" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.Kind.KIND_GPU
    served = json.loads(cfg.parameters["edgeas"].string_value)
    assert served["tensorrt_version"] == "10.3.0" and served["gpu"] == "Orin"
    version = repo / "edgeas" / "1"
    assert (version / "model.plan").read_bytes() == b"a serialized plan"
    assert not (version / "model.onnx").exists()  # the earlier export's model is gone
    run = edgeas("export-triton", "--onnx", str(dynamic), "--engine", str(engine), "-o",
                 str(repo), "--max-batch", "16", check=False)
    assert run.returncode == 2 and len(_error_lines(run)) == 1
    assert "takes at most 8" in run.stderr


@pytest.mark.parametrize(("args", "culprit"), [
    (["--name", "line 1"], "--name 'line 1'"),
    (["--instances", "0"], "--instances"),
])
def test_bad_options_are_one_line_errors(models, tmp_path, args, culprit):
    _, dynamic = models
    run = edgeas("export-triton", "--onnx", str(dynamic), "-o", str(tmp_path / "r"), *args,
                 check=False)
    assert run.returncode == 2 and len(_error_lines(run)) == 1
    assert culprit in run.stderr and "Traceback" not in run.stderr


def test_no_server_at_a_triton_url_is_a_one_line_error(tmp_path):
    pytest.importorskip("tritonclient.grpc")
    import cv2
    import numpy as np
    from triton_support import free_ports

    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((32, 32, 3), np.uint8))
    port = free_ports(1)[0]
    run = edgeas("stream", "--model", f"triton://127.0.0.1:{port}/edgeas",
                 "--images", str(tmp_path), check=False, timeout=120)
    assert run.returncode == 1, run.stderr
    errors = _error_lines(run)
    assert len(errors) == 1 and f"no Triton server answers at 127.0.0.1:{port}" in errors[0]
    assert "hint:" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize(("url", "culprit"), [
    ("triton://127.0.0.1:8001/", "expected triton://HOST:PORT/NAME"),
    ("triton://127.0.0.1:8001/edgeas?retries=3", "unknown option 'retries'"),
    ("tritonhttp://127.0.0.1:8000/edgeas?timeout=0", "timeout must be a number of seconds"),
])
def test_bad_triton_urls_are_config_errors(url, culprit):
    pytest.importorskip("tritonclient.grpc")
    from edgeas.errors import ConfigError
    from edgeas.runtime.backends import open_backend

    with pytest.raises(ConfigError, match=re.escape(culprit)):
        open_backend(url)
    with pytest.raises(ConfigError, match="--device cpu"):
        open_backend("triton://127.0.0.1:8001/edgeas", device="cpu")
