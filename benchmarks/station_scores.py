"""Image scores under the station's decision rule, thresholds fitted on normal images,
and the decision figures (recall, false-NG rate, curve) that benchmarks/station.py reports.

The station calls a frame NG when an 8-connected region of {map >= tau} has at least
max(min_area, 1) pixels (edgeas.aggregate.clean_and_decide). The image score that makes
"score >= tau" the same statement is the largest t at which such a region exists: the
map's maximum for min_area <= 1; in general found by bisection over the map's sorted
values, since a region of {map >= t} only shrinks as t grows. numpy + OpenCV only.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

FALSE_NG_POINTS = (0.0, 0.01, 0.02, 0.05, 0.10)


def _largest_region(amap: np.ndarray, t: np.float32) -> int:
    mask = (amap >= t).view(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0


def region_score(amap: np.ndarray, min_area: int) -> float:
    """Largest t such that {amap >= t} has an 8-connected region of >= min_area pixels."""
    a = np.ascontiguousarray(amap, dtype=np.float32)
    if min_area <= 1:
        return float(a.max())
    if min_area > a.size:
        return float("-inf")  # no threshold makes a region that large: never NG
    values = np.unique(a)[::-1]  # descending candidates; the score is one of them
    # A region of m pixels needs m pixels >= t: no candidate above the m-th largest value.
    lo = int(np.searchsorted(-values, -np.partition(a.ravel(), a.size - min_area)[
        a.size - min_area], side="left"))
    hi = len(values) - 1  # the smallest value: the whole map is one region
    while lo < hi:  # first index (largest t) whose superlevel set has a big enough region
        mid = (lo + hi) // 2
        if _largest_region(a, values[mid]) >= min_area:
            hi = mid
        else:
            lo = mid + 1
    return float(values[lo])


def scores(maps: Sequence[np.ndarray], min_area: int) -> np.ndarray:
    return np.array([region_score(m, min_area) for m in maps], dtype=np.float64)


def fit_threshold(normal_scores: np.ndarray, target: float, margin: float = 1.0) -> float:
    """Smallest float32 tau at which at most floor(target * n) of the normal images are NG
    (score >= tau), times `margin` (>= 1 moves it away from the fitted images)."""
    s = np.sort(np.asarray(normal_scores, dtype=np.float32))[::-1]
    if s.size == 0:
        raise ValueError("no held-out normal scores to fit a threshold on")
    allowed = int(np.floor(target * s.size + 1e-9))
    if allowed >= s.size:
        return float(s[-1])
    tau = np.nextafter(s[allowed], np.float32(np.inf))  # just above the (allowed+1)-th score
    return float(np.float32(tau * margin))


def rates(scores_: np.ndarray, defect: np.ndarray, tau: float) -> dict[str, float]:
    ng = np.asarray(scores_, dtype=np.float32) >= np.float32(tau)
    return decision_rates(ng, np.asarray(defect, bool))


def decision_rates(ng: np.ndarray, defect: np.ndarray) -> dict[str, float]:
    ng, defect = np.asarray(ng, bool), np.asarray(defect, bool)
    return {
        "defective": int(defect.sum()), "clean": int((~defect).sum()),
        "tp": int((ng & defect).sum()), "fp": int((ng & ~defect).sum()),
        "recall": float((ng & defect).sum() / max(defect.sum(), 1)),
        "false_ng": float((ng & ~defect).sum() / max((~defect).sum(), 1)),
    }


def auroc(scores_: np.ndarray, defect: np.ndarray) -> float:
    """Probability that a defective image outscores a clean one (ties count half)."""
    s, d = np.asarray(scores_, np.float64), np.asarray(defect, bool)
    pos, neg = s[d], s[~d]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def recall_at(scores_: np.ndarray, defect: np.ndarray,
              points: Sequence[float] = FALSE_NG_POINTS) -> dict[str, float]:
    """Oracle curve: recall at the lowest tau whose false-NG rate on these images <= p."""
    s, d = np.asarray(scores_, np.float32), np.asarray(defect, bool)
    out = {}
    for p in points:
        tau = fit_threshold(s[~d], p)
        out[f"{p:g}"] = rates(s, d, tau)["recall"]
    return out
