"""The decision head (knn_dist) past `edgeas export`: the exported distances against torch's
exact ones, its subgraph found from the graph and kept float by INT8 calibration (both
formats) and by the FP16 converter, the calibration gate's decision map, and the
runtime-facing outputs (Triton config, TensorRT output buffers). CPU only; one tiny
model (untrained, a real memory bank fitted on sample images) for the whole module."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeas.calibration import gate as gt
from edgeas.calibration import quantize as qz
from edgeas.calibration import ranges as rg
from edgeas.calibration import sensitivity as sv
from edgeas.calibration.scoring import Reference, Targets
from edgeas.errors import CalibrationError
from edgeas.head_graph import head_node_indices, head_node_names, head_output, head_tensors
from edgeas.ort import cosine_per_image, open_session, run
from edgeas.record import ModelRecord

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

HEAD = "knn_dist"
LEVELS = ("dist_res1", "dist_res2", "dist_res3", "dist_res4")
# what must never appear inside the head: INT8 arithmetic or its (de)quantization
INTEGER_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv",
               "MatMulInteger", "ConvInteger", "QGemm", "DynamicQuantizeLinear"}


@dataclass
class HeadModel:
    model: torch.nn.Module
    bank: torch.Tensor
    record: ModelRecord
    onnx: Any  # the exported ModelProto (dynamic batch)
    result: Any  # export_model's ExportResult
    path: Path
    queries: np.ndarray  # images neither in the bank nor in the calibration set
    ranges: rg.Ranges


def _session(model):
    return open_session(model.SerializeToString(), extra="export")


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> HeadModel:
    from edgeas.config import load_config
    from edgeas.export.command import random_init_model
    from edgeas.export.onnx_export import export_model
    from edgeas.export.verify import sample_images
    from edgeas.train.checkpoint import model_record
    from edgeas.train.memory_bank import fit_bank

    folder = tmp_path_factory.mktemp("head")
    cfg_path = folder / "cfg.yaml"
    cfg_path.write_text("preset: tiny\ndecision:\n  head: knn\n")
    model, plain = random_init_model(str(cfg_path))
    model.eval()
    # the bank as training fits it (train/run.py), from images the queries do not hold
    bank_images = torch.from_numpy(sample_images(plain, 6, seed=1))
    bank, _ = fit_bank(model.backbone, lambda: [bank_images], 0.1)
    model.attach_bank(bank)
    record = model_record(load_config(str(cfg_path)), model, [], None).with_stage(
        "export", {"weights": "random-init"})
    result = export_model(model, record, batch=None, images=2)
    path = folder / "model.onnx"
    path.write_bytes(result.model.SerializeToString())
    calib = sample_images(record, 16, seed=2)
    ranges = rg.collect(result.model, [calib[:8], calib[8:]], "minmax",
                        lambda data: open_session(data, extra="export"))
    return HeadModel(model, bank, result.record, result.model, result, path,
                     sample_images(record, 6, seed=5), ranges)


@pytest.fixture(scope="module")
def int8(head) -> dict[str, Any]:
    return {fmt: qz.quantize(head.onnx, head.ranges, fmt) for fmt in qz.FORMATS}


def _ops(model, indices) -> set[str]:
    return {model.graph.node[i].op_type for i in indices}


def _knn(model, images: np.ndarray) -> np.ndarray:
    return run(_session(model), images)[HEAD]


# ----------------------------------------------------------------------- the exported head


def test_the_exported_knn_dist_is_the_exact_nearest_distance(head):
    """The graph's sqrt(max(|x|^2 - 2 x.b + |b|^2, 0)) against torch.cdist in float64 on
    the same patch features: the expansion's rounding stays far below the distances."""
    from edgeas.train.memory_bank import nearest_distance, patch_features

    with torch.no_grad():
        f = patch_features(head.model.backbone(torch.from_numpy(head.queries)))
    n, c, h, w = f.shape
    rows = f.permute(0, 2, 3, 1).reshape(-1, c).double()
    want = nearest_distance(rows, head.bank.double()).view(n, 1, h, w).numpy()
    got = _knn(head.onnx, head.queries)
    assert got.shape == (n, 1, h, w) == (len(head.queries), 1, 28, 28)
    assert want.min() > 1.0  # queries are not bank entries: a real distance to check
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-3)


def test_the_head_subgraph_is_found_from_the_graph(head):
    """From the metadata's output name back to the tensors the level maps share: the
    MatMul with the bank, the ReduceMin and the Sqrt, none of them an ancestor of a
    level; the head's inputs are backbone tensors that also feed the levels."""
    m = head.onnx
    assert head_output(m) == HEAD == head.record.model.head.output
    idx = head_node_indices(m)
    assert {"MatMul", "ReduceMin", "Sqrt", "AveragePool"} <= _ops(m, idx)
    nodes = list(m.graph.node)
    inside = {o for i in idx for o in nodes[i].output}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    feeds = {x for i in idx for x in nodes[i].input if x in producer and x not in inside}
    assert feeds  # the boundary: backbone features
    consumers = {x: {j for j, n in enumerate(nodes) if x in n.input} for x in feeds}
    assert all(cs - set(idx) for cs in consumers.values())  # each also feeds the levels
    assert head_node_names(m) == [nodes[i].name for i in idx if nodes[i].name]
    # a model without a head (the metadata names none) has no head subgraph
    bare = copy.deepcopy(m)
    del bare.metadata_props[:]
    assert head_output(bare) is None and head_node_indices(bare) == []


# ----------------------------------------------------------------------------------- INT8


@pytest.mark.parametrize("fmt", qz.FORMATS)
def test_int8_keeps_the_head_float_and_close(head, int8, fmt):
    q = int8[fmt]
    all_ops = {n.op_type for n in q.graph.node}
    assert all_ops & INTEGER_OPS  # the rest of the model is INT8
    idx = head_node_indices(q, HEAD)
    ops = _ops(q, idx)
    assert "MatMul" in ops and not ops & INTEGER_OPS, ops
    # the bank stays a float32 initializer of a float MatMul
    inits = {t.name: t for t in q.graph.initializer}
    matmul = next(q.graph.node[i] for i in idx if q.graph.node[i].op_type == "MatMul")
    assert inits[matmul.input[1]].data_type == 1
    want, got = _knn(head.onnx, head.queries), _knn(q, head.queries)
    assert np.isfinite(got).all()
    # the INT8 backbone's features move the distances; the head adds no error of its own
    assert cosine_per_image(got, want).min() > 0.995
    assert float(np.median(np.abs(got - want) / want)) < 0.1


def test_the_head_is_no_block_of_the_sensitivity_search(head):
    names = set(head_node_names(head.onnx))
    blocks = sv.quantizable_blocks(head.onnx)
    assert not names & {n for nodes in blocks.values() for n in nodes}
    matmul = [n.name for n in head.onnx.graph.node
              if n.name in names and n.op_type == "MatMul"]
    with pytest.raises(CalibrationError, match="decision head"):
        qz.quantize(head.onnx, head.ranges, "qdq", only=matmul)


class _BrokenHead:
    """An ONNX Runtime session whose knn_dist is noise: what an INT8 MatMul on the head
    does to the distances, without building such a model."""

    def __init__(self, session) -> None:
        self.session = session

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feed):
        out = self.session.run(names, feed)
        rng = np.random.default_rng(0)
        return [rng.random(o.shape, np.float32) * 30 if n == HEAD else o
                for n, o in zip(names, out)]


def test_the_gate_aggregates_the_levels_and_judges_the_decision_map(head, int8):
    """The anomaly map from the four levels only (five would not even aggregate), the head
    output compared as an output, its decision map as a map of its own that fails the
    gate when it is broken, with or without labelled data."""
    fp32 = _session(head.onnx)
    variants = {"qdq": _session(int8["qdq"]), "broken": _BrokenHead(_session(head.onnx))}
    gate = gt.Gate(head.record, fp32, variants)
    gate.add(head.queries, "held_out")
    result = gate.result(0.95, 1.0)
    good = result.report["variants"]["qdq"]["held_out"]
    assert set(good["cosine_min"]) == {*LEVELS, HEAD, gt.MAP, gt.DECISION}
    assert good["cosine_min"][gt.DECISION] > 0.99 and good["nonfinite_decision_images"] == 0
    assert result.failures == [f for f in result.failures if f.startswith("broken:")]
    assert any("decision-map cosine" in f for f in result.failures)
    # the broken head leaves the levels and the anomaly map alone
    broken = result.report["variants"]["broken"]["held_out"]["cosine_min"]
    assert broken[gt.MAP] == pytest.approx(1.0) and broken[gt.DECISION] < 0.95
    rows = gt.table_rows(result.report, list(head.record.model.outputs))
    assert len(rows[0]) == 2 + 5 + 2 + 2  # model, images, 5 outputs, 2 maps, pAP, DSC

    ref = Reference(head.record, fp32, head.queries)
    targets = Targets(0.95, 1.0)
    assert ref.score(variants["qdq"], targets).passed
    score = ref.score(variants["broken"], targets)
    assert not score.passed and "decision-map cosine" in score.problems[0]
    assert score.damage(targets) > 1.0


def test_the_trt_cache_leaves_the_head_float(head):
    """TensorRT 10's implicit INT8 keeps a layer float whose tensors have no scale: the
    head's own tensors leave the cache, its backbone inputs keep theirs."""
    inside = head_tensors(head.onnx)
    assert HEAD in inside and inside & set(head.ranges.amax)
    nodes = head.onnx.graph.node
    feeds = {x for i in head_node_indices(head.onnx) for x in nodes[i].input} - inside
    assert not feeds & inside


# ----------------------------------------------------------------------------------- FP16


def test_fp16_keeps_the_head_fp32(head):
    from onnx import TensorProto

    from edgeas.export.fp16 import DEFAULT_KEEP, convert_to_fp16, fp32_node_names
    from edgeas.export.fp16_emulate import emulate_fp16

    names = head_node_names(head.onnx)
    kept = fp32_node_names(head.onnx)
    assert all(kept[n] == "head" for n in names)
    typed, stats = convert_to_fp16(head.onnx)
    assert stats["kept_fp32"]["head"] == len(names)
    # the head's output does not start the `tail` walk: the backbone and decoder stay FP16
    assert stats["fp16_nodes"] > 2 * stats["fp32_nodes"]
    inits = {t.name: t for t in typed.graph.initializer}
    matmul = next(n for n in typed.graph.node if n.name in names and n.op_type == "MatMul")
    assert inits[matmul.input[1]].data_type == TensorProto.FLOAT
    want = _knn(head.onnx, head.queries)
    errors = {}
    for keep in (DEFAULT_KEEP, DEFAULT_KEEP - {"head"}):
        emulated = emulate_fp16(convert_to_fp16(head.onnx, keep)[0])  # FP16 storage
        got = _knn(emulated, head.queries)
        assert np.isfinite(got).all()
        errors["head" in keep] = float(np.max(np.abs(got - want) / want))
    assert errors[True] < 0.02  # kept FP32: only the FP16 backbone's rounding
    assert errors[True] < errors[False]  # the expansion in FP16 adds its own


def test_the_fp16_export_of_a_head_model_passes_its_gate(head):
    from edgeas.export.onnx_export import add_fp16

    result = copy.copy(head.result)
    add_fp16(result)
    assert result.fp16_failure is None
    for per in result.fp16_accuracy.values():
        assert per[HEAD]["finite"] and per[HEAD]["cosine_min"] > 0.999


# ----------------------------------------------------------------------- runtime-facing


def test_the_triton_config_lists_knn_dist(head, tmp_path):
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                             reason="tritonclient[grpc] is not installed (the `triton` extra)")
    text_format = pytest.importorskip("google.protobuf.text_format")
    from edgeas.runtime.triton_repo import export_triton

    plan, config = export_triton(head.path, tmp_path / "repo", name="line1", max_batch=4)
    cfg = text_format.Parse(config.read_text(), pb.ModelConfig())
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [
        ("dist_res1", pb.DataType.TYPE_FP32, [1, 112, 112]),
        ("dist_res2", pb.DataType.TYPE_FP32, [1, 56, 56]),
        ("dist_res3", pb.DataType.TYPE_FP32, [1, 28, 28]),
        ("dist_res4", pb.DataType.TYPE_FP32, [1, 14, 14]),
        (HEAD, pb.DataType.TYPE_FP32, [1, 28, 28])]
    assert cfg.max_batch_size == 4
    assert '\\"decision_head\\"' in config.read_text()  # the record travels with it


def test_the_tensorrt_backend_fetches_the_head_grid(tmp_path, monkeypatch):
    """An engine of a head model has five outputs: each gets a device buffer and a host
    copy of its own shape, and infer() returns the head's grid last, as (N, h3, w3)."""
    from fake_cuda import FakeCuda
    from sample_records import write_engine
    from test_cuda_wrapper import StandInTensorRT

    from edgeas.runtime.tensorrt_backend import TensorRTBackend

    class WithHead(StandInTensorRT):
        OUTPUTS = {**StandInTensorRT.OUTPUTS, HEAD: 28}

    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", WithHead(cuda))
    head_json = {"kind": "knn", "output": HEAD, "stride": 8, "sigma": 4.0, "bank": 10}
    engine = write_engine(tmp_path, b"stand-in plan", tensorrt_version="10.3.0",
                          gpu="Fake GPU (stand-in)", compute_capability="8.7",
                          decision_head=head_json)
    backend = TensorRTBackend(engine, cuda=cuda)
    assert backend.output_names == [*LEVELS, HEAD]
    assert len(cuda.live_buffers()) == 6
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    maps = backend.infer(x)
    assert [m.shape for m in maps] == [(3, 112, 112), (3, 56, 56), (3, 28, 28), (3, 14, 14),
                                       (3, 28, 28)]
    np.testing.assert_allclose(maps[-1].mean(axis=(1, 2)), x.reshape(3, -1).mean(axis=1),
                               rtol=1e-5)
    backend.close()
    assert cuda.live_buffers() == []


def _int8_file(head, q, folder: Path) -> Path:
    """The Q/DQ model as `edgeas calibrate` writes it: with its INT8 record."""
    from edgeas.onnxio import set_metadata

    q = copy.deepcopy(q)
    stage = {"calibration": {"method": "minmax"}, "quantization": qz.describe("qdq")}
    set_metadata(q, head.record.with_stage("calibration", stage, precision="int8").to_json())
    path = folder / "model.int8.onnx"
    path.write_bytes(q.SerializeToString())
    return path


def test_tensorrt10_int8_pins_the_head_to_fp32(head, int8, tmp_path):
    """TensorRT 10 builds INT8 with the FP16 flag on: the head's layers, which have no
    Q/DQ, would fall back to FP16; they are pinned to FP32 instead."""
    from test_build_engine_mocks import MockTensorRT10

    from edgeas.export.engine import BuildOptions, build_engine
    from edgeas.export.trt_build import Flavour, GpuInfo

    path = _int8_file(head, int8["qdq"], tmp_path)
    trt = MockTensorRT10()
    side = build_engine(path, tmp_path / "m.engine", BuildOptions(),
                        Flavour("tensorrt", trt, "10.3.0"), GpuInfo("Orin (mock)", "8.7"))
    assert side["precision"] == "int8" and side["calibration"] is not None  # the Q/DQ's
    assert [c[1][0] for c in trt.calls if c[0] == "set_flag"] == [
        "FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS"]
    assert trt.pinned == set(head_node_names(head.onnx))
    assert side["build_options"]["fp32_layers"] == len(trt.pinned)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_rtx_builds_the_head_model(head, int8, tmp_path, precision):
    """Where tensorrt_rtx is installed it builds on this CPU (no GPU needed): the FP32
    graph, the typed FP16 graph made from it, and the Q/DQ model with its float head."""
    rtx = pytest.importorskip("tensorrt_rtx")
    from edgeas.export.engine import BuildOptions, build_engine
    from edgeas.export.trt_build import Flavour

    source = _int8_file(head, int8["qdq"], tmp_path) if precision == "int8" else head.path
    options = BuildOptions(precision=precision, optimization_level=0, max_batch=2)
    side = build_engine(source, tmp_path / "m.engine", options,
                        Flavour("tensorrt_rtx", rtx, rtx.__version__))
    assert side["precision"] == precision
    assert side["outputs"][-1] == {"name": HEAD, "dtype": "float32", "shape": [-1, 1, 28, 28]}
    if precision == "fp16":
        assert side["onnx_conversion"]["kept_fp32"]["head"] == len(head_node_names(head.onnx))
