"""`edgeas inspect` and `edgeas.artifacts.read_metadata` for checkpoints, ONNX and engines."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeas.artifacts import onnx_metadata_props, read_metadata, sidecar_path
from edgeas.errors import ArtifactError, ConfigError
from edgeas.postprocess import make_threshold, postprocessing
from edgeas.preprocess import LITE_MEAN, LITE_STD, Recipe
from edgeas.record import ONNX_KEY, new_record


def _meta() -> dict:
    return new_record(
        preset="tiny", backbone="efficientnet_lite0",
        recipe=Recipe((224, 224), LITE_MEAN, LITE_STD), strides=[2, 4, 8, 16],
        postprocess=postprocessing("reference", make_threshold(None, "quantile", None,
                                                               "reference")),
        classes=["bottle", "cable"], data_fingerprint="abc", config={"preset": "tiny"},
    ).to_json()


def _inspect(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeas", "inspect", str(path)],
                          capture_output=True, text=True, timeout=300)


def _onnx_file(tmp_path, props: dict[str, str], name: str = "m.onnx"):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    big = numpy_helper.from_array(np.arange(300_000, dtype=np.float32).reshape(1, -1), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 300_000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 300_000])], [big],
    )
    model = helper.make_model(graph)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_onnx_metadata_is_read_without_loading_the_graph_and_matches_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    meta = _meta()
    props = {"author": "someone", ONNX_KEY: json.dumps(meta), "note": "ünïcode"}
    path = _onnx_file(tmp_path, props)
    assert path.stat().st_size > 1_000_000  # the 1.2 MB initializer is skipped by seeking
    stored = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert onnx_metadata_props(path) == stored
    assert read_metadata(path) == meta


def test_inspect_prints_onnx_engine_and_checkpoint_metadata(tmp_path):
    torch = pytest.importorskip("torch")
    from edgeas.train.checkpoint import save_checkpoint

    meta = _meta()
    onnx_path = _onnx_file(tmp_path, {ONNX_KEY: json.dumps(meta)})
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    sidecar = dict(meta, precision="fp16", tensorrt_version="10.3.0", gpu="Orin")
    sidecar_path(engine).write_text(json.dumps(sidecar))
    ckpt = tmp_path / "last.pt"
    save_checkpoint(ckpt, {"config": {"preset": "tiny"}, "metadata": meta,
                           "model": {"w": torch.zeros(1)}})
    for path, want in ((onnx_path, meta), (engine, sidecar), (ckpt, meta)):
        result = _inspect(path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == want


def test_artifacts_without_metadata_are_clear_errors(tmp_path):
    no_meta = _onnx_file(tmp_path, {"author": "x"}, "plain.onnx")
    result = _inspect(no_meta)
    assert result.returncode == 1 and "carries no edgeas metadata" in result.stderr
    assert "edgeas export" in result.stderr and "Traceback" not in result.stderr

    engine = tmp_path / "lonely.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="no sidecar lonely.engine.json"):
        read_metadata(engine)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(bytes([0x0F, 0xFF, 0xFF, 0x07]))  # wire type 7 does not exist
    with pytest.raises(ArtifactError, match="not a readable ONNX model"):
        read_metadata(garbage)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ArtifactError, match="unknown kind of artifact"):
        read_metadata(other)
    with pytest.raises(ConfigError, match="file not found"):
        read_metadata(tmp_path / "missing.onnx")
    broken = tmp_path / "bad.onnx"
    broken.write_bytes(_onnx_file(tmp_path, {ONNX_KEY: "{not json"}, "b.onnx").read_bytes())
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_metadata(broken)
