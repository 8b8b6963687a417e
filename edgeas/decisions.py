"""Decision quality: what a station's OK/NG calls are worth (protocol.md section 4).

The deployed rule (`edgeas.aggregate`): mask = map >= t (float32 comparison, see
`threshold_mask`), then the frame is NG when an 8-connected region of at least
max(min_area, 1) pixels remains (`clean_and_decide`). Its image score:

    decision_score(A, m) = the largest t at which the rule calls A NG
                         = max over 8-connected components C of {A >= v} with |C| >= m
                           of v, over the map's values v (for m <= 1: max(A)),

so that `decision_score(A, m) >= t` exactly when A is NG at threshold t, for every
finite t. It is always one of the map's values; a map that is never NG (fewer pixels
than m) scores -inf.

Metrics per class (`decision_metrics`), and their macro mean over classes ("mean",
NaN left out as in `edgeas.metrics`); an image is defective when mask.any():
- `frame_recall`: fraction of defective images NG at the deployed threshold (NaN
  without a threshold or without defective images);
- `frame_false_ng`: fraction of normal images NG at it (NaN without a threshold or
  without normal images);
- `recall_at_fng_1`, `recall_at_fng_5`: oracle-free curve numbers. With n normal
  images of the class and k the largest integer with k / n <= target (1% or 5%),
  the threshold is the smallest t at which at most k normal images are NG: just
  above the (k+1)-th largest normal score (ties included, so fewer than k may be NG).
  The value is the recall there, i.e. the fraction of defective images that score
  strictly above that normal score: the best recall any threshold reaches without
  exceeding the false-NG target, chosen without looking at the defective images'
  labels beyond counting. NaN without normal or without defective images.

numpy and OpenCV only (this module is on the runtime's import path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

MEAN_KEY = "mean"
# target false-NG rate of each curve number
FNG_TARGETS = {"recall_at_fng_1": 0.01, "recall_at_fng_5": 0.05}
DECISION_METRICS = ("frame_recall", "frame_false_ng", *FNG_TARGETS)
NEVER_NG = -math.inf  # the score of a map that no threshold makes NG


# --------------------------------------------------------------------------- image scores


def _has_region(a: np.ndarray, value: np.float32, min_area: int) -> bool:
    mask = np.empty(a.shape, np.uint8)
    np.greater_equal(a, value, out=mask.view(np.bool_))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    return n > 1 and int(stats[1:, cv2.CC_STAT_AREA].max()) >= min_area


def decision_score(anomaly_map: np.ndarray, min_area: int) -> float:
    """The largest threshold at which the deployed rule calls this map NG (see the module
    docstring): `decision_score(A, m) >= t` iff NG at t; -inf when never NG."""
    a = np.ascontiguousarray(anomaly_map, dtype=np.float32)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"anomaly map must be a non-empty 2-D array, got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError("anomaly map contains NaN")
    need = max(int(min_area), 1)
    if need == 1:
        return float(a.max())
    if a.size < need:
        return NEVER_NG
    values = np.unique(a)  # ascending, distinct
    # At most the need-th largest pixel: above it fewer than `need` pixels are set.
    flat = a.reshape(-1)
    top = np.partition(flat, flat.size - need)[flat.size - need]
    hi = int(np.searchsorted(values, top))
    # NG is monotone in t (a larger t only shrinks the mask), and at the smallest value the
    # whole map is one region of >= need pixels: bisect for the last NG value.
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _has_region(a, values[mid], need):
            lo = mid
        else:
            hi = mid - 1
    return float(values[lo])


def decision_scores(maps: np.ndarray | Sequence[np.ndarray], min_area: int) -> np.ndarray:
    """`decision_score` of each map: (N,) float64."""
    return np.array([decision_score(m, min_area) for m in maps], dtype=np.float64)


def is_ng(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The rule's calls at `threshold` from decision scores. Exact without rounding the
    threshold to float32 as the mask does: a score is a float32 value s, and the smallest
    float32 >= t is <= s exactly when t <= s."""
    return np.asarray(scores, dtype=np.float64) >= float(threshold)


# --------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class DecisionCurve:
    """Operating points of one class: calling NG every image with score >= thresholds[k]
    (descending: the distinct scores) gives false_ng[k] and recall[k]; point 0 is
    "nothing NG" (threshold +inf). n_false_ng / n_caught are the counts behind them."""

    thresholds: np.ndarray
    n_false_ng: np.ndarray  # int64, normal images NG
    n_caught: np.ndarray  # int64, defective images NG
    n_normal: int
    n_defective: int

    @property
    def false_ng(self) -> np.ndarray:
        return self.n_false_ng / self.n_normal if self.n_normal else np.zeros(self.n_caught.size)

    @property
    def recall(self) -> np.ndarray:
        return self.n_caught / self.n_defective if self.n_defective else np.zeros(
            self.n_caught.size)

    def recall_at(self, target: float) -> float:
        """Recall at the smallest threshold with false-NG <= target (NaN if undefined):
        the best recall of the points with at most k normal images NG."""
        if self.n_normal == 0 or self.n_defective == 0:
            return math.nan
        ok = self.n_false_ng <= allowed_ng(self.n_normal, target)
        return float(self.n_caught[ok].max()) / self.n_defective


def allowed_ng(n: int, target: float) -> int:
    """The largest k with k / n <= target (exact whatever the rounding of target * n): how
    many of n normal images may be NG at a false-NG target (eval and `frame_fpr` agree)."""
    k = int(math.floor(target * n))
    while (k + 1) / n <= target:
        k += 1
    while k > 0 and k / n > target:
        k -= 1
    return k


def decision_curve(scores: np.ndarray, defective: np.ndarray) -> DecisionCurve:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(defective, dtype=bool).reshape(-1)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if scores.size == 0:
        raise ValueError("no scores")
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], labels[order]
    # read the cumulative counts at the end of each run of tied scores: ties never split
    ends = np.append(np.flatnonzero(s[1:] != s[:-1]), s.size - 1)
    tps = np.cumsum(lab, dtype=np.int64)[ends]
    fps = ends + 1 - tps
    # a score of -inf (never NG) is no operating point: no finite threshold reaches it
    real = s[ends] > NEVER_NG
    ends, tps, fps = ends[real], tps[real], fps[real]
    zero = np.zeros(1, np.int64)
    return DecisionCurve(np.concatenate([[math.inf], s[ends]]), np.concatenate([zero, fps]),
                         np.concatenate([zero, tps]), n_neg, n_pos)


# --------------------------------------------------------------------------- metrics


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _class_metrics(scores: np.ndarray, defective: np.ndarray, threshold: float | None,
                   curve: DecisionCurve) -> dict[str, float]:
    nan = math.nan
    out = {"frame_recall": nan, "frame_false_ng": nan}
    if threshold is not None:
        ng = is_ng(scores, threshold)
        if defective.any():
            out["frame_recall"] = float(ng[defective].mean())
        if not defective.all():
            out["frame_false_ng"] = float(ng[~defective].mean())
    out.update({k: curve.recall_at(t) for k, t in FNG_TARGETS.items()})
    return out


def _check(maps, masks, classes) -> tuple[np.ndarray, np.ndarray]:
    n = len(maps)
    if len(masks) != n:
        raise ValueError(f"{len(masks)} masks for {n} maps")
    names = np.asarray([str(c) for c in classes], dtype=object)
    if names.shape != (n,):
        raise ValueError(f"{names.size} class names for {n} maps")
    if n == 0:
        raise ValueError("no maps to evaluate")
    if MEAN_KEY in set(names.tolist()):
        raise ValueError(f"a class may not be named {MEAN_KEY!r}")
    defective = np.array([bool(np.any(np.asarray(m) > 0)) for m in masks])
    return names, defective


def decision_report(
    maps: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    classes: Sequence[str],
    threshold: float | None,
    min_area: int,
    scores: np.ndarray | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, DecisionCurve]]:
    """(`decision_metrics`' result, the curve of each class). `scores`: decision scores
    already computed for these maps and min_area (they are then not recomputed)."""
    names, defective = _check(maps, masks, classes)
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if scores is None:
        scores = decision_scores(maps, min_area)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(names),):
        raise ValueError(f"{scores.size} scores for {len(names)} maps")
    result: dict[str, dict[str, float]] = {}
    curves: dict[str, DecisionCurve] = {}
    for name in dict.fromkeys(names.tolist()):
        keep = names == name
        curves[name] = decision_curve(scores[keep], defective[keep])
        result[name] = _class_metrics(scores[keep], defective[keep], threshold, curves[name])
    per_class = list(result)
    result[MEAN_KEY] = {k: _nanmean([result[c][k] for c in per_class]) for k in DECISION_METRICS}
    return result, curves


def decision_metrics(
    maps: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    classes: Sequence[str],
    threshold: float | None,
    min_area: int,
) -> dict[str, dict[str, float]]:
    """{class: {frame_recall, frame_false_ng, recall_at_fng_1, recall_at_fng_5}, ...,
    "mean": {...}}, classes in order of first appearance (see the module docstring)."""
    return decision_report(maps, masks, classes, threshold, min_area)[0]


def mean_curve(curves: dict[str, DecisionCurve],
               grid: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """(false_ng, recall) of the macro mean, a step function: at each false-NG rate x (a
    grid on [0, 1] and every class's own points), the mean over classes (with both kinds
    of image) of the best recall with false-NG <= x."""
    usable = [c for c in curves.values() if c.n_normal and c.n_defective]
    xs = np.union1d(np.linspace(0.0, 1.0, grid), np.concatenate(
        [c.false_ng for c in usable] or [np.zeros(0)]))
    if not usable:
        return xs, np.full(xs.size, math.nan)
    rows = []
    for c in usable:
        best = np.maximum.accumulate(c.recall)  # false_ng is non-decreasing along the curve
        rows.append(best[np.searchsorted(c.false_ng, xs, side="right") - 1])
    return xs, np.mean(rows, axis=0)


__all__ = [
    "DECISION_METRICS", "FNG_TARGETS", "NEVER_NG", "DecisionCurve", "decision_curve",
    "decision_metrics", "decision_report", "decision_score", "decision_scores", "is_ng",
    "mean_curve",
]
