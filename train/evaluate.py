"""`edgeas eval`: a checkpoint on a data set's test split -> metrics.json, table, figures."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeas.errors import DataError, ModelOutputError
from edgeas.record import DecisionHead, ModelRecord

console = Console(stderr=True)
TABLE_METRICS = ("pixel_ap", "dsc", "dsc_deploy", "pixel_auroc", "aupro", "image_auroc", "mad")
# the station's OK/NG quality, a table of its own (short headings: it must fit 80 columns)
DECISION_TABLE = {"frame_recall": "frame recall", "frame_false_ng": "false NG",
                  "recall_at_fng_1": "recall @1% fNG", "recall_at_fng_5": "recall @5% fNG"}
# With a decision head the image-level figures are the head's; what the UniAS map alone
# gives goes next to them under MAP_PREFIX. Not frame_recall / frame_false_ng: the stored
# threshold is in the head's units and means nothing on the UniAS map.
MAP_PREFIX = "map_"
MAP_IMAGE_FIGURES = ("image_auroc", "image_ap", "image_f1max", "mad")  # edgeas.metrics'
MAP_DECISION_FIGURES = ("recall_at_fng_1", "recall_at_fng_5")  # threshold-free
HEAD_FIGURES = (*MAP_IMAGE_FIGURES, *MAP_DECISION_FIGURES)
MAP_ROW = "UniAS map"  # the decision table's comparison row (its class means)


@dataclass
class Predictions:
    maps: np.ndarray  # (N, H, W) float32: the model's setting, reference mode (paper-like)
    masks: np.ndarray  # (N, H, W) uint8 0/1
    classes: list[str]
    images: list[str]  # file paths
    # the maps the station's decisions come from (the record's mode and setting), when
    # they differ from `maps`; deployable DSC and the decision metrics use them
    station_maps: np.ndarray | None = None
    decision_mode: str = "reference"  # the station's aggregation mode (of its UniAS map)
    levels: list[np.ndarray] = field(default_factory=list, repr=False)  # raw, res1 first
    # a model with a decision head: the head's maps (N, H, W) at model size, on which the
    # station decides (the threshold was fitted on them); the UniAS maps stay the heat maps
    head_maps: np.ndarray | None = field(default=None, repr=False)
    head: DecisionHead | None = None
    _scores: dict[tuple[bool, int], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def aggregated_maps(self) -> np.ndarray:
        """The UniAS maps in the station's aggregation (setting and mode), model size."""
        return self.maps if self.station_maps is None else self.station_maps

    @property
    def decision_maps(self) -> np.ndarray:
        """The maps the station's decisions come from: the decision head's when the model
        has one, else its aggregated UniAS maps; model size."""
        return self.aggregated_maps if self.head_maps is None else self.head_maps

    @property
    def decided_on(self) -> str:
        """What the OK/NG decision is taken on, for titles."""
        return (f"{self.decision_mode} maps" if self.head is None
                else f"{self.head.kind} decision head maps")

    def decision_scores(self, min_area: int, aggregated: bool = False) -> np.ndarray:
        """`edgeas.decisions.decision_scores` of `decision_maps` (`aggregated`: of
        `aggregated_maps`), computed once per min_area (the metrics and the figure share
        them)."""
        from edgeas.decisions import decision_scores

        key = (aggregated or self.head_maps is None, min_area)
        if key not in self._scores:
            maps = self.aggregated_maps if aggregated else self.decision_maps
            self._scores[key] = decision_scores(maps, min_area)
        return self._scores[key]


def predict_test_set(model, record: ModelRecord, data: Path, batch: int = 8) -> Predictions:
    """Run the model over every test image of DATA (all classes it holds)."""
    import torch

    from edgeas.postprocess import record_setting
    from edgeas.train.data import index_dataset
    from edgeas.train.datasets import TestImages
    from edgeas.train.inference import aggregate_maps, predict_maps

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
        levels, grids = predict_maps(
            model, dataset, batch, torch.device("cpu"), lambda n: bar.advance(task, n)
        )
    size = tuple(recipe.input_size)
    mode, smoothing, use = record_setting(record)
    maps = aggregate_maps(levels, size, "reference", smoothing, use)
    station = None if mode == "reference" else aggregate_maps(levels, size, mode, smoothing, use)
    masks = np.stack([dataset[i][1].numpy() for i in range(len(dataset))]).astype(np.uint8)
    head = record.model.head
    if (head is None) != (grids is None):  # the record would describe another model
        raise ModelOutputError(
            f"the checkpoint's record and weights disagree on a decision head "
            f"(record: {'yes' if head else 'none'}, weights: {'none' if head else 'yes'})",
            hint="evaluate a checkpoint as training wrote it")
    from edgeas.decision_head import head_maps

    return Predictions(
        maps, masks, [s.cls for s in index.test], [str(s.path) for s in index.test],
        station, mode, levels,
        None if head is None else head_maps(grids, size, head.sigma), head,
    )


def compute_metrics(pred: Predictions, threshold: float | None,
                    min_area: int = 0) -> dict[str, dict[str, float]]:
    """Metrics of `evaluate()` plus the decision metrics of `edgeas.decisions` (the
    station's rule: `threshold`, `min_area`, the decision maps at model size); deployable
    DSC on the maps the threshold was fitted on.

    With a decision head, the pixel metrics stay the UniAS map's (reference mode) while
    the image-level ones (image AUROC / AP / F1-max, mAD's image parts, the decision
    metrics) are the head's, and `map_` + each of HEAD_FIGURES holds the UniAS map's
    own value (its decision figures on the station's aggregation) for comparison."""
    result = _segmentation_metrics(pred, threshold)
    decisions = decision_metrics_of(pred, threshold, min_area)[0]
    for cls, metrics in result.items():
        metrics.update(decisions[cls])
    if pred.head_maps is not None:
        _head_figures(pred, result, min_area)
    return result


def _head_figures(pred: Predictions, result: dict[str, dict[str, float]],
                  min_area: int) -> None:
    """Swap the image-level figures of `result` for the decision head's, keeping the UniAS
    map's as `map_...` (see `compute_metrics`)."""
    from edgeas.decisions import decision_report
    from edgeas.metrics import MAD_PARTS, _image_metrics, _nanmean

    maps = pred.aggregated_maps
    alone = decision_report(maps, pred.masks, pred.classes, None, min_area,
                            scores=pred.decision_scores(min_area, aggregated=True))[0]
    labels = np.asarray(pred.classes)
    classes = [c for c in result if c != "mean"]
    for cls in classes:
        metrics = result[cls]
        keep = labels == cls
        metrics.update({MAP_PREFIX + k: metrics[k] for k in MAP_IMAGE_FIGURES})
        metrics.update({MAP_PREFIX + k: alone[cls][k] for k in MAP_DECISION_FIGURES})
        # the same image metrics as edgeas.metrics.evaluate, on the head's maps
        metrics.update(_image_metrics(pred.head_maps[keep], pred.masks[keep] > 0))
        parts = [metrics[k] for k in MAD_PARTS]
        metrics["mad"] = float("nan") if any(np.isnan(parts)) else float(np.mean(parts))
    keys = [*MAP_IMAGE_FIGURES, *(MAP_PREFIX + k for k in HEAD_FIGURES)]
    result["mean"].update({k: _nanmean([result[c][k] for c in classes]) for k in keys})


def decision_metrics_of(pred: Predictions, threshold: float | None, min_area: int):
    """(metrics, curves) of `edgeas.decisions.decision_report` for these predictions."""
    from edgeas.decisions import decision_report

    return decision_report(pred.decision_maps, pred.masks, pred.classes, threshold, min_area,
                           scores=pred.decision_scores(min_area))


def _segmentation_metrics(pred: Predictions,
                          threshold: float | None) -> dict[str, dict[str, float]]:
    from edgeas.metrics import dice_per_image, evaluate

    deploy = pred.decision_maps  # the maps the threshold applies to
    if deploy is pred.maps or threshold is None:
        return evaluate(pred.maps, pred.masks, pred.classes, threshold)
    result = evaluate(pred.maps, pred.masks, pred.classes, None)
    labels = np.asarray(pred.classes)
    values = []
    for cls, metrics in result.items():
        if cls != "mean":
            keep = labels == cls
            metrics["dsc_deploy"] = dice_per_image(deploy[keep], pred.masks[keep], threshold)
            values.append(metrics["dsc_deploy"])
    result["mean"]["dsc_deploy"] = float(np.nanmean(values)) if values else float("nan")
    return result


def print_table(result: dict[str, dict[str, float]], title: str,
                columns: tuple[str, ...] | dict[str, str] = TABLE_METRICS,
                caption: str | None = None) -> None:
    table = Table(title=title, caption=caption)
    table.add_column("class")
    shown = [m for m in columns if m in result["mean"]]
    heads = columns if isinstance(columns, dict) else {}
    for name in shown:
        table.add_column(heads.get(name, name), justify="right")
    for cls, metrics in result.items():
        values = [metrics.get(m, math.nan) for m in shown]
        cells = ["-" if math.isnan(v) else f"{100 * v:.2f}" for v in values]
        table.add_row(f"[bold]{cls}[/]" if cls == "mean" else cls, *cells)
    Console().print(table)


def decisions_title(threshold: float | None, min_area: int, pred: Predictions) -> str:
    """What the decision table was measured with: the station's rule at model size."""
    h, w = pred.decision_maps.shape[-2:]
    rule = f"tau {threshold:.5g}" if threshold is not None else "no stored threshold"
    on = pred.decision_mode if pred.head is None else f"{pred.head.kind} decision head"
    return f"decisions: {rule}, min_area {min_area}, {on} {w}x{h} (percent)"


def print_decisions(result: dict[str, dict[str, float]], threshold: float | None,
                    min_area: int, pred: Predictions) -> None:
    """The decision table; with a decision head, also the image AUROC column, a row of
    what the UniAS map alone gives (class means) and a caption saying which map decides."""
    title = decisions_title(threshold, min_area, pred)
    if pred.head is None:
        print_table(result, title, DECISION_TABLE)
        return
    from edgeas.decision_head import describe

    mean = result["mean"]
    rows = {**result, MAP_ROW: {k: mean.get(MAP_PREFIX + k, math.nan)
                                for k in (*DECISION_TABLE, "image_auroc")}}
    caption = (f"OK/NG is decided on {describe(pred.head)}; the UniAS {pred.decision_mode} "
               f"map is the heat map. Row '{MAP_ROW}': what that map alone gives (class "
               "means; no frame figures: the threshold is the head's)")
    print_table(rows, title, {**DECISION_TABLE, "image_auroc": "image AUROC"}, caption)


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
    print_table(result, f"{checkpoint} on {data} (percent)", caption=None if pred.head is None
                else "pixel metrics on the UniAS map; image_auroc, mad's image parts and "
                "dsc_deploy on the decision head's map")
    print_decisions(result, threshold, min_area, pred)
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
