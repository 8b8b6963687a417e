"""UniAS (torch) -> cleaned, checked, verified ONNX with its metadata.

Exporter: torch 2.14's TorchScript exporter (`dynamo=False`). Measured on the tiny
preset: it exports in ~9 s at opset 17 and ONNX Runtime matches PyTorch to ~2e-6.
The torch.export-based exporter (`dynamo=True`) also matches but needs the extra
`onnxscript` package, takes 25-40 s, cannot emit opset 17 (its version converter
has no Pad adapter, so the file stays at opset 18) and produces SplitToSequence
nodes on which onnx-graphsurgeon 0.6's fold_constants crashes. Both turn the
boolean attention mask into an additive -inf mask, which `onnx_graph` makes finite.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgeas import onnxio, ort
from edgeas.errors import ArtifactError, ConfigError
from edgeas.export import onnx_graph, verify
from edgeas.export.torch_graph import ExportGraph, reference_outputs
from edgeas.record import ModelRecord

FP32_TOLERANCE = 1e-3  # max relative error ONNX Runtime vs PyTorch (issue 4)
FP16_MIN_COSINE = 0.99  # per map, worst image, typed FP16 vs FP32 under ONNX Runtime
MIN_OPSET, MAX_OPSET = 17, 20  # 17: LayerNormalization as one op; 20: the exporter's newest


@dataclass
class ExportResult:
    model: Any  # onnx.ModelProto with metadata
    record: ModelRecord  # what the ONNX file carries
    parity: dict[str, float]  # output -> max relative error vs PyTorch
    stats: dict[str, int]
    images: np.ndarray  # the preprocessed images it was verified on
    outputs: dict[str, np.ndarray]  # ONNX Runtime's outputs on them
    fp16: Any = None
    fp16_record: ModelRecord | None = None
    fp16_accuracy: dict[str, dict] = field(default_factory=dict)
    fp16_stats: dict[str, Any] = field(default_factory=dict)
    fp16_range: Any = None  # fp16_emulate.Fp16Range: first overflow or peak magnitude
    fp16_failure: ArtifactError | None = None  # set when the FP16 graph misses the gate


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"--opset {opset} is not supported",
            hint=f"use {MIN_OPSET}..{MAX_OPSET} (17 has LayerNormalization, which TensorRT "
            "runs as one normalisation layer)",
        )


def torch_to_onnx(graph: ExportGraph, example: torch.Tensor, opset: int, dynamic: bool):
    """The raw ONNX of `graph` (onnx.ModelProto), exported in memory."""
    import onnx

    check_opset(opset)
    buffer = io.BytesIO()
    axes = None
    if dynamic:
        axes = {name: {0: "N"} for name in ["image", *graph.output_names]}
    with warnings.catch_warnings(), torch.no_grad():
        # The deprecation notice of the TorchScript exporter and its tracer's
        # notes about Python ints (the static channel counts) are expected.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=graph.output_names,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def export_record(
    record: ModelRecord, opset: int, batch: int | None, outputs: list[str],
    verified: dict[str, Any],
) -> ModelRecord:
    """The record with its export stage: what was exported, how, and how it was checked."""
    stage = dict(record.export or {})  # keeps what the command set (the weights' origin)
    stage.update(
        opset=opset,
        export={
            "batch": batch if batch is not None else "dynamic",
            "input": "image",
            "outputs": outputs,
            "exporter": f"torch.onnx TorchScript (torch {torch.__version__.split('+')[0]})",
            "verified": verified,
        },
    )
    return record.with_stage("export", stage, precision="fp32")


def export_model(
    model: torch.nn.Module,
    record: ModelRecord,
    opset: int = 17,
    batch: int | None = 1,
    with_map: bool = False,
    images: int = 4,
) -> ExportResult:
    """Export, clean, check and verify against `model(image)` on `images` real images."""
    if batch is not None and batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    model.eval()
    from edgeas.postprocess import level_indices

    agg = record.aggregation
    blur, use = list(agg.blur), level_indices(agg.levels, record.model.level_names)
    graph = ExportGraph(model, with_map, blur, use).eval()
    # A batch of 2 to trace a dynamic graph: tracing with 1 invites broadcasting
    # shortcuts that only hold for one image.
    n = batch or 2
    x = verify.sample_images(record, max(images, n))
    raw = torch_to_onnx(graph, torch.from_numpy(x[:n].copy()), opset, dynamic=batch is None)
    cleaned, stats = onnx_graph.clean_model(raw)

    want = reference_outputs(model, x, with_map, blur, use)
    got = ort.run(ort.open_session(cleaned.SerializeToString(), extra="export"), x)
    parity = {name: ort.relative_error(got[name], want[name]) for name in want}
    bad = {k: v for k, v in parity.items() if not v <= FP32_TOLERANCE}
    if bad:
        name, err = max(bad.items(), key=lambda kv: kv[1])
        raise ArtifactError(
            f"ONNX Runtime differs from PyTorch on {name}: max relative error {err:.3g} "
            f"> {FP32_TOLERANCE:g} (all: {_fmt(parity)})",
            hint="the exported graph is wrong; run with --debug and report the versions "
            "of torch, onnx and onnxruntime",
        )
    exported = export_record(record, opset, batch, graph.output_names, {
        "images": len(x),
        "max_relative_error_vs_pytorch": {k: float(f"{v:.3g}") for k, v in parity.items()},
    })
    onnxio.set_metadata(cleaned, exported.to_json())
    return ExportResult(cleaned, exported, parity, stats, x, got)


def add_fp16(result: ExportResult, keep: frozenset[str] | None = None) -> None:
    """The typed FP16 variant of `result.model` (FP32 groups `keep`, the converter's
    default when None), measured against the FP32 graph on the same images twice: the
    typed graph itself under ONNX Runtime, and its FP16-storage emulation
    (`fp16_emulate`), which shows the rounding and overflow that ONNX Runtime's CPU
    provider hides. The emulation also locates the first tensor that leaves the FP16
    range (`fp16_range`). A non-finite map, or a map below FP16_MIN_COSINE in either
    run, sets `result.fp16_failure` so that the caller can report the numbers before
    failing."""
    from edgeas.export.fp16 import DEFAULT_KEEP, convert_to_fp16
    from edgeas.export.fp16_emulate import emulate_fp16, fp16_range

    model16, stats = convert_to_fp16(result.model, DEFAULT_KEEP if keep is None else keep)
    runs = {
        "onnxruntime": model16,
        "fp16_storage_emulation": emulate_fp16(model16),
    }
    acc = {
        kind: ort.accuracy(
            ort.run(ort.open_session(m.SerializeToString(), extra="export"), result.images),
            result.outputs,
        )
        for kind, m in runs.items()
    }
    span = fp16_range(model16, result.images)
    stage = dict(result.record.export or {})
    stage["fp16"] = {
        "kept_fp32": stats["kept_fp32"],
        "reference": "the FP32 ONNX under ONNX Runtime",
        "images": len(result.images),
        "accuracy": {
            kind: {k: {f: v[f] for f in ("cosine_min", "max_abs", "relative")}
                   for k, v in per.items()}
            for kind, per in acc.items()
        },
        "range": span.to_json(),
    }
    record16 = result.record.with_stage("export", stage, precision="fp16")
    onnxio.set_metadata(model16, record16.to_json())
    onnxio.check(model16, "FP16 graph")
    result.fp16, result.fp16_record = model16, record16
    result.fp16_accuracy, result.fp16_stats, result.fp16_range = acc, stats, span
    result.fp16_failure = fp16_gate(acc, span)


def fp16_gate(acc: dict[str, dict[str, dict]], span) -> ArtifactError | None:
    """The error that refuses an FP16 graph, or None. `acc`: run kind -> output ->
    `ort.accuracy` entry; `span`: `fp16_range` of the emulation. Non-finite maps come
    first and name the node that overflowed, which is the cause; a low cosine names it
    too when something overflowed."""
    cause = ("" if span.overflow is None
             else f"; the first FP16 overflow: {span.overflow.describe()}")
    hint = ("deploy the FP32 model, or INT8 with `edgeas calibrate`; a node that overflows "
            "should stay FP32 in the converter (edgeas.export.fp16)")
    for kind, per in acc.items():
        for name, v in per.items():
            if not v["finite"]:
                return ArtifactError(
                    f"the FP16 graph gives non-finite {name} on {v['nonfinite_images']} of "
                    f"{span.images} images ({kind})"
                    + (cause or "; no tensor leaves the FP16 range in the emulation"),
                    hint=hint,
                )
    worst = min(
        ((kind, name, v) for kind, per in acc.items() for name, v in per.items()
         if v["cosine_min"] is not None),
        key=lambda item: item[2]["cosine_min"], default=None,
    )
    if worst is not None and worst[2]["cosine_min"] < FP16_MIN_COSINE:
        kind, name, v = worst
        return ArtifactError(
            f"the FP16 graph is not accurate enough: {name} cosine {v['cosine_min']:.4f} "
            f"< {FP16_MIN_COSINE} vs FP32 ({kind}){cause}",
            hint=hint,
        )
    return None


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2e}" for k, v in values.items())
