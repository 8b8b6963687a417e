"""The per-block sensitivity analysis and the mixed-precision plan of `edgeas calibrate`
(calibration/sensitivity.py) on the briefly trained tiny model: blocks from node names,
one block quantized alone, and a block whose ranges are spoiled on purpose found first
and kept in float by the plan."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from test_stream_support import clean_images, hole_images, trained_model_path  # noqa: E402

from edgeas.artifacts import read_onnx_record  # noqa: E402
from edgeas.calibration import quantize as qz  # noqa: E402
from edgeas.calibration import ranges as rg  # noqa: E402
from edgeas.calibration import sensitivity as sv  # noqa: E402
from edgeas.calibration.scoring import Reference, Targets  # noqa: E402
from edgeas.errors import ConfigError  # noqa: E402
from edgeas.ort import open_session  # noqa: E402
from edgeas.preprocess import preprocess_bgr  # noqa: E402

SPOILED = "/backbone/body/blocks.2"  # everything downstream depends on it
# a few blocks of each part of the model, to keep the test short
PICKED = (SPOILED, "/blur_1", "/predictor/transformer_block.1", "/predictor/out_agg.0")


def test_block_names_follow_the_module_path():
    assert sv.block_of("/backbone/body/conv_stem/Conv") == "/backbone/body"
    assert sv.block_of("/backbone/body/blocks.3/blocks.3.1/conv_dw/Conv") == \
        "/backbone/body/blocks.3"
    assert sv.block_of("/predictor/transformer_block.0/SpatialCrossAttnLayer/multihead_attn/"
                       "MatMul_2") == "/predictor/transformer_block.0"
    assert sv.block_of("/pixel_decoder/layer_2/Conv") == "/pixel_decoder/layer_2"
    assert sv.block_of("/predictor/query_processor/adaptor/Conv") == \
        "/predictor/query_processor"
    assert sv.block_of("/blur_1/Conv_1") == "/blur_1" and sv.block_of("/blur/Conv") == "/blur"
    assert sv.block_of("MatMul_12") == "MatMul_12"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    path = trained_model_path(tmp_path_factory)
    record = read_onnx_record(path)
    model = onnx.load(str(path))

    def tensors(frames) -> np.ndarray:
        return np.stack([preprocess_bgr(f, record.preprocessing) for f in frames])

    calib = tensors(clean_images(12, seed=700))
    holes = hole_images(4, seed=7100)
    eval_images = tensors([bad for bad, _ in holes] + clean_images(2, seed=7200))
    masks = np.stack([(m > 0).astype(np.uint8) for _, m in holes]
                     + [np.zeros(record.preprocessing.input_size, np.uint8)] * 2)
    factory = lambda b: open_session(b, extra="export")  # noqa: E731
    ranges = rg.collect(model, [calib[i : i + 1] for i in range(len(calib))], "minmax", factory)
    ref = Reference(record, factory(model.SerializeToString()),
                    tensors(clean_images(4, seed=7300)), eval_images, masks, ["tissue"] * 6)
    return {"model": model, "ranges": ranges, "ref": ref}


def _spoil(model, ranges: rg.Ranges, block: str) -> rg.Ranges:
    """Ranges in which every activation that only `block`'s nodes read, and that one of
    its Conv/MatMul/Gemm nodes reads, clips at 1e-4. Only such tensors: the block's input
    may be the output of an Add the CPU model quantizes with the block before it
    (calibration/cpu_chain.py), which keeping `block` float would not undo."""
    inits = {i.name for i in model.graph.initializer}
    in_block = {n.name for n in model.graph.node if sv.block_of(n.name) == block}
    readers: dict[str, set[str]] = {}
    quantized: set[str] = set()
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.name)
            if n.op_type in qz.OP_TYPES and n.name in in_block:
                quantized.add(i)
    spoiled = {t for t, users in readers.items()
               if users <= in_block and t in quantized and t not in inits}
    assert spoiled, "the block has inputs of its own"
    amax = {k: (1e-4 if k in spoiled else v) for k, v in ranges.amax.items()}
    return rg.Ranges(ranges.method, amax, dict(ranges.low), dict(ranges.high), ranges.images)


def test_blocks_cover_every_quantizable_node_once(tiny):
    blocks = sv.quantizable_blocks(tiny["model"])
    nodes = [n.name for n in tiny["model"].graph.node if n.op_type in qz.OP_TYPES]
    assert sorted(n for b in blocks.values() for n in b) == sorted(nodes)
    assert set(PICKED) <= set(blocks)
    assert 20 <= len(blocks) <= 80  # blocks, not single nodes nor the whole model
    with pytest.raises(ConfigError, match="--keep-float /nowhere"):
        sv.nodes_under(tiny["model"], ["/nowhere"])
    assert sv.nodes_under(tiny["model"], [SPOILED]) == blocks[SPOILED]


def test_one_block_alone_is_quantized_and_scored(tiny):
    blocks = sv.quantizable_blocks(tiny["model"])
    only = qz.quantize(tiny["model"], tiny["ranges"], "qdq", only=blocks["/blur_1"])
    weights = [n for n in only.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in {i.name for i in only.graph.initializer}]
    assert len(weights) == len(blocks["/blur_1"])  # the block's own weights, nothing else
    targets = Targets(0.95, 1.0)
    score = tiny["ref"].score(open_session(only.SerializeToString()), targets)
    assert score.passed and score.cosine_min["anomaly_map"] > 0.99
    assert score.pap_drop is not None and score.nonfinite_images == 0


@pytest.mark.parametrize("fmt", qz.FORMATS)
def test_a_spoiled_block_ranks_first_and_the_plan_keeps_it_float(tiny, fmt):
    model, ref = tiny["model"], tiny["ref"]
    blocks = sv.quantizable_blocks(model)
    picked = {b: blocks[b] for b in PICKED}
    ranges = _spoil(model, tiny["ranges"], SPOILED)
    # every unspoiled block alone keeps the maps within 1e-3 of FP32, the spoiled one not
    targets = Targets(0.98, 5.0, cosine_always=True)
    ranking = sv.analyse(model, ranges, fmt, picked, ref, targets)
    assert [r.block for r in ranking][0] == SPOILED
    assert ranking[0].damage > 1.0 and not ranking[0].score.passed
    assert all(r.score.passed for r in ranking[1:]), [r.to_json() for r in ranking]
    assert [r.damage for r in ranking] == sorted((r.damage for r in ranking), reverse=True)

    plan = sv.plan(model, ranges, fmt, ranking, picked, ref, targets, max_blocks=2)
    assert plan.float_blocks == [SPOILED] and plan.score.passed
    assert [s["passed"] for s in plan.steps] == [False, True]  # all INT8 failed first
    assert sorted(plan.float_nodes) == sorted(blocks[SPOILED])
    names = {n.name for n in plan.model.graph.node}
    assert set(blocks[SPOILED]) <= names  # the float nodes keep their own names and ops
    if fmt == "qdq":
        assert qz.qdq_problems(plan.model) == []
