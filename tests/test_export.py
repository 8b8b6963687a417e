"""`edgeas export` on the tiny preset: a valid, clean ONNX that matches PyTorch, with its
metadata, a dynamic batch, the reference map, and an accurate typed FP16 variant."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")

from edgeas import ort  # noqa: E402
from edgeas.aggregate import aggregate_batch  # noqa: E402
from edgeas.errors import ConfigError  # noqa: E402
from edgeas.export import verify  # noqa: E402
from edgeas.export.onnx_graph import dead_nodes, io_signature  # noqa: E402
from edgeas.onnxio import get_metadata  # noqa: E402
from edgeas.record import ModelRecord  # noqa: E402

DISTS = ["dist_res1", "dist_res2", "dist_res3", "dist_res4"]
SIZES = [112, 56, 28, 14]


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeas", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One CLI export of the untrained tiny preset: dynamic batch, with map, FP16 too."""
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    result = _cli("export", "--config", "tiny", "--random-init", "-o", str(out),
                  "--dynamic-batch", "--with-map", "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    return {"fp32": out, "fp16": out.with_name("model.fp16.onnx"), "log": result.stderr}


@pytest.fixture(scope="module")
def tiny_model():
    from edgeas.export.command import random_init_model

    return random_init_model("tiny")


def test_both_files_pass_the_checker_and_the_log_reports_parity(exported):
    for path in (exported["fp32"], exported["fp16"]):
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    log = exported["log"]
    assert "max relative error" in log and "dist_res4" in log and "model.fp16.onnx" in log
    assert "next: edgeas build-engine" in log


def test_io_names_and_shapes(exported):
    sig = io_signature(onnx.load(str(exported["fp32"])))
    assert sig["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["N", 3, 224, 224]}]
    want = [{"name": d, "dtype": "float32", "shape": ["N", 1, s, s]} for d, s in zip(DISTS, SIZES)]
    want += [{"name": "anomaly_map", "dtype": "float32", "shape": ["N", 1, 224, 224]},
             {"name": "score", "dtype": "float32", "shape": ["N"]}]
    assert sig["outputs"] == want
    assert io_signature(onnx.load(str(exported["fp16"]))) == sig  # FP16 keeps float32 I/O


def test_onnx_runtime_matches_pytorch_with_a_batch_of_two(exported, tiny_model):
    from edgeas.export.torch_graph import reference_outputs

    model, meta = tiny_model  # same preset and seed as the exported file
    images = verify.sample_images(meta, 2, seed=7)
    model_onnx = onnx.load(str(exported["fp32"]))
    got = ort.run(ort.open_session(model_onnx.SerializeToString()), images)
    want = reference_outputs(model, images, with_map=True)
    errors = {k: ort.relative_error(got[k], want[k]) for k in want}
    assert all(got[k].shape[0] == 2 for k in got)
    assert max(errors.values()) <= 1e-3, errors
    # and the export verified itself on its own images
    verified = get_metadata(model_onnx)["export"]["verified"]
    assert max(verified["max_relative_error_vs_pytorch"].values()) <= 1e-3


def test_anomaly_map_is_the_numpy_reference_of_the_dist_outputs_and_score_its_max(exported):
    record = ModelRecord.from_json(get_metadata(onnx.load(str(exported["fp32"]))), "fp32")
    images = verify.sample_images(record, 2, seed=11)
    out = ort.run(ort.open_session(exported["fp32"].read_bytes()), images)
    ref = aggregate_batch([out[d] for d in DISTS], (224, 224), "reference")
    assert np.max(np.abs(out["anomaly_map"][:, 0] - ref)) <= 1e-5
    assert np.allclose(out["score"], out["anomaly_map"].reshape(2, -1).max(axis=1), atol=1e-7)


def test_metadata_round_trip_through_inspect(exported):
    for kind, path in (("fp32", exported["fp32"]), ("fp16", exported["fp16"])):
        result = _cli("inspect", str(path), timeout=120)
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        assert shown == get_metadata(onnx.load(str(path)))
        assert shown["precision"] == kind and shown["opset"] == 17
        assert shown["preset"] == "tiny" and shown["weights"] == "random-init"
        assert shown["threshold"]["value"] is None and shown["classes"] == []
        assert shown["export"]["batch"] == "dynamic"
        assert shown["export"]["outputs"] == [*DISTS, "anomaly_map", "score"]
        assert [lv["output"] for lv in shown["levels"]] == DISTS
    assert set(shown["fp16"]["kept_fp32"]) == {"norm", "softmax", "scores", "reduce", "tail",
                                               "head"}


def test_fp16_graph_is_accurate_under_onnx_runtime_and_emulated_fp16(exported):
    from edgeas.export.fp16_emulate import emulate_fp16

    m32, m16 = onnx.load(str(exported["fp32"])), onnx.load(str(exported["fp16"]))
    f16 = onnx.TensorProto.FLOAT16
    assert sum(t.data_type == f16 for t in m16.graph.initializer) > 100
    images = verify.sample_images(ModelRecord.from_json(get_metadata(m32), "m32"), 3, seed=5)
    ref = ort.run(ort.open_session(m32.SerializeToString()), images)
    for model in (m16, emulate_fp16(m16)):
        got = ort.run(ort.open_session(model.SerializeToString()), images)
        assert all(v.dtype == np.float32 for v in got.values())
        acc = ort.accuracy(got, ref)
        for name in [*DISTS, "anomaly_map"]:
            assert acc[name]["finite"] and acc[name]["cosine_min"] >= 0.99, (name, acc[name])


def test_graphs_have_no_dead_nodes_no_infinite_masks_and_unique_stable_names(exported):
    for path in (exported["fp32"], exported["fp16"]):
        model = onnx.load(str(path))
        assert dead_nodes(model) == []
        names = [n.name for n in model.graph.node]
        assert all(names) and len(set(names)) == len(names)
        assert not any(t.name.startswith("onnx::") for t in model.graph.initializer)
        empty = set()
        for t in model.graph.initializer:
            values = onnx.numpy_helper.to_array(t)
            if values.dtype.kind == "f":
                assert np.isfinite(values).all(), t.name
            if values.size == 0:
                empty.add(t.name)
        # folding the batch's shape arithmetic leaves no empty Concat pieces behind
        assert not any(set(n.input) & empty for n in model.graph.node if n.op_type == "Concat")


def test_static_batch_export_of_a_checkpoint_keeps_its_metadata(tmp_path, tiny_model):
    from edgeas.export.command import export_command
    from edgeas.train.checkpoint import save_checkpoint

    model, record = tiny_model
    meta = record.to_json()
    meta = dict(meta, classes=["bottle"], threshold=dict(meta["threshold"], value=0.25))
    ckpt = tmp_path / "last.pt"
    save_checkpoint(ckpt, {"config": model.cfg.to_dict(), "metadata": meta,
                           "model": model.state_dict()})
    out = tmp_path / "static.onnx"
    written = export_command(ckpt, None, False, out)
    assert max(written["parity"].values()) <= 1e-3
    exported = onnx.load(str(out))
    sig = io_signature(exported)
    assert sig["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert [o["shape"] for o in sig["outputs"]] == [[1, 1, s, s] for s in SIZES]
    shown = get_metadata(exported)
    assert shown["classes"] == ["bottle"] and shown["threshold"]["value"] == 0.25
    assert shown["export"]["batch"] == 1 and shown["precision"] == "fp32"
    assert shown["weights"] == "checkpoint last.pt" and shown["config_sha256"]
    assert not out.with_name("static.fp16.onnx").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either --checkpoint"),
        ({"config": "tiny"}, "needs --random-init"),
        ({"config": "tiny", "random_init": True, "precision": "int8"}, "--precision int8"),
        ({"config": "tiny", "random_init": True, "batch": 2, "dynamic_batch": True}, "exclude"),
        ({"config": "tiny", "random_init": True, "opset": 13}, "--opset 13"),
        ({"config": "tiny", "random_init": True, "output": "model.engine"}, ".onnx file"),
    ],
)
def test_bad_arguments_are_config_errors(tmp_path, kwargs, message):
    from edgeas.export.command import export_command

    args = {"checkpoint": None, "config": None, "random_init": False,
            "output": tmp_path / "m.onnx", **kwargs}
    if isinstance(args["output"], str):
        args["output"] = tmp_path / args["output"]
    with pytest.raises(ConfigError) as err:
        export_command(**args)
    assert message in str(err.value) and err.value.exit_code == 2
