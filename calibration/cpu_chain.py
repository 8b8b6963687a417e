"""Which of the CPU INT8 model's Add, Pad, Clip and Relu nodes join its convolutions into
one integer chain.

ONNX Runtime runs a QLinearConv in NHWC: a float op between two of them costs a
DequantizeLinear, the op, a QuantizeLinear and two layout Transposes. On `unias-edge` the
backbone (EfficientNet-Lite0: residual Adds, ReLU6 Clips, the Pads of its stride-2
depthwise convolutions) ran slower in INT8 than in FP32 that way, 10.5 against 5.0 ms of
kernel time (benchmarks/EXPERIMENTS.md, issue 16). These ops are exact or nearly so in
uint8: Pad and Clip/Relu only move or clip values (a quantized Clip or Relu vanishes into
the convolution before it, which then quantizes its output with the clipped range instead
of the raw one), and a residual Add rounds once more.

The rule is structural, not a list of names: such a node is quantized when every input
that is not a constant comes from a quantized Conv or from a node this rule already took.
A Clip or Relu also needs to be its input's only reader: ONNX Runtime's quantizer drops a
quantized one and narrows its input's range to the clipped one only when nothing else
reads that input, so with a second reader the clip would be lost.
Adds between transformer tensors (LayerNorm, attention, Gemm outputs) are left float:
quantizing those broke the finest maps. onnx only (calibration imports no torch).
"""

from __future__ import annotations

from collections.abc import Collection

CHAIN_OPS = ("Add", "Pad", "Clip", "Relu")


def conv_chain_nodes(model, float_nodes: Collection[str] = (),
                     only: Collection[str] | None = None) -> list[str]:
    """Names of the Add/Pad/Clip/Relu nodes of `model` (a ModelProto, topologically
    sorted as ONNX requires) fed only by quantized convolutions or by each other. A Conv
    counts as quantized unless it is in `float_nodes` or, with `only`, outside `only`;
    nodes in `float_nodes` are never taken."""
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {o.name: 1 for o in graph.output}
    for node in graph.node:
        for t in node.input:
            readers[t] = readers.get(t, 0) + 1
    integer = {n.name for n in graph.node if n.op_type == "Conv" and n.name not in float_nodes
               and (only is None or n.name in only)}
    chain: list[str] = []
    for node in graph.node:
        if node.op_type not in CHAIN_OPS or node.name in float_nodes:
            continue
        activations = [t for t in node.input if t and t not in constants]
        if node.op_type in ("Clip", "Relu") and readers.get(node.input[0], 0) != 1:
            continue
        if activations and all(t in producer and producer[t].name in integer
                               for t in activations):
            chain.append(node.name)
            integer.add(node.name)
    return chain
