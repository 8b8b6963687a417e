"""FP16 on a CPU: a typed FP16 graph run with FP16 storage emulated, and where it overflows.

ONNX Runtime's CPU provider hides FP16 overflow (see `emulate_fp16`), so the export's
FP16 gate runs the emulation, and when a map goes non-finite `fp16_range` says which
node left the FP16 range first, so that the error names the computation to fix rather
than the map that ends up NaN several hundred nodes later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeas import ort
from edgeas.export.fp16 import FP16_MAX, _types

UNROUNDED = ":unrounded"  # suffix of an FP16 tensor's value before its FP16 rounding
# The smallest magnitude that FP16 rounds to inf: 65504 plus half its ulp (32), rounding
# to nearest even. Between FP16_MAX and this, values round down to 65504 and stay finite.
FP16_INF_FROM = 65520.0


def emulate_fp16(model16):
    """An FP32 twin of a typed FP16 model that rounds every FP16 tensor through FP16.

    ONNX Runtime's CPU provider has no FP16 kernel for many ops; it runs chains of
    them in FP32 and drops the Casts in between, which hides FP16 rounding and
    overflow (|r|^2 |t|^2 of the cosine reaches ~7e6 > 65504 on the tiny preset and
    still comes out finite). Here each FP16 tensor is followed by an explicit
    Cast(FP16) -> Cast(FP32) pair, which ONNX Runtime keeps: FP16 storage with FP32
    arithmetic inside each op, i.e. what TensorRT's FP16 kernels do. The value before
    rounding stays in the graph as `NAME:unrounded` (what `fp16_range` reads).
    """
    from onnx import TensorProto, helper, numpy_helper

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    types = _types(model16)
    g = model16.graph
    inits = []
    for t in g.initializer:
        if t.data_type == f16:
            inits.append(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32),
                                                 t.name))
        else:
            inits.append(t)
    nodes = []
    for n in g.node:
        node = type(n)()
        node.CopyFrom(n)
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == f16:
                a.i = f32  # compute in FP32; the rounding pair below stores in FP16
            elif a.name == "value" and a.t.data_type == f16:
                a.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
        rounded = []
        for k, o in enumerate(node.output):
            if o and types.get(o) == f16:
                node.output[k] = f"{o}{UNROUNDED}"
                rounded.append(o)
        nodes.append(node)
        for o in rounded:
            nodes.append(helper.make_node("Cast", [f"{o}{UNROUNDED}"], [f"{o}:f16"], to=f16))
            nodes.append(helper.make_node("Cast", [f"{o}:f16"], [o], to=f32))
    graph = helper.make_graph(nodes, g.name, list(g.input), list(g.output), inits)
    out = helper.make_model(graph, opset_imports=list(model16.opset_import))
    out.ir_version = model16.ir_version
    return out


@dataclass(frozen=True)
class RangeHit:
    """One tensor of the typed graph and the largest magnitude it took on the images."""

    node: str  # the node of the typed graph that produces it
    op_type: str
    tensor: str
    precision: str  # "fp16" or "fp32", its type in the typed graph
    max_abs: float  # largest finite |x| over the images, before FP16 rounding
    nonfinite: bool  # NaN or inf seen (before FP16 rounding)
    images: int  # on how many images it leaves the FP16 range (or is non-finite)

    def describe(self) -> str:
        """'node N (Op, fp16) ...', one phrase for an error message or a report."""
        what = f"node {self.node} ({self.op_type}, {self.precision})"
        if self.images == 0:
            return f"{what} peaks at |x| {self.max_abs:.3g} (FP16 max {FP16_MAX:g})"
        if self.max_abs >= FP16_INF_FROM:
            reach = f"reaches |x| {self.max_abs:.3g} > FP16 max {FP16_MAX:g}"
        else:
            reach = f"gives non-finite values (finite |x| up to {self.max_abs:.3g})"
        return f"{what} {reach} on {self.images} image(s)"

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "precision": self.precision,
                "max_abs": float(f"{self.max_abs:.4g}"), "nonfinite": self.nonfinite,
                "images": self.images}


@dataclass(frozen=True)
class Fp16Range:
    """Where a typed FP16 graph stands against FP16's range on some images."""

    images: int
    overflow: RangeHit | None  # the first tensor, in graph order, that FP16 cannot hold
    peak: RangeHit | None  # without overflow: the FP16 tensor closest to FP16_MAX

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images,
                "overflow": None if self.overflow is None else self.overflow.to_json(),
                "peak": None if self.peak is None else self.peak.to_json()}


def fp16_range(model16, images: np.ndarray) -> Fp16Range:
    """Run `emulate_fp16(model16)` on `images` one at a time with every float tensor
    exposed; an FP16 tensor overflows when FP16 rounds it to inf (or it is NaN), an FP32
    one when it is non-finite. Graph order is a topological order, so the first hit is
    a cause, not a consequence, of the non-finite values after it."""
    from onnx import TensorProto, helper

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    types = _types(model16)
    watched: list[tuple[str, str, Any]] = []  # (exposed name, precision, node)
    for node in model16.graph.node:
        for o in node.output:
            if o and types.get(o) == f16:
                watched.append((f"{o}{UNROUNDED}", "fp16", node))
            elif o and types.get(o) == f32:
                watched.append((o, "fp32", node))
    emulated = emulate_fp16(model16)
    present = {o.name for o in emulated.graph.output}
    emulated.graph.output.extend(helper.make_tensor_value_info(name, f32, None)
                                 for name, _, _ in watched if name not in present)
    session = ort.open_session(emulated.SerializeToString(), extra="export")
    peak = np.zeros(len(watched))
    bad = np.zeros(len(watched), dtype=bool)
    hits = np.zeros(len(watched), dtype=int)
    for i in range(len(images)):
        values = ort.run(session, images[i : i + 1])
        for k, (name, precision, _) in enumerate(watched):
            mag, finite = _magnitude(values[name])
            limit = FP16_INF_FROM if precision == "fp16" else np.inf
            hits[k] += not finite or mag >= limit
            bad[k] |= not finite
            peak[k] = max(peak[k], mag)
        del values  # every tensor of the graph: one image's worth at a time

    def hit(k: int) -> RangeHit:
        name, precision, node = watched[k]
        tensor = name.removesuffix(UNROUNDED)
        return RangeHit(node.name, node.op_type, tensor, precision, float(peak[k]),
                        bool(bad[k]), int(hits[k]))

    first = next((k for k in range(len(watched)) if hits[k]), None)
    if first is not None:
        return Fp16Range(len(images), hit(first), None)
    halves = [k for k, w in enumerate(watched) if w[1] == "fp16"]
    top = max(halves, key=lambda k: peak[k], default=None)
    return Fp16Range(len(images), None, None if top is None else hit(top))


def _magnitude(values: np.ndarray) -> tuple[float, bool]:
    """(largest finite |x|, whether every value is finite)."""
    if not values.size:
        return 0.0, True
    a = np.abs(values)
    mag = float(np.max(a))
    if np.isfinite(mag):
        return mag, True
    finite = a[np.isfinite(a)]
    return (float(finite.max()) if finite.size else 0.0), False
