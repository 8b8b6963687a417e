"""FP32 ONNX + activation ranges -> INT8 ONNX, with ONNX Runtime's static quantizer.

Two formats from the same ranges:

- `qdq` (model.int8.onnx, for TensorRT 11 / TensorRT-RTX / TensorRT 10 explicit
  quantization): QuantizeLinear/DequantizeLinear pairs, int8 activations per tensor and
  int8 weights per output channel, all symmetric (TensorRT's parser rejects non-zero
  zero points), biases left in float (it also rejects int32 bias inputs), and only
  Conv, MatMul and Gemm quantized (quantizing the constants of Pad breaks
  TensorRT-RTX's build). Q/DQ sit on the inputs of those ops, not on their outputs,
  TensorRT's recommended placement: a quantized output of the stem convolution (its
  range is that of the pre-ReLU6 values, ~10x the useful one) cost the trained tiny
  model 5 pAP points; without it INT8 matched FP32 within 0.05.
- `qoperator` (model.int8.cpu.onnx, for ONNX Runtime on a CPU): QLinearConv /
  QLinearMatMul / QGemm with uint8 activations and int8 weights, the pairing ONNX
  Runtime's CPU kernels implement; ONNX Runtime runs the Q/DQ form slower than FP32.
  Weights use 7 bits (reduce_range): on x86 CPUs without VNNI the uint8 x int8 kernels
  add pairs of products in int16 and saturate with full-range weights, which on an
  AVX2 machine cost the tiny model 3 pAP points at the stem convolution. Only MatMuls
  with a constant weight are quantized: the attention's products of two activations
  (Q K^T, A V) stay float, since each would need a QuantizeLinear on both inputs and a
  QLinearSoftmax before it, conversions that cost more than the integer product saves
  (unias-edge: 1325 nodes instead of 1427, 1.19x FP32 instead of 1.05x in one
  interleaved run; benchmarks/EXPERIMENTS.md, issue 16). Before quantizing, each MatMul
  by a constant weight followed by a constant bias is rewritten as a 2-D Gemm
  (calibration/cpu_gemm.py), which quantizes to one QGemm with its bias inside. The
  Adds, Pads and ReLU/ReLU6 fed only by quantized convolutions (the backbone's residual
  blocks) are quantized too (calibration/cpu_chain.py), so that the convolutions run as
  one integer chain instead of leaving and re-entering float around each of them.

Either format keeps a decision head's subgraph (edgeas.head_graph: the nodes that feed
only its output) in float, whatever `exclude`/`only` say: its nearest-neighbour distance
is a minimum over |x|^2 - 2 x.b + |b|^2, a difference of large dot products that an INT8
MatMul would leave as rounding noise. Its inputs, the backbone features the level maps
share, are quantized as those maps need.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeas.calibration.cpu_chain import CHAIN_OPS, conv_chain_nodes
from edgeas.calibration.cpu_gemm import matmul_bias_to_gemm
from edgeas.calibration.ranges import Ranges
from edgeas.errors import CalibrationError, require
from edgeas.head_graph import head_node_names

OP_TYPES = ("Conv", "MatMul", "Gemm")
FORMATS = ("qdq", "qoperator")
# An earlier experiment of this project found TensorRT-RTX's parser needing IR version 8
# for Q/DQ models (not re-checked here); IR 8 is what ONNX 1.10-1.12 wrote, and it covers
# opsets up to 17, so a newer IR is lowered only for such opsets.
TRT_IR_VERSION = 8
TRT_IR_MAX_OPSET = 17
_METHOD_NAMES = {"entropy": "Entropy", "percentile": "Percentile", "minmax": "MinMax"}


def describe(fmt: str, head_nodes: int = 0) -> dict[str, Any]:
    """What the quantizer was asked for, as recorded in the metadata and the report;
    `head_nodes`: the decision head's nodes, kept float (named only when there are any)."""
    if fmt == "qdq":
        out = {"format": "qdq", "activations": "int8 symmetric per-tensor, op inputs only",
               "weights": "int8 symmetric per-channel", "bias": "float",
               "op_types": list(OP_TYPES), "target": "TensorRT (explicit quantization)"}
    else:
        out = {"format": "qoperator", "activations": "uint8 asymmetric per-tensor",
               "weights": "int8 symmetric per-channel, 7-bit range", "bias": "int32",
               "op_types": list(OP_TYPES), "matmul": "constant weights only",
               "graph": "MatMul + bias as Gemm (QGemm)",
               "conv_chain": "Add/Pad/Clip/Relu fed only by quantized Conv",
               "target": "ONNX Runtime CPU"}
    if head_nodes:
        out["decision_head"] = {"float_nodes": head_nodes}
    return out


def float_head(model) -> list[str]:
    """The decision head's nodes (edgeas.head_graph), which no INT8 model quantizes."""
    return head_node_names(model)


def _with_copies(ranges: Ranges, same_values: dict[str, str]) -> Ranges:
    """`ranges` plus the tensors a graph edit added, each with the range of the tensor
    whose values it carries (a reshaped view holds the same numbers)."""
    def extend(table: dict[str, float]) -> dict[str, float]:
        return {**table, **{new: table[old] for new, old in same_values.items()
                            if old in table}}

    return replace(ranges, amax=extend(ranges.amax), low=extend(ranges.low),
                   high=extend(ranges.high))


def _tensors_data(q, ranges: Ranges):
    """ONNX Runtime's calibration record: (lowest, highest) = the observed range clipped
    to +-amax. Q/DQ symmetrises it to +-amax again; the uint8 CPU model keeps the
    one-sided range of post-ReLU tensors instead of wasting half of its levels."""
    data = {}
    for name, amax in ranges.amax.items():
        lo = max(ranges.low[name], -amax)
        hi = min(ranges.high[name], amax)
        data[name] = q.calibrate.TensorData(lowest=np.float32(lo), highest=np.float32(hi))
    method = q.CalibrationMethod[_METHOD_NAMES[ranges.method]]
    return method, q.calibrate.TensorsData(method, data)


@contextlib.contextmanager
def _quiet() -> Any:
    # quantize_static logs a pre-processing suggestion at WARNING through the root logger
    # and prints progress; neither means anything to an edgeas user.
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(before)


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def quantize(model, ranges: Ranges, fmt: str, exclude: Sequence[str] = (),
             only: Sequence[str] | None = None):
    """The INT8 ModelProto of `model` (an FP32 ModelProto) in format `fmt`: every Conv,
    MatMul and Gemm node quantized except those named in `exclude` (they stay float: in
    the Q/DQ model TensorRT then runs them in FP16/FP32), or, with `only`, just those;
    never the decision head's nodes (`float_head`)."""
    if fmt not in FORMATS:
        raise CalibrationError(f"unknown INT8 format {fmt!r}")
    onnx = require("onnx", "onnx", "export")
    q = require("onnxruntime.quantization", "onnxruntime", "export")
    head = float_head(model)
    if head:  # excluded even from `only`: nodes_to_exclude wins over nodes_to_quantize
        exclude = list(dict.fromkeys([*exclude, *head]))
        if only is not None:
            asked = list(only)
            only = [n for n in asked if n not in set(head)]
            if asked and not only:  # ONNX Runtime would read [] as "every node"
                raise CalibrationError("the nodes to quantize are all the decision head's, "
                                       "which stays float")
    op_types = list(OP_TYPES)
    if fmt == "qoperator":  # MatMul + bias -> Gemm: one QGemm instead of three ops
        # nodes that stay float keep their names (mixed precision and the report use them)
        model, edit = matmul_bias_to_gemm(model, keep=set(exclude),
                                          only=None if only is None else set(only))
        only = None if only is None else [edit.nodes.get(n, n) for n in only]
        ranges = _with_copies(ranges, edit.same_values)
        # the convolutions' Adds, Pads and activations join them into one integer chain
        chain = set(conv_chain_nodes(model, float_nodes=set(exclude), only=only))
        op_types += CHAIN_OPS
        if only is not None:
            only = [*only, *sorted(chain)]
        else:
            exclude = [*exclude, *(n.name for n in model.graph.node
                                   if n.op_type in CHAIN_OPS and n.name not in chain)]
    method, tensors = _tensors_data(q, ranges)
    if fmt == "qdq":
        kwargs = {
            "quant_format": q.QuantFormat.QDQ,
            "activation_type": q.QuantType.QInt8,
            "weight_type": q.QuantType.QInt8,
            "reduce_range": False,
            "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True,
                              "QuantizeBias": False,
                              "OpTypesToExcludeOutputQuantization": list(OP_TYPES)},
        }
    else:
        kwargs = {
            "quant_format": q.QuantFormat.QOperator,
            "activation_type": q.QuantType.QUInt8,
            "weight_type": q.QuantType.QInt8,
            "reduce_range": True,
            "extra_options": {"WeightSymmetric": True, "MatMulConstBOnly": True},
        }
    with tempfile.TemporaryDirectory(prefix="edgeas-quant-") as tmp:
        cache = Path(tmp) / "ranges.json"
        out = Path(tmp) / f"model.{fmt}.onnx"
        # The ranges are already computed: handing them over as ONNX Runtime's own
        # calibration cache makes quantize_static skip its calibration pass.
        q.calibrate.save_tensors_data(tensors, cache)
        try:
            with _quiet(), contextlib.redirect_stdout(None):
                q.quantize_static(
                    model, out, calibration_data_reader=None, per_channel=True,
                    op_types_to_quantize=op_types,
                    nodes_to_quantize=list(only) if only is not None else None,
                    nodes_to_exclude=list(exclude) or None,
                    calibrate_method=method, calibration_cache_path=cache, **kwargs,
                )
        except Exception as exc:  # ONNX Runtime raises bare ValueError/RuntimeError here
            raise CalibrationError(f"ONNX Runtime could not quantize the model ({fmt}): {exc}",
                                   hint="run with --debug for the traceback") from exc
        result = onnx.load(str(out))
    if fmt == "qdq" and _opset(result) <= TRT_IR_MAX_OPSET and result.ir_version > TRT_IR_VERSION:
        result.ir_version = TRT_IR_VERSION
    return result


def qdq_problems(model) -> list[str]:
    """Why TensorRT's parser would refuse this Q/DQ graph: non-zero zero points, per-tensor
    weights, int32 biases fed through DequantizeLinear. Empty when it is fine."""
    onnx = require("onnx", "onnx", "export")
    numpy_helper = onnx.numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) > 2 and node.input[2] in inits:
            zp = numpy_helper.to_array(inits[node.input[2]])
            if np.any(zp != 0):
                problems.append(f"{node.name}: non-zero zero point")
        src = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and src is not None:
            if src.data_type == onnx.TensorProto.INT32:
                problems.append(f"{node.name}: dequantizes an int32 initializer (a bias)")
            scale = inits.get(node.input[1])
            if scale is not None and len(src.dims) > 1 and len(scale.dims) != 1:
                problems.append(f"{node.name}: weight {src.name} is not quantized per channel")
    return problems
