"""Ranking curves (ROC, PR, PRO) from one descending sort of the scores.

Everything here works on the cumulative counts at the *distinct* score
values, in descending score order, which is exactly the set of thresholds
scikit-learn's `roc_curve` / `precision_recall_curve` use. Reading the
cumulative sums only at the end of each run of tied scores makes every
result independent of the order of tied elements. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRO_FPR_LIMIT = 0.3


@dataclass(frozen=True)
class Curve:
    """Counts at each distinct threshold, thresholds descending.

    `ends[k]` is the index (in sorted order) of the last element whose score
    equals `thresholds[k]`; predicting `score >= thresholds[k]` selects the
    sorted prefix `[: ends[k] + 1]`, with `tps[k]` true and `fps[k]` false
    positives.
    """

    thresholds: np.ndarray  # float, descending
    ends: np.ndarray  # int64
    tps: np.ndarray  # float64
    fps: np.ndarray  # float64

    @property
    def n_pos(self) -> float:
        return float(self.tps[-1])

    @property
    def n_neg(self) -> float:
        return float(self.fps[-1])


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices that sort `scores` descending (stable, so the result is reproducible)."""
    # Negating keeps ties in index order; -x is exact for floats.
    return np.argsort(-scores, kind="stable")


def curve_from_sorted(sorted_scores: np.ndarray, sorted_labels: np.ndarray) -> Curve:
    """Build a Curve from scores already sorted descending and their boolean labels."""
    n = sorted_scores.shape[0]
    if n == 0:
        raise ValueError("no scores")
    ends = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
    ends = np.append(ends, n - 1).astype(np.int64, copy=False)
    # int64 cumulative counts are exact; converted to float64 only at the ends.
    cum_pos = np.cumsum(sorted_labels, dtype=np.int64)
    tps = cum_pos[ends].astype(np.float64)
    del cum_pos
    fps = (ends + 1).astype(np.float64) - tps
    return Curve(thresholds=sorted_scores[ends], ends=ends, tps=tps, fps=fps)


def curve_from_scores(scores: np.ndarray, labels: np.ndarray) -> Curve:
    """Convenience for small inputs (image scores): sort and build the curve."""
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel() > 0
    order = descending_order(scores)
    return curve_from_sorted(scores[order], labels[order])


def _precision_recall(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    # Same arithmetic as scikit-learn (tps / (tps + fps), tps / tps[-1]) so
    # that ties in precision + recall break identically.
    ps = curve.tps + curve.fps
    precision = np.divide(curve.tps, ps, out=np.zeros_like(curve.tps), where=ps != 0)
    recall = curve.tps / curve.tps[-1]
    return precision, recall


def roc_auc(curve: Curve) -> float:
    """Trapezoidal ROC AUC starting at (0, 0), as scikit-learn's roc_auc_score."""
    if curve.n_pos == 0 or curve.n_neg == 0:
        return float("nan")
    fpr = np.concatenate(([0.0], curve.fps / curve.n_neg))
    tpr = np.concatenate(([0.0], curve.tps / curve.n_pos))
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) * 0.5)


def average_precision(curve: Curve) -> float:
    """sum_n (R_n - R_{n-1}) P_n over descending thresholds, R_0 = 0 (scikit-learn's AP)."""
    if curve.n_pos == 0:
        return float("nan")
    precision, recall = _precision_recall(curve)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def f1_max(curve: Curve) -> float:
    """Maximum F1 over the PR-curve thresholds."""
    if curve.n_pos == 0:
        return float("nan")
    precision, recall = _precision_recall(curve)
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def best_pr_threshold(curve: Curve) -> float:
    """Threshold maximising precision + recall; ties go to the first maximum in
    ascending-threshold order (scikit-learn's `precision_recall_curve` order)."""
    if curve.n_pos == 0:
        return float("nan")
    precision, recall = _precision_recall(curve)
    total = precision + recall
    # Our arrays are descending: the first maximum ascending is the last one here.
    k = total.size - 1 - int(np.argmax(total[::-1]))
    return float(curve.thresholds[k])


def integrate_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [x[0], x_max]; x non-decreasing.

    When x_max falls between two points, y is linearly interpolated there;
    vertical steps (repeated x) contribute nothing, as they should.
    """
    cut = int(np.searchsorted(x, x_max, side="right"))  # first index with x > x_max
    xs, ys = x[:cut], y[:cut]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) * 0.5)
    if cut < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = xs[-1], x[cut], ys[-1], y[cut]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return area


def pro_auc(
    curve: Curve,
    sorted_region_ids: np.ndarray,
    region_sizes: np.ndarray,
    fpr_limit: float = PRO_FPR_LIMIT,
) -> float:
    """Normalised area under PRO(FPR) for FPR in [0, fpr_limit].

    `sorted_region_ids` gives, in the same sorted order as `curve`, the
    1-based id of the ground-truth region holding each pixel (0 = normal);
    `region_sizes[r]` is the pixel count of region r (index 0 unused). At a
    threshold, PRO = mean over regions of the fraction of the region at or
    above it; every anomalous pixel of region r therefore adds
    1 / (size_r * n_regions) to PRO once the threshold passes its score, so
    one cumulative sum in sorted order gives PRO at every threshold, exactly.
    Only the prefix up to the first threshold past the FPR limit is needed.
    """
    n_regions = region_sizes.size - 1
    if curve.n_pos == 0 or curve.n_neg == 0 or n_regions == 0:
        return float("nan")
    fpr = curve.fps / curve.n_neg
    # Keep thresholds up to and including the first one with FPR > limit (for interpolation).
    k_stop = min(int(np.searchsorted(fpr, fpr_limit, side="right")), fpr.size - 1)
    ends = curve.ends[: k_stop + 1]
    weights = np.zeros(region_sizes.size, dtype=np.float64)
    weights[1:] = 1.0 / (region_sizes[1:].astype(np.float64) * n_regions)
    prefix = sorted_region_ids[: int(ends[-1]) + 1]
    cum = np.cumsum(weights[prefix])
    pro = np.minimum(cum[ends], 1.0)  # clip float round-off only
    del cum
    x = np.concatenate(([0.0], fpr[: k_stop + 1]))
    y = np.concatenate(([0.0], pro))
    return integrate_to(x, y, fpr_limit) / fpr_limit
