"""The CPU INT8 model's one graph edit: MatMul by a constant weight plus a constant bias
becomes Reshape -> Gemm -> Reshape, so that ONNX Runtime's quantizer makes one QGemm
(bias inside, as int32) where it made a QLinearMatMul, a DequantizeLinear and a float Add.

The transformer's projections and FFNs act on (tokens, batch, channels) tensors; ONNX's
Gemm takes 2-D ones, which is why the export has MatMul + Add there and why the quantized
graph kept 61 float bias Adds on `unias-edge` (benchmarks/EXPERIMENTS.md, issue 16:
46.4 against 50.3 ms per frame with the edit, FP32 maps bit-identical). Only the QOperator
model (model.int8.cpu.onnx) gets it; the Q/DQ model for TensorRT keeps the exported graph.
onnx and onnx-graphsurgeon only (calibration imports no torch).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from edgeas.errors import require


@dataclass
class GemmEdit:
    """What the edit changed: new Gemm node per replaced MatMul, and the tensors it added
    with the existing tensor whose values each one carries (for their INT8 ranges)."""

    nodes: dict[str, str] = field(default_factory=dict)
    same_values: dict[str, str] = field(default_factory=dict)


def _rows_shape(shape) -> list[int] | None:
    """The Reshape target that restores `shape` (the MatMul's output), or None when more
    than one dimension is unknown (a Reshape can infer only one)."""
    if shape is None or len(shape) < 2:
        return None
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in shape]
    return dims if dims.count(-1) <= 1 else None


def matmul_bias_to_gemm(model, keep: Collection[str] = (), only: Collection[str] | None = None):
    """(the edited ModelProto, GemmEdit). Only nodes that will be quantized gain from the
    edit, so the others keep their op and name: `keep`, MatMul names left as they are (the
    decision head's, nodes kept float); `only`, when given, the names that may change."""
    onnx = require("onnx", "onnx", "export")
    gs = require("onnx_graphsurgeon", "onnx-graphsurgeon", "export")
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    edit = GemmEdit()
    for node in list(graph.nodes):
        if (node.op != "MatMul" or node.name in keep or (only is not None
                                                        and node.name not in only)
                or len(node.outputs[0].outputs) != 1):
            continue
        x, weight = node.inputs
        add = node.outputs[0].outputs[0]
        if not isinstance(weight, gs.Constant) or weight.values.ndim != 2 or add.op != "Add":
            continue
        bias = [t for t in add.inputs if t is not node.outputs[0]]
        k, n = weight.values.shape
        if (len(bias) != 1 or not isinstance(bias[0], gs.Constant)
                or np.shape(bias[0].values) != (n,)):
            continue
        out_shape = _rows_shape(add.outputs[0].shape)
        if out_shape is None or out_shape[-1] != n:
            continue
        name = node.name or add.outputs[0].name
        rows_in = gs.Variable(f"{name}/rows_in", dtype=x.dtype)
        rows_out = gs.Variable(f"{name}/rows_out", dtype=add.outputs[0].dtype)
        result = add.outputs[0]
        add.outputs.clear()
        node.outputs.clear()
        graph.nodes += [
            gs.Node("Reshape", f"{name}/to_rows",
                    inputs=[x, gs.Constant(f"{name}/rows_shape", np.array([-1, k], np.int64))],
                    outputs=[rows_in]),
            gs.Node("Gemm", f"{name}/gemm", inputs=[rows_in, weight, bias[0]],
                    outputs=[rows_out]),
            gs.Node("Reshape", f"{name}/from_rows",
                    inputs=[rows_out, gs.Constant(f"{name}/out_shape",
                                                  np.array(out_shape, np.int64))],
                    outputs=[result]),
        ]
        edit.nodes[node.name] = f"{name}/gemm"
        edit.same_values[rows_in.name] = x.name
        edit.same_values[rows_out.name] = result.name
    graph.cleanup().toposort()
    edited = gs.export_onnx(graph)
    del edited.metadata_props[:]  # the edgeas record travels as it was
    edited.metadata_props.extend(model.metadata_props)
    del edited.graph.value_info[:]  # inferred shapes of the old graph: not needed
    return edited, edit
