"""`edgeas eval`: a checkpoint on a data set's test split -> metrics.json, table, figures."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeas.errors import DataError
from edgeas.record import ModelRecord

console = Console(stderr=True)
TABLE_METRICS = ("pixel_ap", "dsc", "dsc_deploy", "pixel_auroc", "aupro", "image_auroc", "mad")


@dataclass
class Predictions:
    maps: np.ndarray  # (N, H, W) float32 anomaly maps, reference aggregation
    masks: np.ndarray  # (N, H, W) uint8 0/1
    classes: list[str]
    images: list[str]  # file paths
    threshold_maps: np.ndarray | None = None  # maps in the threshold's mode, when it differs
    fused_maps: np.ndarray | None = None  # the runtime's fast path, to measure what it costs


def predict_test_set(model, record: ModelRecord, data: Path, batch: int = 8) -> Predictions:
    """Run the model over every test image of DATA (all classes it holds)."""
    import torch

    from edgeas.train.data import index_dataset
    from edgeas.train.datasets import TestImages
    from edgeas.train.inference import aggregate_maps, predict_level_maps

    recipe = record.preprocessing
    index = index_dataset(data)
    if not index.test:
        raise DataError(f"{data}: no test images found", hint="evaluation needs a test split")
    unknown = sorted(set(index.classes) - set(record.model.classes))
    if unknown:
        console.print(f"[yellow]warning:[/] classes not seen in training: {', '.join(unknown)}")
    dataset = TestImages(index.test, recipe)
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(dataset))
        levels = predict_level_maps(
            model, dataset, batch, torch.device("cpu"), lambda n: bar.advance(task, n)
        )
    size = tuple(recipe.input_size)
    maps = aggregate_maps(levels, size, "reference")
    mode = record.threshold.mode
    fused = aggregate_maps(levels, size, "fused")
    threshold_maps = fused if mode == "fused" else None
    masks = np.stack([dataset[i][1].numpy() for i in range(len(dataset))]).astype(np.uint8)
    return Predictions(
        maps, masks, [s.cls for s in index.test], [str(s.path) for s in index.test],
        threshold_maps, fused,
    )


def compute_metrics(pred: Predictions, threshold: float | None) -> dict[str, dict[str, float]]:
    """Metrics of `evaluate()`; deployable DSC on maps of the mode the threshold was fitted in."""
    from edgeas.metrics import dice_per_image, evaluate

    if pred.threshold_maps is None or threshold is None:
        return evaluate(pred.maps, pred.masks, pred.classes, threshold)
    result = evaluate(pred.maps, pred.masks, pred.classes, None)
    labels = np.asarray(pred.classes)
    values = []
    for cls, metrics in result.items():
        if cls != "mean":
            keep = labels == cls
            metrics["dsc_deploy"] = dice_per_image(
                pred.threshold_maps[keep], pred.masks[keep], threshold
            )
            values.append(metrics["dsc_deploy"])
    result["mean"]["dsc_deploy"] = float(np.nanmean(values)) if values else float("nan")
    return result


def aggregation_check(pred: Predictions) -> dict[str, float]:
    """pAP of the runtime's fused aggregation against the reference one (protocol 3: a gap
    above 0.5 points makes `reference` the runtime default)."""
    from edgeas.metrics import evaluate

    if pred.fused_maps is None:
        return {}
    ref = evaluate(pred.maps, pred.masks, pred.classes)["mean"]["pixel_ap"]
    fused = evaluate(pred.fused_maps, pred.masks, pred.classes)["mean"]["pixel_ap"]
    return {"pixel_ap_reference": ref, "pixel_ap_fused": fused,
            "fused_minus_reference_points": 100 * (fused - ref)}


def print_table(result: dict[str, dict[str, float]], title: str) -> None:
    table = Table(title=title)
    table.add_column("class")
    shown = [m for m in TABLE_METRICS if m in result["mean"]]
    for name in shown:
        table.add_column(name, justify="right")
    for cls, metrics in result.items():
        cells = ["-" if math.isnan(metrics[m]) else f"{100 * metrics[m]:.2f}" for m in shown]
        table.add_row(f"[bold]{cls}[/]" if cls == "mean" else cls, *cells)
    Console().print(table)


def eval_command(checkpoint: Path, data: Path, out: Path | None, batch: int = 8) -> dict:
    from edgeas.fileio import atomic_write_text
    from edgeas.train.checkpoint import load_checkpoint, model_from_checkpoint

    stored = load_checkpoint(checkpoint)
    _, model = model_from_checkpoint(stored, str(checkpoint))
    record = ModelRecord.from_json(stored.get("metadata"), str(checkpoint))
    pred = predict_test_set(model, record, Path(data), batch)
    threshold = record.threshold.value
    result = compute_metrics(pred, threshold)
    print_table(result, f"{checkpoint} on {data} (percent)")
    out = Path(out) if out else Path(checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, allow_nan=True))
    check = aggregation_check(pred)
    if check:
        atomic_write_text(out / "aggregation.json", json.dumps(check, indent=2, allow_nan=True))
        console.print(
            f"aggregation: pAP reference {100 * check['pixel_ap_reference']:.2f}, fused "
            f"{100 * check['pixel_ap_fused']:.2f} ({check['fused_minus_reference_points']:+.2f} "
            "points)"
        )
    from edgeas.train.report import write_figures

    figures = write_figures(pred, result, threshold, out)
    console.print(f"wrote {out / 'metrics.json'} and {len(figures)} figures in {out}")
    return result
