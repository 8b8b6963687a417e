"""Which parts of a model INT8 hurts, and a mixed-precision plan that keeps them in float.

Blocks: the quantizable nodes (Conv, MatMul, Gemm) grouped by the name prefix the
exporter gives them, up to the first indexed module (`/backbone/body/blocks.3`,
`/predictor/transformer_block.0`, `/pixel_decoder/layer_2`, `/blur_1`) or, with no index,
the first two levels (`/backbone/body`: the stem; `/predictor/query_processor`).

Sensitivity: each block quantized alone (the rest FP32), scored against FP32 on the
held-out normal images and, with --eval-data, the test split (`scoring.Reference`, a
spread subset of both for speed). Plan: the blocks sorted by that damage; the most
sensitive ones are kept in float one more at a time (every other node INT8, the full
image sets) until the candidate reaches its targets or `max_blocks` are float. In the
Q/DQ model a float node has no Q/DQ on its inputs, so TensorRT runs it in FP16/FP32; in
the QOperator model it stays a float Conv/MatMul between Dequantize/QuantizeLinear.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeas.calibration import quantize as qz
from edgeas.calibration.ranges import Ranges
from edgeas.calibration.scoring import Reference, Score, Targets
from edgeas.errors import CalibrationError, ConfigError

_INDEXED = re.compile(r"(\.\d+|_\d+)$")  # blocks.3, transformer_block.0, layer_2, blur_1
TOP_LEVELS = 2  # prefix depth of a block when no level is indexed
MAX_FLOAT_BLOCKS = 6


def block_of(node_name: str) -> str:
    """The block a node belongs to: its name's module path up to and including the first
    indexed module, else its first TOP_LEVELS modules; a flat name is its own block."""
    parts = [p for p in node_name.split("/") if p]
    modules = parts[:-1]  # the last part names the op itself (Conv, MatMul_2)
    if not modules:
        return node_name
    for i, part in enumerate(modules):
        if _INDEXED.search(part):
            return "/" + "/".join(modules[: i + 1])
    return "/" + "/".join(modules[:TOP_LEVELS])


def quantizable_blocks(model) -> dict[str, list[str]]:
    """{block: names of its Conv/MatMul/Gemm nodes}, blocks in order of first appearance;
    not the decision head's nodes, which no candidate quantizes (`quantize.float_head`)."""
    head = set(qz.float_head(model))
    blocks: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in qz.OP_TYPES and node.name not in head:
            if not node.name:
                raise CalibrationError(f"a {node.op_type} node has no name: blocks need names",
                                       hint="export the model with `edgeas export`")
            blocks.setdefault(block_of(node.name), []).append(node.name)
    return blocks


def nodes_under(model, prefixes: Sequence[str]) -> list[str]:
    """Quantizable nodes whose names start with any of `prefixes` (--keep-float)."""
    names = [n.name for n in model.graph.node if n.op_type in qz.OP_TYPES]
    out = []
    for prefix in prefixes:
        hits = [n for n in names if n.startswith(prefix)]
        if not hits:
            raise ConfigError(f"--keep-float {prefix}: no Conv, MatMul or Gemm node has a "
                              "name starting with it",
                              hint="the blocks are listed in the .sensitivity.json of "
                              "--sensitivity, e.g. /backbone/body/blocks.0")
        out += hits
    return list(dict.fromkeys(out))


@dataclass
class BlockResult:
    block: str
    nodes: int
    score: Score
    damage: float

    def to_json(self) -> dict[str, Any]:
        return {"block": self.block, "nodes": self.nodes,
                "damage": None if math.isinf(self.damage) else round(self.damage, 4),
                **self.score.to_json()}


@dataclass
class Plan:
    """The chosen candidate of one format and how it was found."""

    fmt: str
    float_blocks: list[str]
    float_nodes: list[str]
    model: Any  # the INT8 ModelProto
    score: Score
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.fmt, "float_blocks": self.float_blocks,
                "float_nodes": len(self.float_nodes), "passed": self.score.passed,
                "score": self.score.to_json(), "steps": self.steps}


def analyse(model, ranges: Ranges, fmt: str, blocks: dict[str, list[str]], ref: Reference,
            targets: Targets, advance: Callable[[int], None] | None = None,
            session_factory: Callable[[bytes], Any] | None = None) -> list[BlockResult]:
    """Each block quantized alone, scored on `ref`; most damaging first."""
    results = []
    for block, nodes in blocks.items():
        candidate = qz.quantize(model, ranges, fmt, only=nodes)
        score = ref.score(_open(candidate, session_factory), targets)
        results.append(BlockResult(block, len(nodes), score, score.damage(targets)))
        if advance is not None:
            advance(1)
    # most damaging first; ties (e.g. several blocks that change nothing) keep graph order
    return sorted(results, key=lambda r: -r.damage)


def plan(model, ranges: Ranges, fmt: str, ranking: list[BlockResult],
         blocks: dict[str, list[str]], ref: Reference, targets: Targets,
         keep_float: Sequence[str] = (), max_blocks: int = MAX_FLOAT_BLOCKS,
         first: tuple[Any, Score] | None = None,
         advance: Callable[[int], None] | None = None,
         session_factory: Callable[[bytes], Any] | None = None) -> Plan:
    """Keep the 0, 1, ... max_blocks most damaging blocks of `ranking` in float (with the
    `keep_float` nodes) until a candidate meets `targets`; that one, or when none does
    the one with the least damage. `first` is the all-INT8 candidate when already scored."""
    best: Plan | None = None
    steps = []
    for k in range(0, max_blocks + 1):
        if k > len(ranking):
            break
        chosen = [r.block for r in ranking[:k]]
        nodes = list(dict.fromkeys([*keep_float, *(n for b in chosen for n in blocks[b])]))
        if k == 0 and first is not None:
            candidate, score = first
        else:
            candidate = qz.quantize(model, ranges, fmt, exclude=nodes)
            score = ref.score(_open(candidate, session_factory), targets)
        steps.append({"float_blocks": chosen, "float_nodes": len(nodes),
                      "damage": _round(score.damage(targets)), "cosine_min": score.cosine_min,
                      "delta_points": score.delta_points, "passed": score.passed,
                      "problems": score.problems})
        current = Plan(fmt, chosen, nodes, candidate, score)
        if best is None or score.damage(targets) < best.score.damage(targets):
            best = current
        if advance is not None:
            advance(1)
        if score.passed:
            best = current
            break
    assert best is not None
    best.steps = steps
    return best


def _round(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 4)


def _open(candidate, session_factory: Callable[[bytes], Any] | None):
    if session_factory is None:
        from edgeas.ort import open_session

        return open_session(candidate.SerializeToString(), extra="export")
    return session_factory(candidate.SerializeToString())


def summary_rows(ranking: list[BlockResult], top: int = 8) -> list[list[str]]:
    """The printed table: the `top` most damaging blocks."""
    rows = []
    for r in ranking[:top]:
        s = r.score
        cos = s.cosine_min["anomaly_map"]
        rows.append([r.block, str(r.nodes), "NaN/inf" if cos is None else f"{cos:.4f}",
                     "" if s.pap_drop is None else f"{-s.pap_drop:+.2f}",
                     "inf" if math.isinf(r.damage) else f"{r.damage:.2f}"])
    return rows
