"""The accuracy gate: every INT8 variant against the FP32 model, both run by ONNX Runtime.

On the held-out normal images (never used for calibration) and, with --eval-data, on a
test split: per-image cosine similarity of each per-level map and of the anomaly map
(the record's aggregation, as the station computes it, at model resolution); on the
test split also pAP, DSC and AUROCs via `edgeas.metrics.evaluate`, FP32 vs INT8. With a
test split the gate fails when pAP drops by more than `max_pap_drop` points (what
segmentation is judged on); without one, when the worst anomaly-map cosine is below
`min_cosine`. Every number is reported either way. A variant (or the FP32 model) whose
maps hold NaN or inf on any image fails either way, naming the map and the count: its
cosine is undefined, not 1.

A model with a decision head (edgeas.decision_head): the anomaly map is aggregated from
the level outputs alone, the head's output is compared like any other output, and its
decision map (what the OK/NG threshold applies to, `DECISION`) is compared too; a worst
decision-map cosine below `min_cosine` fails the gate with or without a test split,
because pAP, measured on the anomaly map, says nothing about the head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeas.aggregate import aggregate_batch
from edgeas.decision_head import head_maps
from edgeas.metrics import evaluate
from edgeas.ort import cosine_per_image, run
from edgeas.postprocess import record_setting
from edgeas.record import DecisionHead, ModelRecord

MAP = "anomaly_map"
DECISION = "decision_map"  # the decision head's map, where the model has one
METRICS = ("pixel_ap", "dsc", "pixel_auroc", "image_auroc")
SETS = ("held_out", "eval")


@dataclass
class GateResult:
    report: dict[str, Any]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def compared(record: ModelRecord) -> list[str]:
    """What the gate and the candidate scoring compare with FP32, in table order: every
    graph output (the levels, then the decision head's), MAP, and DECISION with a head."""
    return [*record.model.outputs, MAP, *([DECISION] if record.model.head else [])]


def outputs_with_map(session, images: np.ndarray, levels: Sequence[str],
                     size: tuple[int, ...], setting: tuple,
                     head: DecisionHead | None = None) -> dict[str, np.ndarray]:
    """Every output of `session` on `images` plus MAP, the anomaly map in the record's
    aggregation setting at model resolution, from the `levels` outputs only (a decision
    head's output is not a level), and with `head` DECISION, its decision map at model
    resolution; NaN/inf pass through (the callers count them) without numpy's
    warnings."""
    out = run(session, images)
    maps = [out[name][:, 0] for name in levels]
    with np.errstate(invalid="ignore", over="ignore"):
        out[MAP] = aggregate_batch(maps, size, *setting)
        if head is not None:
            out[DECISION] = head_maps(out[head.output], size, head.sigma)
    return out


class Gate:
    """Accumulates agreement per variant and image set, and maps for the metrics."""

    def __init__(self, record: ModelRecord, fp32, variants: dict[str, Any]) -> None:
        self.outputs = list(record.model.outputs)
        self.levels = list(record.model.level_outputs)
        self.head = record.model.head
        self.keys = compared(record)
        self.size = tuple(record.preprocessing.input_size)
        self.setting = record_setting(record)  # the station's mode, smoothing, levels
        self.fp32, self.variants = fp32, variants
        self.cos: dict[str, dict[str, dict[str, list[np.ndarray]]]] = {
            v: {s: {} for s in SETS} for v in variants}
        self.maps: dict[str, list[np.ndarray]] = {m: [] for m in ["fp32", *variants]}
        # per model ("fp32" and each variant), image set and map: images not all finite
        self.nonfinite: dict[str, dict[str, dict[str, int]]] = {
            m: {s: {} for s in SETS} for m in ["fp32", *variants]}
        self.images = {s: 0 for s in SETS}
        self.masks: list[np.ndarray] = []
        self.classes: list[str] = []

    def _run(self, model: str, session, images: np.ndarray, which: str) -> dict[str, np.ndarray]:
        out = outputs_with_map(session, images, self.levels, self.size, self.setting,
                               self.head)
        counts = self.nonfinite[model][which]
        for key in self.keys:
            bad = int(np.sum(~np.isfinite(out[key].reshape(len(images), -1)).all(axis=1)))
            counts[key] = counts.get(key, 0) + bad
        return out

    def add(self, images: np.ndarray, which: str, masks: np.ndarray | None = None,
            classes: Sequence[str] = ()) -> None:
        ref = self._run("fp32", self.fp32, images, which)
        self.images[which] += len(images)
        if masks is not None:
            self.maps["fp32"].append(ref[MAP])
            self.masks.append(masks)
            self.classes.extend(classes)
        for name, session in self.variants.items():
            got = self._run(name, session, images, which)
            for key in self.keys:
                cos = cosine_per_image(got[key], ref[key])
                self.cos[name][which].setdefault(key, []).append(cos)
            if masks is not None:
                self.maps[name].append(got[MAP])

    def _nonfinite_failure(self, model: str, which: str, images: int) -> str | None:
        """"qdq: the anomaly map is NaN or infinite on 3 of 8 held-out images", or None."""
        counts = self.nonfinite[model][which]
        # the maps first (what a station shows and decides on), then the raw outputs
        key = next((k for k in [MAP, DECISION, *self.outputs] if counts.get(k)), None)
        if key is None:
            return None
        what = {MAP: "the anomaly map", DECISION: "the decision map"}.get(key, f"output {key}")
        label = "the FP32 model" if model == "fp32" else model
        return (f"{label}: {what} is NaN or infinite on {counts[key]} of {images} "
                f"{which.replace('_', '-')} images")

    def _metrics(self, model: str) -> dict[str, float]:
        maps = np.concatenate(self.maps[model])
        result = evaluate(maps, np.concatenate(self.masks), self.classes)
        return {k: float(result["mean"][k]) for k in METRICS}

    def result(self, min_cosine: float, max_pap_drop: float) -> GateResult:
        report: dict[str, Any] = {"criteria": {"min_cosine": min_cosine,
                                               "max_pap_drop_points": max_pap_drop},
                                  "variants": {}}
        failures: list[str] = []
        for which in SETS:  # a broken FP32 model makes every comparison meaningless
            problem = self._nonfinite_failure("fp32", which, self.images[which])
            if problem:
                failures.append(problem)
        eval_ok = {m: not self.nonfinite[m]["eval"].get(MAP) for m in ["fp32", *self.variants]}
        fp32_metrics = self._metrics("fp32") if self.masks and eval_ok["fp32"] else None
        # With labelled data the gate judges what a station loses: pAP. Without, the maps'
        # cosine to FP32 is the only evidence. (Worst-image cosine alone is too strict for
        # weak models: their normal-image maps are low noise whose cosine moves most.)
        report["criteria"]["judged_by"] = "pap_drop" if self.masks else "cosine"
        if fp32_metrics is not None:
            report["fp32_metrics"] = fp32_metrics
        for name in self.variants:
            entry: dict[str, Any] = {}
            for which in SETS:
                per = self.cos[name][which]
                if not per:
                    continue
                cos = {k: np.concatenate(v) for k, v in per.items()}
                # None where any image's map is not finite: no cosine describes it
                entry[which] = {
                    "images": int(len(cos[MAP])),
                    "cosine_min": {k: _finite_or_none(v.min()) for k, v in cos.items()},
                    "cosine_mean": {k: _finite_or_none(v.mean()) for k, v in cos.items()},
                    "nonfinite_images": int(self.nonfinite[name][which].get(MAP, 0)),
                }
                problem = self._nonfinite_failure(name, which, len(cos[MAP]))
                if problem:
                    failures.append(problem)
                    continue
                worst = entry[which]["cosine_min"][MAP]
                if worst is not None and worst < min_cosine and not self.masks:
                    failures.append(f"{name}: worst anomaly-map cosine {worst:.4f} on the "
                                    f"{which.replace('_', '-')} images is below {min_cosine:g}")
                if self.head is not None:
                    entry[which]["nonfinite_decision_images"] = int(
                        self.nonfinite[name][which].get(DECISION, 0))
                    worst = entry[which]["cosine_min"][DECISION]
                    # judged with a test split too: its pAP is the anomaly map's, not the head's
                    if worst is not None and worst < min_cosine:
                        failures.append(f"{name}: worst decision-map cosine {worst:.4f} on the "
                                        f"{which.replace('_', '-')} images is below "
                                        f"{min_cosine:g}")
            if fp32_metrics is not None and eval_ok[name]:
                got = self._metrics(name)
                delta = {k: 100.0 * (got[k] - fp32_metrics[k]) for k in METRICS}
                entry["metrics"] = got
                entry["delta_points"] = delta
                drop = -delta["pixel_ap"]
                if math.isnan(drop):
                    entry["note"] = "pAP undefined (no anomalous pixels in --eval-data)"
                elif drop > max_pap_drop:
                    failures.append(f"{name}: pAP drops {drop:.2f} points "
                                    f"({100 * fp32_metrics['pixel_ap']:.2f} -> "
                                    f"{100 * got['pixel_ap']:.2f}), more than {max_pap_drop:g}")
            report["variants"][name] = entry
        report["passed"] = not failures
        report["failures"] = failures
        return GateResult(report, failures)


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def table_rows(report: dict[str, Any], outputs: Sequence[str]) -> list[list[str]]:
    """Rows of the printed table: variant, images, worst cosine per output (`outputs`: the
    record's graph outputs), of the anomaly map and of the decision map (with a head),
    metric deltas."""
    rows = []
    for name, entry in report["variants"].items():
        for which in SETS:
            if which not in entry:
                continue
            e = entry[which]
            keys = [*outputs, MAP, *([DECISION] if DECISION in e["cosine_min"] else [])]
            cells = ["NaN/inf" if e["cosine_min"][k] is None else f"{e['cosine_min'][k]:.4f}"
                     for k in keys]
            metrics = ["", ""]
            if which == "eval" and "metrics" in entry:
                metrics = [f"{100 * entry['metrics'][k]:.2f} {entry['delta_points'][k]:+.2f}"
                           for k in ("pixel_ap", "dsc")]
            label = "held out" if which == "held_out" else "eval"
            rows.append([name, f"{label} {e['images']}", *cells, *metrics])
    return rows

