"""`edgeas eval`: a checkpoint on a data set's test split -> metrics.json, table, figures."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeas.errors import DataError
from edgeas.record import ModelRecord

console = Console(stderr=True)
TABLE_METRICS = ("pixel_ap", "dsc", "dsc_deploy", "pixel_auroc", "aupro", "image_auroc", "mad")
# the station's OK/NG quality, a table of its own (short headings: it must fit 80 columns)
DECISION_TABLE = {"frame_recall": "frame recall", "frame_false_ng": "false NG",
                  "recall_at_fng_1": "recall @1% fNG", "recall_at_fng_5": "recall @5% fNG"}


@dataclass
class Predictions:
    maps: np.ndarray  # (N, H, W) float32: the model's setting, reference mode (paper-like)
    masks: np.ndarray  # (N, H, W) uint8 0/1
    classes: list[str]
    images: list[str]  # file paths
    # the maps the station's decisions come from (the record's mode and setting), when
    # they differ from `maps`; deployable DSC and the decision metrics use them
    station_maps: np.ndarray | None = None
    decision_mode: str = "reference"  # the aggregation mode the station decides with
    levels: list[np.ndarray] = field(default_factory=list, repr=False)  # raw, res1 first
    _scores: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def decision_maps(self) -> np.ndarray:
        """The maps the station's decisions come from (its aggregation), model size."""
        return self.maps if self.station_maps is None else self.station_maps

    def decision_scores(self, min_area: int) -> np.ndarray:
        """`edgeas.decisions.decision_scores` of `decision_maps`, computed once per min_area
        (the metrics and the figure share them)."""
        from edgeas.decisions import decision_scores

        if min_area not in self._scores:
            self._scores[min_area] = decision_scores(self.decision_maps, min_area)
        return self._scores[min_area]


def predict_test_set(model, record: ModelRecord, data: Path, batch: int = 8) -> Predictions:
    """Run the model over every test image of DATA (all classes it holds)."""
    import torch

    from edgeas.postprocess import record_setting
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
    mode, smoothing, use = record_setting(record)
    maps = aggregate_maps(levels, size, "reference", smoothing, use)
    station = None if mode == "reference" else aggregate_maps(levels, size, mode, smoothing, use)
    masks = np.stack([dataset[i][1].numpy() for i in range(len(dataset))]).astype(np.uint8)
    return Predictions(
        maps, masks, [s.cls for s in index.test], [str(s.path) for s in index.test],
        station, mode, levels,
    )


def compute_metrics(pred: Predictions, threshold: float | None,
                    min_area: int = 0) -> dict[str, dict[str, float]]:
    """Metrics of `evaluate()` plus the decision metrics of `edgeas.decisions` (the
    station's rule: `threshold`, `min_area`, maps of its aggregation mode, model size);
    deployable DSC on maps of the mode the threshold was fitted in."""
    result = _segmentation_metrics(pred, threshold)
    decisions = decision_metrics_of(pred, threshold, min_area)[0]
    for cls, metrics in result.items():
        metrics.update(decisions[cls])
    return result


def decision_metrics_of(pred: Predictions, threshold: float | None, min_area: int):
    """(metrics, curves) of `edgeas.decisions.decision_report` for these predictions."""
    from edgeas.decisions import decision_report

    return decision_report(pred.decision_maps, pred.masks, pred.classes, threshold, min_area,
                           scores=pred.decision_scores(min_area))


def _segmentation_metrics(pred: Predictions,
                          threshold: float | None) -> dict[str, dict[str, float]]:
    from edgeas.metrics import dice_per_image, evaluate

    if pred.station_maps is None or threshold is None:
        return evaluate(pred.maps, pred.masks, pred.classes, threshold)
    result = evaluate(pred.maps, pred.masks, pred.classes, None)
    labels = np.asarray(pred.classes)
    values = []
    for cls, metrics in result.items():
        if cls != "mean":
            keep = labels == cls
            metrics["dsc_deploy"] = dice_per_image(
                pred.station_maps[keep], pred.masks[keep], threshold
            )
            values.append(metrics["dsc_deploy"])
    result["mean"]["dsc_deploy"] = float(np.nanmean(values)) if values else float("nan")
    return result


def print_table(result: dict[str, dict[str, float]], title: str,
                columns: tuple[str, ...] | dict[str, str] = TABLE_METRICS) -> None:
    table = Table(title=title)
    table.add_column("class")
    shown = [m for m in columns if m in result["mean"]]
    heads = columns if isinstance(columns, dict) else {}
    for name in shown:
        table.add_column(heads.get(name, name), justify="right")
    for cls, metrics in result.items():
        cells = ["-" if math.isnan(metrics[m]) else f"{100 * metrics[m]:.2f}" for m in shown]
        table.add_row(f"[bold]{cls}[/]" if cls == "mean" else cls, *cells)
    Console().print(table)


def decisions_title(threshold: float | None, min_area: int, pred: Predictions) -> str:
    """What the decision table was measured with: the station's rule at model size."""
    h, w = pred.decision_maps.shape[-2:]
    rule = f"tau {threshold:.5g}" if threshold is not None else "no stored threshold"
    return f"decisions: {rule}, min_area {min_area}, {pred.decision_mode} {w}x{h} (percent)"


def few_normal_note(curves) -> str | None:
    """A note naming the classes with too few normal images to resolve a false-NG target
    (fewer than 1 / target: the curve number is then the recall at zero false NG)."""
    from edgeas.decisions import FNG_TARGETS

    lowest = min(FNG_TARGETS.values())
    few = {c: k.n_normal for c, k in curves.items() if 0 < k.n_normal * lowest < 1}
    if not few:
        return None
    keys = [k for k, t in FNG_TARGETS.items() if any(n * t < 1 for n in few.values())]
    named = ", ".join(f"{c} {n}" for c, n in few.items())
    return (f"note: too few normal test images for {' / '.join(keys)} in {named}: below "
            "1/target images they are the recall at 0 false NG")


def eval_command(checkpoint: Path, data: Path, out: Path | None, batch: int = 8) -> dict:
    from edgeas.fileio import atomic_write_text
    from edgeas.train.checkpoint import load_checkpoint, model_from_checkpoint

    stored = load_checkpoint(checkpoint)
    _, model = model_from_checkpoint(stored, str(checkpoint))
    record = ModelRecord.from_json(stored.get("metadata"), str(checkpoint))
    pred = predict_test_set(model, record, Path(data), batch)
    threshold, min_area = record.threshold.value, record.min_area
    result = compute_metrics(pred, threshold, min_area)
    print_table(result, f"{checkpoint} on {data} (percent)")
    print_table(result, decisions_title(threshold, min_area, pred), DECISION_TABLE)
    note = few_normal_note(decision_metrics_of(pred, threshold, min_area)[1])
    if note:
        console.print(note)
    out = Path(out) if out else Path(checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, allow_nan=True))
    from edgeas.train.eval_settings import compare_settings, print_settings

    check = compare_settings(pred, record, threshold, min_area)
    atomic_write_text(out / "aggregation.json", json.dumps(check, indent=2, allow_nan=True))
    print_settings(check)
    from edgeas.train.report import write_figures

    figures = write_figures(pred, result, threshold, out, min_area)
    console.print(f"wrote {out / 'metrics.json'} and {len(figures)} figures in {out}")
    return result
