"""`edgeas export`: checkpoint (or an untrained preset) -> model.onnx [+ model.fp16.onnx]."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeas.errors import ConfigError
from edgeas.fileio import atomic_write_bytes

console = Console(stderr=True, soft_wrap=True)
PRECISIONS = ("fp32", "fp16")


def fp16_path(output: Path) -> Path:
    """model.onnx -> model.fp16.onnx."""
    return output.with_name(f"{output.stem}.fp16{output.suffix or '.onnx'}")


def random_init_model(config: str):
    """An untrained model of a preset or YAML, random backbone included, and its record
    (threshold unset, no classes): for sizing, benchmarks and tests."""
    import torch

    from edgeas.config import load_config
    from edgeas.train.checkpoint import model_record
    from edgeas.train.model.unias import build_model

    cfg = load_config(config)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, pretrained=False)
    record = model_record(cfg, model, [], None)
    return model, record.with_stage("export", {"weights": "random-init"})


def checkpoint_model(checkpoint: Path):
    from edgeas.record import ModelRecord, config_hash
    from edgeas.train.checkpoint import load_checkpoint, model_from_checkpoint

    data = load_checkpoint(checkpoint)
    _, model = model_from_checkpoint(data, str(checkpoint))
    record = ModelRecord.from_json(data.get("metadata"), str(checkpoint))
    if record.train is None:  # checkpoints written before the record had a train stage
        record = record.with_stage("train", {"config_sha256": config_hash(data["config"])})
    return model, record.with_stage("export", {"weights": f"checkpoint {checkpoint.name}"})


def _check_args(
    checkpoint, config, random_init, output, batch, dynamic_batch, precision, opset
) -> None:
    from edgeas.export.onnx_export import check_opset

    check_opset(opset)
    if (checkpoint is None) == (config is None):
        raise ConfigError(
            "give either --checkpoint CKPT or --config PRESET --random-init",
            hint="edgeas export --checkpoint runs/x/last.pt -o model.onnx",
        )
    if config is not None and not random_init:
        raise ConfigError(
            f"--config {config} exports an untrained model and needs --random-init",
            hint="to export trained weights use --checkpoint",
        )
    if checkpoint is not None and random_init:
        raise ConfigError("--random-init goes with --config, not with --checkpoint")
    if precision not in PRECISIONS:
        raise ConfigError(
            f"--precision {precision} is not one of {', '.join(PRECISIONS)}",
            hint="INT8 comes from `edgeas calibrate --onnx model.onnx --images DIR`",
        )
    if dynamic_batch and batch is not None:
        raise ConfigError("--batch and --dynamic-batch exclude each other")
    if output.suffix != ".onnx":
        raise ConfigError(f"-o {output}: the output must be an .onnx file")


def export_command(
    checkpoint: Path | None,
    config: str | None,
    random_init: bool,
    output: Path,
    opset: int = 17,
    batch: int | None = None,
    dynamic_batch: bool = False,
    precision: str = "fp32",
    with_map: bool = False,
) -> dict[str, Any]:
    from edgeas.export.onnx_export import FP32_TOLERANCE, add_fp16, export_model

    output = Path(output)
    _check_args(checkpoint, config, random_init, output, batch, dynamic_batch, precision, opset)
    start = time.perf_counter()
    if checkpoint is not None:
        model, record = checkpoint_model(Path(checkpoint))
    else:
        model, record = random_init_model(config)
    result = export_model(
        model, record, opset=opset, batch=None if dynamic_batch else (batch or 1),
        with_map=with_map,
    )
    atomic_write_bytes(output, result.model.SerializeToString())
    st, batch_shown = result.stats, result.record.export["export"]["batch"]
    console.print(
        f"[green]wrote[/] {output} (opset {opset}, batch {batch_shown}, "
        f"{st['nodes']} nodes after clean-up of {st['nodes_exported']}, "
        f"{st['masks_made_finite']} attention masks made finite) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    console.print(
        f"ONNX Runtime vs PyTorch on {len(result.images)} images, max relative error "
        f"(limit {FP32_TOLERANCE:g}):"
    )
    for name, err in result.parity.items():
        console.print(f"  {name:<12} {err:.2e}")
    written = {"onnx": str(output), "parity": result.parity}
    if precision == "fp16":
        add_fp16(result)
        path16 = fp16_path(output)
        _report_fp16(result)
        if result.fp16_failure is not None:
            raise result.fp16_failure
        atomic_write_bytes(path16, result.fp16.SerializeToString())
        console.print(f"[green]wrote[/] {path16}")
        written.update(onnx_fp16=str(path16), fp16_accuracy=result.fp16_accuracy)
    if not record.threshold.is_set:
        console.print("[yellow]note:[/] the threshold is unset; the runtime will need --threshold")
    console.print(f"next: edgeas build-engine --onnx {output} -o {output.with_suffix('.engine')}")
    return written


def _report_fp16(result) -> None:
    st = result.fp16_stats
    kept = ", ".join(f"{k} {v}" for k, v in st["kept_fp32"].items())
    console.print(
        f"FP16 graph: {st['fp16_nodes']} nodes FP16, {st['fp32_nodes']} kept FP32 ({kept}), "
        f"{st['casts']} casts. vs FP32 (worst image; ORT = the typed graph under ONNX "
        "Runtime, EMU = FP16 storage emulated, which ORT's CPU provider skips):"
    )
    ort, emu = result.fp16_accuracy["onnxruntime"], result.fp16_accuracy["fp16_storage_emulation"]
    for name in ort:
        parts = []
        for label, acc in (("ORT", ort[name]), ("EMU", emu[name])):
            if acc["nonfinite_images"]:
                n = len(result.images)
                parts.append(f"{label} non-finite on {acc['nonfinite_images']} of {n} images")
                continue
            cos = "" if acc["cosine_min"] is None else f"cosine {acc['cosine_min']:.6f} "
            parts.append(f"{label} {cos}max abs {acc['max_abs']:.2e}")
        console.print(f"  {name:<12} " + " | ".join(parts))
    span = result.fp16_range
    if span.overflow is not None:
        console.print(f"FP16 range (EMU): the first overflow: {span.overflow.describe()}")
    elif span.peak is not None:
        console.print(f"FP16 range (EMU): largest FP16 tensor at {span.peak.describe()}")
