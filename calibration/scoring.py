"""One INT8 candidate against FP32, fast enough to score dozens of candidates: the FP32
outputs of the held-out normal images and, with --eval-data, the FP32 anomaly maps of the
test split are computed once; a candidate session is then run over the same images and
scored as the gate scores it (per-image cosine of each per-level map and of the anomaly
map in the record's aggregation setting; with a decision head, of its output and its
decision map too; pAP, DSC and AUROCs via `edgeas.metrics.evaluate`).

What the mixed-precision search (`sensitivity`) ranks and accepts candidates by; the
written models still go through `gate.Gate`, the one verdict `edgeas calibrate` gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeas.calibration.gate import DECISION, MAP, compared, outputs_with_map
from edgeas.metrics import evaluate
from edgeas.ort import cosine_per_image
from edgeas.postprocess import record_setting
from edgeas.record import ModelRecord

METRICS = ("pixel_ap", "dsc", "pixel_auroc", "image_auroc")
CHUNK = 8


@dataclass(frozen=True)
class Targets:
    """What a candidate must reach: worst held-out anomaly-map cosine >= min_cosine (always
    when `cosine_always`, else only without labelled data), with a decision head worst
    held-out decision-map cosine >= min_cosine (always: pAP does not measure the head)
    and, with labelled data, a pAP drop of at most max_pap_drop points."""

    min_cosine: float
    max_pap_drop: float
    cosine_always: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"min_cosine": self.min_cosine, "max_pap_drop_points": self.max_pap_drop,
                "cosine_always": self.cosine_always}


@dataclass
class Score:
    images: int  # held-out images
    cosine_min: dict[str, float | None]  # per output and MAP, held-out; None: non-finite
    cosine_mean: dict[str, float | None]
    nonfinite_images: int  # held-out and eval images whose anomaly/decision map is not finite
    metrics: dict[str, float] | None = None  # on the eval images
    delta_points: dict[str, float] | None = None  # metrics - FP32's, in points
    problems: list[str] = field(default_factory=list)  # why it misses its targets
    eval_maps: np.ndarray | None = None  # kept when asked (score(keep_maps=True))

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def pap_drop(self) -> float | None:
        if self.delta_points is None or math.isnan(self.delta_points["pixel_ap"]):
            return None
        return -self.delta_points["pixel_ap"]

    def damage(self, targets: Targets) -> float:
        """How far past its targets (1.0 = exactly at one): the largest of the cosine
        shortfalls (anomaly map, and decision map with a head) over (1 - min_cosine) and
        the pAP drop over max_pap_drop; inf when a map is not finite. What the
        sensitivity ranking sorts by."""
        worst = [self.cosine_min[k] for k in (MAP, DECISION) if k in self.cosine_min]
        if self.nonfinite_images or None in worst:
            return math.inf
        terms = [(1.0 - w) / max(1.0 - targets.min_cosine, 1e-9) for w in worst]
        if self.pap_drop is not None:
            terms.append(self.pap_drop / max(targets.max_pap_drop, 1e-9))
        return max(terms)

    def to_json(self) -> dict[str, Any]:
        return {"held_out_images": self.images, "cosine_min": self.cosine_min,
                "cosine_mean": self.cosine_mean, "nonfinite_images": self.nonfinite_images,
                "metrics": self.metrics, "delta_points": self.delta_points,
                "passed": self.passed, "problems": self.problems}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


class Reference:
    """FP32's outputs on the held-out images and its maps on the eval images, once."""

    def __init__(self, record: ModelRecord, fp32, held: np.ndarray,
                 eval_images: np.ndarray | None = None, eval_masks: np.ndarray | None = None,
                 eval_classes: Sequence[str] = (),
                 advance: Callable[[int], None] | None = None) -> None:
        self.record = record
        self.outputs = list(record.model.outputs)
        self.levels = list(record.model.level_outputs)
        self.head = record.model.head
        self.keys = compared(record)  # outputs, MAP and (with a head) DECISION
        self.size = tuple(record.preprocessing.input_size)
        self.setting = record_setting(record)  # the station's mode, smoothing, levels
        self.held = held
        self.eval_images, self.eval_masks = eval_images, eval_masks
        self.eval_classes = list(eval_classes)
        self.advance = advance
        self.ref_held = self._outputs(fp32, held)
        self.ref_eval = (self._outputs(fp32, eval_images)[MAP]
                         if eval_images is not None else None)
        self.fp32_metrics = self._metrics(self.ref_eval) if self.ref_eval is not None else None

    @property
    def total(self) -> int:
        """Images one score runs."""
        return len(self.held) + (0 if self.eval_images is None else len(self.eval_images))

    def subset(self, held: int, eval_images: int) -> Reference:
        """A Reference on at most `held` held-out and `eval_images` eval images, spread
        over each list (which is sorted by class): cheaper, for ranking only."""
        out = object.__new__(Reference)
        out.__dict__.update(self.__dict__)
        h = _spread(len(self.held), held)
        out.held = self.held[h]
        out.ref_held = {k: v[h] for k, v in self.ref_held.items()}
        if self.eval_images is not None:
            e = _spread(len(self.eval_images), eval_images)
            out.eval_images, out.eval_masks = self.eval_images[e], self.eval_masks[e]
            out.eval_classes = [self.eval_classes[i] for i in e]
            out.ref_eval = self.ref_eval[e]
            out.fp32_metrics = out._metrics(out.ref_eval)
        return out

    def _outputs(self, session, images: np.ndarray) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for s in range(0, len(images), CHUNK):
            out = outputs_with_map(session, images[s : s + CHUNK], self.levels, self.size,
                                   self.setting, self.head)
            for key in self.keys:
                parts.setdefault(key, []).append(out[key])
            if self.advance is not None:
                self.advance(len(images[s : s + CHUNK]))
        return {k: np.concatenate(v) for k, v in parts.items()}

    def _metrics(self, maps: np.ndarray) -> dict[str, float]:
        result = evaluate(maps, self.eval_masks, self.eval_classes)
        return {k: float(result["mean"][k]) for k in METRICS}

    def score(self, session, targets: Targets, keep_maps: bool = False) -> Score:
        got = self._outputs(session, self.held)
        cos = {k: cosine_per_image(got[k], self.ref_held[k]) for k in self.keys}
        bad = int(np.sum(~_finite_images(got, [k for k in (MAP, DECISION) if k in got])))
        score = Score(len(self.held), {k: _finite(v.min()) for k, v in cos.items()},
                      {k: _finite(v.mean()) for k, v in cos.items()}, bad)
        if self.ref_eval is not None:
            maps = self._outputs(session, self.eval_images)[MAP]
            bad_eval = int(np.sum(~np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)))
            score.nonfinite_images += bad_eval
            if keep_maps:
                score.eval_maps = maps
            if not bad_eval:
                score.metrics = self._metrics(maps)
                score.delta_points = {k: 100.0 * (score.metrics[k] - self.fp32_metrics[k])
                                      for k in METRICS}
        score.problems = _problems(score, targets, self.ref_eval is not None)
        return score


def _finite_images(out: dict[str, np.ndarray], keys: Sequence[str]) -> np.ndarray:
    """Per image: whether every one of the `keys` maps is finite."""
    ok = [np.isfinite(out[k].reshape(len(out[k]), -1)).all(axis=1) for k in keys]
    return np.logical_and.reduce(ok)


def _problems(score: Score, targets: Targets, labelled: bool) -> list[str]:
    if score.nonfinite_images:
        which = "anomaly or decision map" if DECISION in score.cosine_min else "anomaly map"
        return [f"the {which} is NaN or infinite on {score.nonfinite_images} images"]
    out = []
    worst = score.cosine_min[MAP]
    if (targets.cosine_always or not labelled) and (worst is None or worst < targets.min_cosine):
        shown = "NaN" if worst is None else f"{worst:.4f}"
        out.append(f"worst held-out anomaly-map cosine {shown} < {targets.min_cosine:g}")
    if DECISION in score.cosine_min:  # the head's map: no pAP stands for it
        worst = score.cosine_min[DECISION]
        if worst is None or worst < targets.min_cosine:
            shown = "NaN" if worst is None else f"{worst:.4f}"
            out.append(f"worst held-out decision-map cosine {shown} < {targets.min_cosine:g}")
    drop = score.pap_drop
    if labelled and drop is not None and drop > targets.max_pap_drop:
        out.append(f"pAP drops {drop:.2f} points > {targets.max_pap_drop:g}")
    return out


def _spread(count: int, wanted: int) -> np.ndarray:
    if wanted >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, wanted).round().astype(int))
