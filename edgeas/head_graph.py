"""The decision head's subgraph in an ONNX graph: the nodes that compute only its output.

Why it is found here: the nearest-neighbour head (edgeas.decision_head) computes
sqrt(max(|x|^2 - 2 x.b + |b|^2, 0)), the minimum over a memory bank of a difference of
large dot products. Its small distances are what is left after that cancellation, which
INT8 (a 256-level grid for the dot products) and FP16 (11 mantissa bits) both destroy.
So the INT8 quantizer (edgeas.calibration.quantize) and the FP16 converter
(edgeas.export.fp16) keep these nodes float; they share this one finding, which lives in
the core because calibration may not import export.

Found structurally, never by node names: the nodes from which the head's output is
reached but no other graph output is (walking back from the head's output stops at the
tensors that also feed the level maps, i.e. the backbone features both use). Pure
protobuf traversal: needs no `onnx` import (the caller hands over the ModelProto).
"""

from __future__ import annotations

from collections.abc import Iterable

from edgeas.onnxio import get_metadata

HEAD_KEY = "decision_head"  # the record's JSON key (edgeas.record.ModelRecord.to_json)


def head_output(model) -> str | None:
    """The decision head's graph output named by the model's edgeas metadata, or None
    (no record, no head, or a record whose head output the graph does not have)."""
    meta = get_metadata(model) or {}
    head = meta.get(HEAD_KEY)
    name = head.get("output") if isinstance(head, dict) else None
    outputs = {o.name for o in model.graph.output}
    return name if name in outputs else None


def _ancestors(nodes: list, producer: dict[str, int], tensors: Iterable[str]) -> set[int]:
    """Indices of the nodes `tensors` are computed from (the producers included)."""
    seen: set[int] = set()
    stack = [producer[t] for t in tensors if t in producer]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack += [producer[x] for x in nodes[i].input if x in producer]
    return seen


def head_node_indices(model, output: str | None = None) -> list[int]:
    """Indices (graph order) of the nodes that feed only the head's graph output `output`
    (default: the one the metadata names); [] for a model without a head."""
    output = output or head_output(model)
    if output is None:
        return []
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    others = [o.name for o in model.graph.output if o.name != output]
    shared = _ancestors(nodes, producer, others)
    return sorted(_ancestors(nodes, producer, [output]) - shared)


def head_node_names(model, output: str | None = None) -> list[str]:
    """Names of `head_node_indices` (unnamed nodes left out: nothing can refer to them)."""
    nodes = model.graph.node
    return [nodes[i].name for i in head_node_indices(model, output) if nodes[i].name]


def head_tensors(model, output: str | None = None) -> set[str]:
    """Every tensor the head's nodes produce (its internal activations and its output)."""
    nodes = model.graph.node
    return {o for i in head_node_indices(model, output) for o in nodes[i].output if o}


__all__ = ["HEAD_KEY", "head_node_indices", "head_node_names", "head_output", "head_tensors"]
