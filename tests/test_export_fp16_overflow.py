"""FP16 overflow of the attention scores (issue 21) on the tiny preset made to overflow the
way a trained unias-edge does, the `scores` group that keeps them FP32, and the export
gate that names the node where FP16 overflows."""

from __future__ import annotations

import copy

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")
torch = pytest.importorskip("torch")

from edgeas import ort  # noqa: E402
from edgeas.errors import ArtifactError  # noqa: E402
from edgeas.export.fp16 import DEFAULT_KEEP, convert_to_fp16, fp32_node_names  # noqa: E402
from edgeas.export.fp16_emulate import emulate_fp16, fp16_range  # noqa: E402

DISTS = ["dist_res1", "dist_res2", "dist_res3", "dist_res4"]
# The trained unias-edge of ../shared/regressions overflows here, at 8.1e4 and 1.5e5.
SCORES = "/predictor/transformer_block.3/SpatialCrossAttnLayer/multihead_attn/MatMul_3"


def inflate_scores(model) -> None:
    """Make the finest level's cross-attention scores q.k^T reach ~1.4e5, as a trained
    unias-edge's do, without changing what the attention computes: in the first
    dimension of each head the query projection gets a bias of 2e4 and the key
    projection a constant 20 (its weights there set to zero). Every score of a query
    gains the same 2e4 * 20 / sqrt(head_dim), which Softmax ignores. (Plainly scaling the
    q/k weights instead makes the scores of a random model so peaked that FP32 ONNX
    Runtime and PyTorch already disagree.)"""
    mha = model.decoder.predictor.transformer_block[3].SpatialCrossAttnLayer.multihead_attn
    d, hd = mha.embed_dim, mha.head_dim
    with torch.no_grad():
        for e in range(0, d, hd):
            mha.in_proj_bias[e] += 2e4
            mha.in_proj_weight[d + e] = 0
            mha.in_proj_bias[d + e] = 20.0


@pytest.fixture(scope="module")
def exported():
    """The tiny preset (untrained), inflated, exported at batch 1 and checked against
    PyTorch (export_model raises if FP32 ONNX Runtime disagrees)."""
    from edgeas.export.command import random_init_model
    from edgeas.export.onnx_export import export_model

    model, record = random_init_model("tiny")
    inflate_scores(model)
    return export_model(model, record)


def test_gate_refuses_an_fp16_graph_that_overflows_and_names_the_node(exported, capsys):
    from edgeas.export.command import _report_fp16
    from edgeas.export.onnx_export import add_fp16

    result = copy.copy(exported)
    add_fp16(result, DEFAULT_KEEP - {"scores"})  # what the converter did before issue 21
    emu = result.fp16_accuracy["fp16_storage_emulation"]["dist_res1"]
    assert emu["nonfinite_images"] == len(result.images) and emu["cosine_min"] is None
    hit = result.fp16_range.overflow
    assert (hit.node, hit.op_type, hit.precision) == (SCORES, "MatMul", "fp16")
    assert 65520 < hit.max_abs < 1e6 and hit.images == len(result.images)
    error = result.fp16_failure
    assert isinstance(error, ArtifactError) and "\n" not in error.message
    assert error.message.startswith(
        f"the FP16 graph gives non-finite dist_res1 on {len(result.images)} of "
        f"{len(result.images)} images (fp16_storage_emulation); the first FP16 overflow: "
        f"node {SCORES} (MatMul, fp16) reaches |x| 1.4")
    assert "cosine" not in error.message  # a NaN map has no cosine to report
    _report_fp16(result)
    shown = capsys.readouterr().err
    assert "EMU non-finite on" in shown and f"the first overflow: node {SCORES}" in shown


def test_attention_scores_stay_fp32_and_the_fp16_graph_passes(exported):
    from edgeas.export.onnx_export import add_fp16

    assert fp32_node_names(exported.model)[SCORES] == "scores"
    result = copy.copy(exported)
    add_fp16(result)
    assert result.fp16_failure is None
    for kind, per in result.fp16_accuracy.items():
        for name in DISTS:
            assert per[name]["finite"] and per[name]["cosine_min"] > 0.9999, (kind, per[name])
    span = result.fp16_range
    assert span.overflow is None and span.peak.max_abs < 65504
    assert result.fp16_record.export["fp16"]["range"]["overflow"] is None


@pytest.mark.slow
def test_trained_unias_edge_gives_finite_fp16_maps(fp16_overflow_onnx):
    """The model of issue 21: before, 8 of 8 sample images gave a NaN dist_res1."""
    from edgeas.artifacts import read_onnx_record
    from edgeas.export import verify

    model = onnx.load(str(fp16_overflow_onnx))
    images = verify.sample_images(read_onnx_record(fp16_overflow_onnx), 2)
    ref = ort.run(ort.open_session(model.SerializeToString()), images)
    typed, stats = convert_to_fp16(model)
    assert stats["kept_fp32"]["scores"] > 0
    got = ort.run(ort.open_session(emulate_fp16(typed).SerializeToString()), images)
    acc = ort.accuracy(got, ref)
    for name in DISTS:
        assert acc[name]["finite"] and acc[name]["cosine_min"] > 0.999, (name, acc[name])
    assert fp16_range(typed, images).overflow is None
