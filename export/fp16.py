"""FP32 ONNX -> typed FP16 ONNX with float32 inputs and outputs (onnx and numpy only).

TensorRT 11 and TensorRT-RTX build strongly typed networks: the ONNX itself must say
which tensors are FP16. This converter casts weights and activations to FP16 and
keeps chosen groups of nodes in FP32, with a Cast at every boundary:

- ``norm``: LayerNormalization, InstanceNormalization (GroupNorm), GroupNormalization,
  BatchNormalization: their mean/variance accumulate many squares.
- ``softmax``: Softmax and the mask addition feeding it (the scores meet -1e4 there).
- ``scores``: the attention scores q.k^T: the MatMul whose product reaches a Softmax,
  and the scale/mask arithmetic between them. Their range is the problem: a trained
  unias-edge's finest-level cross-attention reaches |q.k^T| = 1.5e5 > 65504 (its keys
  reach ~2e3), inf in FP16 and NaN after the Softmax (issue 21). Softmax ignores a
  common offset, so the FP32 function is fine; q and k stay FP16, only the dot
  products and what lies between them and the Softmax run in FP32.
- ``reduce``: ReduceSum/Mean/L2/SumSquare/LogSumExp: long accumulations.
- ``tail``: everything after the last Conv/MatMul/Gemm on the way to a graph output,
  and everything computed from it (the cosine distance 1 - cos(r, t) whose
  |r|^2 |t|^2 overflows FP16, and the `--with-map` aggregation).
- ``head``: a decision head's subgraph (edgeas.head_graph: the nodes that feed only its
  output, found from the graph, the head's output named by the metadata). Its distance
  sqrt(|x|^2 - 2 x.b + |b|^2) subtracts dot products of ~1e3-1e4 to leave ~1e1-1e2:
  FP16's 11 bits leave rounding noise of the size of the result. The ``tail`` walk
  does not start from the head's output: through the backbone's residual additions
  it reached, and kept FP32, nearly the whole graph (973 of 1022 nodes of the tiny
  preset).

onnxconverter-common 1.16's converter (on PyPI) was tried first; on these graphs it
leaves `Cast(to=FLOAT)` nodes of shape arithmetic in FP16 regions and ONNX Runtime
refuses the result with a type error, hence this small converter.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from edgeas.errors import ArtifactError, ConfigError, require
from edgeas.head_graph import head_node_indices, head_output

GROUPS = ("norm", "softmax", "scores", "reduce", "tail", "head")
DEFAULT_KEEP = frozenset(GROUPS)
NORM_OPS = {"LayerNormalization", "InstanceNormalization", "GroupNormalization",
            "BatchNormalization"}
REDUCE_OPS = {"ReduceSum", "ReduceMean", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"}
HEAVY_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
# What may lie between the score MatMul and its Softmax: scale, mask, reshaping.
SCORE_PATH_OPS = {"Add", "Sub", "Mul", "Div", "Where", "Reshape", "Transpose", "Squeeze",
                  "Unsqueeze"}
SCORE_OPS = {"MatMul", "Gemm"}
# Inputs whose type the ONNX spec fixes independently of the node's data type.
FIXED_INPUTS = {"Resize": {1, 2}}
FP16_MAX = float(np.finfo(np.float16).max)


def _onnx():
    return require("onnx", "onnx", "export")


def _types(model) -> dict[str, int]:
    """Element type of every tensor, from ONNX type inference."""
    onnx = _onnx()
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def _kept_nodes(model, types: dict[str, int], keep: frozenset[str]) -> dict[int, str]:
    """Index of each node to keep in FP32 -> the group that keeps it."""
    f32 = _onnx().TensorProto.FLOAT
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    kept: dict[int, str] = {}
    head = head_output(model)
    if "head" in keep:  # first: the head is why its Reduce/tail-like nodes stay FP32
        kept.update(dict.fromkeys(head_node_indices(model, head), "head"))
    for i, n in enumerate(nodes):
        if i in kept:
            continue
        if "norm" in keep and n.op_type in NORM_OPS:
            kept[i] = "norm"
        elif "reduce" in keep and n.op_type in REDUCE_OPS:
            kept[i] = "reduce"
        elif "softmax" in keep and n.op_type == "Softmax":
            kept[i] = "softmax"
            p = producer.get(n.input[0])
            mask_add = p is not None and nodes[p].op_type == "Add"
            if mask_add and any(x in inits for x in nodes[p].input):
                kept[p] = "softmax"
    if "scores" in keep:
        for i in _score_nodes(nodes, producer, types):
            kept.setdefault(i, "scores")
    if "tail" in keep:
        tail: set[int] = set()
        stack = [producer[o.name] for o in model.graph.output
                 if o.name in producer and o.name != head]
        while stack:  # backwards from the outputs, through float data, up to a heavy op
            i = stack.pop()
            if i in tail or nodes[i].op_type in HEAVY_OPS:
                continue
            tail.add(i)
            stack += [producer[x] for x in nodes[i].input
                      if x in producer and types.get(x) == f32]
        consumers = defaultdict(list)
        for i, n in enumerate(nodes):
            for x in n.input:
                consumers[x].append(i)
        stack = list(tail)
        while stack:  # forwards: whatever is computed from the tail is post-processing
            i = stack.pop()
            for o in nodes[i].output:
                for c in consumers[o]:
                    if c not in tail:
                        tail.add(c)
                        stack.append(c)
        for i in tail:
            kept.setdefault(i, "tail")
    return kept


def _score_nodes(nodes: list, producer: dict[str, int], types: dict[str, int]) -> set[int]:
    """The attention-score MatMul of each Softmax and the nodes between them.

    Walks back from the Softmax through SCORE_PATH_OPS along the one input that is
    computed from activations (a scale, a mask or a shape is a constant, an initializer
    or not float); a path that ends anywhere but at a MatMul/Gemm keeps nothing.
    """
    f32 = _onnx().TensorProto.FLOAT
    found: set[int] = set()
    for n in nodes:
        if n.op_type != "Softmax":
            continue
        path: list[int] = []
        p = producer.get(n.input[0])
        # bounded: torch writes at most a scale and a mask between the two
        while p is not None and nodes[p].op_type in SCORE_PATH_OPS and len(path) < 8:
            path.append(p)
            data = [producer[x] for x in nodes[p].input
                    if x in producer and types.get(x) == f32
                    and nodes[producer[x]].op_type != "Constant"]
            p = data[0] if len(data) == 1 else None
        if p is not None and nodes[p].op_type in SCORE_OPS:
            found.update((*path, p))
    return found


def fp32_node_names(model, keep: frozenset[str] | set[str] = DEFAULT_KEEP) -> dict[str, str]:
    """Name of each node `convert_to_fp16` keeps in FP32 -> the group that keeps it."""
    nodes = list(model.graph.node)
    kept = _kept_nodes(model, _types(model), frozenset(keep))
    return {nodes[i].name: group for i, group in kept.items()}


def _fp16_array(values: np.ndarray, name: str, stats: dict[str, Any]) -> np.ndarray:
    big = np.isfinite(values) & (np.abs(values) > FP16_MAX)
    if big.any():
        stats["clamped_values"] += int(big.sum())
        values = np.clip(values, -FP16_MAX, FP16_MAX)
    return values.astype(np.float16)


def convert_to_fp16(model, keep: frozenset[str] | set[str] = DEFAULT_KEEP):
    """A new model: FP16 everywhere except the `keep` groups; I/O stay float32.

    Returns (model, stats) with the count of FP16/FP32 nodes, kept nodes per group
    and inserted Casts.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    keep = frozenset(keep)
    unknown = keep - set(GROUPS)
    if unknown:
        raise ConfigError(f"unknown FP32 groups {sorted(unknown)}", hint=f"known: {GROUPS}")
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    src = model
    if any(t.data_type == f16 for t in src.graph.initializer):
        raise ConfigError("the model already holds FP16 weights; convert the FP32 model")
    types = _types(src)
    kept = _kept_nodes(src, types, keep)
    graph = src.graph
    nodes = list(graph.node)
    missing = [o for n in nodes for o in n.output if o and o not in types]
    if missing:
        raise ArtifactError(f"ONNX type inference gives no type for {missing[0]}")

    def is_float_node(n) -> bool:
        return any(types.get(x) == f32 for x in (*n.input, *n.output) if x)

    half = [is_float_node(n) and i not in kept for i, n in enumerate(nodes)]
    new_type = {v.name: types[v.name] for v in graph.input}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                new_type[o] = f16 if half[i] and types[o] == f32 else types[o]
    # Graph outputs produced in FP16 get a final Cast back to float32 under their name.
    renamed = {o.name: f"{o.name}:fp16" for o in graph.output if new_type.get(o.name) == f16}
    for new in renamed.values():
        new_type[new] = f16

    inits = {t.name: t for t in graph.initializer}
    out_inits: dict[str, Any] = {}
    used_inits: set[str] = set()
    casts: dict[tuple[str, int], str] = {}
    stats: dict[str, Any] = {"clamped_values": 0, "casts": 0}
    out_nodes = []

    def typed_input(name: str, want: int) -> str:
        if name in inits:
            if inits[name].data_type != f32 or want == f32:
                used_inits.add(name)
                return name
            new = f"{name}:fp16"
            if new not in out_inits:
                arr = numpy_helper.to_array(inits[name])
                out_inits[new] = numpy_helper.from_array(_fp16_array(arr, name, stats), new)
            return new
        if new_type.get(name) == want:
            return name
        key = (name, want)
        if key not in casts:
            casts[key] = f"{name}:to_{'fp16' if want == f16 else 'fp32'}"
            out_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=want,
                                              name=f"{casts[key]}/Cast"))
            stats["casts"] += 1
        return casts[key]

    for i, n in enumerate(nodes):
        node = onnx.NodeProto()
        node.CopyFrom(n)
        for j, orig in enumerate(n.input):
            if not orig:
                continue
            x = renamed.get(orig, orig)
            node.input[j] = x
            if types.get(orig) != f32:  # shapes, indices, masks: untouched
                if x in inits:
                    used_inits.add(x)
                continue
            if j in FIXED_INPUTS.get(n.op_type, ()):
                want = f32
            elif n.op_type == "Cast":  # takes any type: no Cast in front of a Cast
                want = new_type.get(x, f32)
            else:
                want = f16 if half[i] else f32
            node.input[j] = typed_input(x, want)
        for k, o in enumerate(n.output):
            node.output[k] = renamed.get(o, o)
        if half[i]:
            _retype_attributes(node, f16, stats)
        out_nodes.append(node)
    for old, new in renamed.items():
        out_nodes.append(helper.make_node("Cast", [new], [old], to=f32, name=f"{old}/Cast"))
        stats["casts"] += 1

    new_graph = helper.make_graph(
        out_nodes, graph.name, list(graph.input), list(graph.output),
        [inits[n] for n in inits if n in used_inits] + list(out_inits.values()),
    )
    out = helper.make_model(new_graph, opset_imports=list(src.opset_import))
    out.ir_version = src.ir_version
    out.producer_name, out.producer_version = src.producer_name, src.producer_version
    out.metadata_props.extend(src.metadata_props)
    groups = defaultdict(int)
    for g in kept.values():
        groups[g] += 1
    stats.update(
        fp16_nodes=int(sum(half)),
        fp32_nodes=int(sum(1 for i, n in enumerate(nodes) if is_float_node(n) and not half[i])),
        kept_fp32={g: groups.get(g, 0) for g in sorted(keep)},
        fp16_initializers=len(out_inits),
    )
    return out, stats


def _retype_attributes(node, f16: int, stats: dict[str, Any]) -> None:
    """Attributes that carry a float32 type or value inside an FP16 region."""
    from onnx import TensorProto, helper, numpy_helper

    if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
        # without `value` the spec's default is a float32 zero
        node.attribute.append(
            helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16)))
        )
    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
            a.i = f16
        elif (node.op_type in ("Constant", "ConstantOfShape") and a.name == "value"
              and a.t.data_type == TensorProto.FLOAT):
            arr = numpy_helper.to_array(a.t)
            a.t.CopyFrom(numpy_helper.from_array(_fp16_array(arr, node.name, stats), a.t.name))
