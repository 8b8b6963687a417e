"""Decision quality metrics (edgeas.decisions) against brute force over the deployed rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeas.aggregate import clean_and_decide, threshold_mask
from edgeas.decisions import (
    DECISION_METRICS,
    NEVER_NG,
    decision_curve,
    decision_metrics,
    decision_report,
    decision_score,
    decision_scores,
    mean_curve,
)


def rule_ng(amap: np.ndarray, t: float, min_area: int) -> bool:
    """The station's own decision: edgeas.aggregate's mask and clean_and_decide."""
    return clean_and_decide(threshold_mask(amap, t), min_area)[1]


def brute_score(amap: np.ndarray, min_area: int) -> float:
    ng = [float(v) for v in np.unique(amap.astype(np.float32)) if rule_ng(amap, v, min_area)]
    return max(ng) if ng else NEVER_NG


def random_map(rng: np.random.Generator, kind: str) -> np.ndarray:
    h, w = (int(v) for v in rng.integers(1, 9, 2))
    if kind == "ties":
        return rng.integers(0, 4, (h, w)).astype(np.float32)
    if kind == "constant":
        return np.full((h, w), rng.normal(), np.float32)
    return rng.normal(size=(h, w)).astype(np.float32)


@pytest.mark.parametrize("min_area", [0, 1, 3, 10])
@pytest.mark.parametrize("kind", ["float", "ties", "constant"])
def test_decision_score_is_the_largest_ng_threshold(min_area, kind):
    rng = np.random.default_rng([min_area, len(kind)])
    for _ in range(60):
        amap = random_map(rng, kind)
        score = decision_score(amap, min_area)
        assert score == brute_score(amap, min_area)
        if min_area <= 1:
            assert score == float(amap.max())
        # score >= t iff NG at t, for map values and for float64 thresholds around them
        for v in np.unique(amap)[:6]:
            for t in (float(v), np.nextafter(float(v), math.inf),
                      np.nextafter(float(v), -math.inf), float(v) + 0.5):
                assert (score >= t) == rule_ng(amap, t, min_area), (t, score)


def test_decision_score_of_a_map_never_ng_and_of_plateaus():
    amap = np.ones((3, 3), np.float32)
    assert decision_score(amap, 9) == 1.0
    assert decision_score(amap, 10) == NEVER_NG  # more pixels than the map has
    assert decision_score(np.zeros((2, 2), np.float32), 100) == -math.inf
    # a 3-pixel plateau at 0.8 and a single peak at 0.9: min_area 3 scores the plateau
    amap = np.zeros((5, 5), np.float32)
    amap[0, 0] = 0.9
    amap[4, 2:5] = 0.8
    assert decision_score(amap, 3) == pytest.approx(0.8)
    assert decision_score(amap, 4) == 0.0  # only the whole map has 4 pixels
    # diagonal neighbours are connected (8-connectivity)
    diag = np.zeros((4, 4), np.float32)
    diag[[0, 1, 2], [0, 1, 2]] = 0.5
    assert decision_score(diag, 3) == 0.5


def test_decision_score_rejects_nan_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        decision_score(np.full((2, 2), np.nan, np.float32), 2)
    with pytest.raises(ValueError, match="2-D"):
        decision_score(np.zeros(4, np.float32), 2)


# --------------------------------------------------------------------------- metrics


def brute_metrics(maps, masks, classes, threshold, min_area) -> dict[str, dict[str, float]]:
    out = {}
    names = np.asarray(classes)
    for cls in dict.fromkeys(classes):
        idx = np.flatnonzero(names == cls)
        bad = np.array([masks[i].any() for i in idx])
        values = np.unique(np.concatenate([maps[i].ravel() for i in idx]))
        # every threshold that changes some image's call, and one above them all
        candidates = [*values.tolist(), float(values.max()) + 1.0]
        ng = np.array([[rule_ng(maps[i], t, min_area) for i in idx] for t in candidates])
        fng = ng[:, ~bad].mean(axis=1) if (~bad).any() else None
        rec = ng[:, bad].mean(axis=1) if bad.any() else None
        res = {}
        at = np.array([rule_ng(maps[i], threshold, min_area) for i in idx])
        res["frame_recall"] = float(at[bad].mean()) if bad.any() else math.nan
        res["frame_false_ng"] = float(at[~bad].mean()) if (~bad).any() else math.nan
        for key, target in (("recall_at_fng_1", 0.01), ("recall_at_fng_5", 0.05)):
            if fng is None or rec is None:
                res[key] = math.nan
            else:
                res[key] = float(rec[fng <= target + 1e-12].max())
        out[cls] = res
    out["mean"] = {k: float(np.nanmean([out[c][k] for c in out])) if any(
        not math.isnan(out[c][k]) for c in out) else math.nan for k in DECISION_METRICS}
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for cls in a:
        assert a[cls].keys() == set(DECISION_METRICS)
        for k in DECISION_METRICS:
            x, y = a[cls][k], b[cls][k]
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y), (cls, k, x, y)


def _data(rng, counts: dict[str, tuple[int, int]], levels: int = 12):
    """(maps, masks, classes): integer-valued 5x6 maps (ties within and across images);
    defective images score a little higher on average."""
    maps, masks, classes = [], [], []
    for cls, (n_good, n_bad) in counts.items():
        for bad in [False] * n_good + [True] * n_bad:
            m = rng.integers(0, levels, (5, 6)) + (rng.integers(0, 4) if bad else 0)
            mask = np.zeros((5, 6), np.uint8)
            if bad:
                mask[rng.integers(0, 5), rng.integers(0, 6)] = 1
            maps.append(m.astype(np.float32))
            masks.append(mask)
            classes.append(cls)
    order = rng.permutation(len(maps))  # classes interleaved, as a test set may be
    return (np.stack(maps)[order], np.stack(masks)[order], [classes[i] for i in order])


@pytest.mark.parametrize("min_area", [0, 3, 10])
def test_decision_metrics_match_brute_force(min_area):
    rng = np.random.default_rng(min_area)
    maps, masks, classes = _data(rng, {"a": (40, 12), "b": (120, 7), "c": (25, 25)})
    for threshold in (5.0, 9.5, 11.0):
        got = decision_metrics(maps, masks, classes, threshold, min_area)
        _same(got, brute_metrics(maps, masks, classes, threshold, min_area))
    assert list(got) == list(dict.fromkeys(classes)) + ["mean"]


def test_an_all_normal_class_is_nan_where_undefined_and_left_out_of_the_mean():
    rng = np.random.default_rng(3)
    maps, masks, classes = _data(rng, {"ok": (30, 0), "mixed": (30, 10)})
    got = decision_metrics(maps, masks, classes, 8.0, 2)
    _same(got, brute_metrics(maps, masks, classes, 8.0, 2))
    assert math.isnan(got["ok"]["frame_recall"]) and math.isnan(got["ok"]["recall_at_fng_5"])
    assert not math.isnan(got["ok"]["frame_false_ng"])
    assert got["mean"]["frame_recall"] == got["mixed"]["frame_recall"]
    assert got["mean"]["frame_false_ng"] == pytest.approx(
        (got["ok"]["frame_false_ng"] + got["mixed"]["frame_false_ng"]) / 2)


def test_min_area_removing_everything_calls_nothing_ng():
    rng = np.random.default_rng(4)
    maps, masks, classes = _data(rng, {"a": (30, 10)})
    got = decision_metrics(maps, masks, classes, 1.0, 31)  # 5x6 maps: 30 pixels
    _same(got, brute_metrics(maps, masks, classes, 1.0, 31))
    assert got["a"] == {"frame_recall": 0.0, "frame_false_ng": 0.0, "recall_at_fng_1": 0.0,
                        "recall_at_fng_5": 0.0}
    curve = decision_report(maps, masks, classes, 1.0, 31)[1]["a"]
    assert curve.n_caught.tolist() == [0]  # only "nothing NG": -inf is no operating point


def test_without_a_threshold_only_the_curve_numbers_are_defined():
    rng = np.random.default_rng(5)
    maps, masks, classes = _data(rng, {"a": (30, 10)})
    got = decision_metrics(maps, masks, classes, None, 0)
    assert math.isnan(got["a"]["frame_recall"]) and math.isnan(got["mean"]["frame_false_ng"])
    assert 0.0 <= got["a"]["recall_at_fng_5"] <= 1.0


def test_fng_threshold_is_just_above_the_k_plus_first_normal_score():
    # 100 normal images scored 0..99; 5% allows k = 5 of them NG: the threshold lies just
    # above the 6th largest (94), so defective images scoring 95 count and 94 do not
    normal = np.arange(100, dtype=np.float64)
    defective = np.array([94.0, 95.0, 99.5, 10.0])
    scores = np.concatenate([normal, defective])
    labels = np.r_[np.zeros(100, bool), np.ones(4, bool)]
    curve = decision_curve(scores, labels)
    assert curve.recall_at(0.05) == 0.5  # 95 and 99.5
    assert curve.recall_at(0.01) == 0.25  # above 98: only 99.5
    # a tie at the boundary: fewer than k normals NG is the price, never more than k
    tied = np.concatenate([np.r_[np.zeros(95), np.full(5, 50.0)], [50.0, 60.0]])
    curve = decision_curve(tied, np.r_[np.zeros(100, bool), True, True])
    assert curve.recall_at(0.04) == 0.5  # k = 4 < 5 tied normals: threshold above 50


def test_scores_are_reused_and_the_mean_curve_is_bounded():
    rng = np.random.default_rng(6)
    maps, masks, classes = _data(rng, {"a": (30, 10), "b": (20, 20)})
    scores = decision_scores(maps, 3)
    result, curves = decision_report(maps, masks, classes, 7.0, 3, scores=scores)
    assert result == decision_report(maps, masks, classes, 7.0, 3)[0]
    xs, ys = mean_curve(curves)
    assert xs[0] == 0.0 and xs[-1] == 1.0 and np.all(np.diff(ys) >= 0)
    assert ys[-1] == pytest.approx(1.0)


def test_bad_input_is_named():
    maps = np.zeros((2, 3, 3), np.float32)
    masks = np.zeros((2, 3, 3), np.uint8)
    with pytest.raises(ValueError, match="class names"):
        decision_metrics(maps, masks, ["a"], 0.5, 0)
    with pytest.raises(ValueError, match="finite"):
        decision_metrics(maps, masks, ["a", "a"], math.nan, 0)
    with pytest.raises(ValueError, match="mean"):
        decision_metrics(maps, masks, ["mean", "a"], 0.5, 0)
