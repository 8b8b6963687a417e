"""ONNX graph clean-up and metadata, with onnx and onnx-graphsurgeon only (no torch).

`clean_model` folds constants, drops dead nodes, sorts topologically, makes
attention masks finite and gives every node and tensor a stable name; the
result is checked with `onnx.checker` (`edgeas.onnxio.check`, where the
metadata helpers live too: calibration uses them and may not import export).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgeas.errors import ArtifactError, require
from edgeas.onnxio import check

# What replaces -inf in additive attention masks. Finite in FP16 (max 65504), and
# far below any attention score, so exp() underflows to exactly 0 in FP32 and FP16
# alike: the softmax is the same as with -inf, which TensorRT handles badly in FP16.
MASK_VALUE = -1.0e4
MAX_FOLD_ROUNDS = 12


def _onnx():
    return require("onnx", "onnx", "export")


def _gs():
    return require("onnx_graphsurgeon", "onnx-graphsurgeon", "export")


@contextlib.contextmanager
def _quiet_folding() -> Iterator[None]:
    # fold_constants reports every node it cannot fold, and the ONNX Runtime sessions
    # it folds with warn about every Unsqueeze they keep: noise for a user. Both
    # levels are put back afterwards (ONNX Runtime's default is 2, warnings).
    logger = _gs().logger.G_LOGGER
    before = logger.severity
    logger.severity = logger.ERROR
    ort = None
    with contextlib.suppress(ImportError):
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        logger.severity = before
        if ort is not None:
            ort.set_default_logger_severity(2)


def finite_attention_masks(graph) -> int:
    """Replace -inf by MASK_VALUE in constant masks added right before a Softmax."""
    gs = _gs()
    changed = 0
    for node in graph.nodes:
        if node.op != "Softmax" or not node.inputs[0].inputs:
            continue
        add = node.inputs[0].inputs[0]
        if add.op != "Add":
            continue
        for t in add.inputs:
            if isinstance(t, gs.Constant) and np.issubdtype(t.values.dtype, np.floating):
                values = np.asarray(t.values)
                if np.isneginf(values).any():
                    t.values = np.where(np.isneginf(values), MASK_VALUE, values).astype(
                        values.dtype
                    )
                    changed += 1
    return changed


def drop_empty_concat_inputs(graph) -> int:
    """Remove empty constant inputs of Concat nodes (left by folding the shape arithmetic
    of a dynamic batch); they add nothing and TensorRT warns about each one."""
    gs = _gs()
    dropped = 0
    for node in graph.nodes:
        if node.op != "Concat":
            continue
        kept = [t for t in node.inputs
                if not (isinstance(t, gs.Constant) and np.asarray(t.values).size == 0)]
        if kept and len(kept) < len(node.inputs):
            dropped += len(node.inputs) - len(kept)
            node.inputs.clear()
            node.inputs.extend(kept)
    return dropped


def _unique(name: str, used: set[str]) -> str:
    out, k = name, 1
    while out in used:
        out, k = f"{name}_{k}", k + 1
    used.add(out)
    return out


def _is_generated(name: str) -> bool:
    # Names the exporter made up from counters (onnx::Conv_4835, /x/Constant_3_output_0)
    # change whenever anything upstream changes; parameter paths (model.decoder.x.weight)
    # do not.
    return not name or name.startswith(("onnx::", "/", "_")) or name[0].isdigit()


def stable_names(graph) -> None:
    """Nodes keep their module-scope names (made unique); every other tensor is named
    after its producer ("node:k") or, for constants, its parameter path or first consumer."""
    gs = _gs()
    io = {t.name for t in (*graph.inputs, *graph.outputs)}
    used_nodes: set[str] = set()
    for node in graph.nodes:
        node.name = _unique(node.name or node.op, used_nodes)
    used: set[str] = set(io)
    for node in graph.nodes:
        for k, t in enumerate(node.outputs):
            if t.name not in io:
                t.name = _unique(f"{node.name}:{k}", used)
    for node in graph.nodes:
        for j, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant) and t.name not in used:
                base = f"{node.name}:in{j}" if _is_generated(t.name) else t.name
                t.name = _unique(base, used)


def dead_nodes(model) -> list[str]:
    """Nodes none of whose outputs is consumed or a graph output."""
    consumed = {i for n in model.graph.node for i in n.input}
    consumed |= {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if not any(o in consumed for o in n.output if o)]


def clean_model(model) -> tuple[Any, dict[str, int]]:
    """Fold, clean, sort, finite masks, stable names; returns (model, statistics)."""
    onnx, gs = _onnx(), _gs()
    before = len(model.graph.node)
    graph = gs.import_onnx(model)
    with _quiet_folding():
        count = None
        for _ in range(MAX_FOLD_ROUNDS):
            # Shape inference stops at each pad whose amounts are computed from
            # shapes (timm's TF "same" padding); once a round has folded those
            # amounts, the next one sees the shapes behind them. Static dimensions
            # (all but the batch of a dynamic graph) end up folded.
            inferred = onnx.shape_inference.infer_shapes(gs.export_onnx(graph), data_prop=True)
            graph = gs.import_onnx(inferred)
            graph.fold_constants().cleanup().toposort()
            if len(graph.nodes) == count:
                break
            count = len(graph.nodes)
    masks = finite_attention_masks(graph)
    drop_empty_concat_inputs(graph)
    graph.cleanup().toposort()
    stable_names(graph)
    cleaned = gs.export_onnx(graph)
    cleaned.ir_version = model.ir_version
    del cleaned.opset_import[:]
    cleaned.opset_import.extend(model.opset_import)
    cleaned.producer_name, cleaned.producer_version = "edgeas", _version()
    check(cleaned, "cleaned graph")
    dead = dead_nodes(cleaned)
    if dead:
        raise ArtifactError(f"graph clean-up left {len(dead)} dead nodes, e.g. {dead[0]}")
    stats = {"nodes_exported": before, "nodes": len(cleaned.graph.node), "masks_made_finite": masks}
    return cleaned, stats


def _version() -> str:
    from edgeas import __version__

    return __version__


def io_signature(model) -> dict[str, list[dict[str, Any]]]:
    """Names, element types and shapes (ints or dimension names) of the graph I/O."""
    onnx = _onnx()

    def one(v) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": dims}

    return {"inputs": [one(v) for v in model.graph.input],
            "outputs": [one(v) for v in model.graph.output]}
