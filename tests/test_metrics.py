"""edgeas.metrics against scikit-learn and slow, obvious references (protocol.md section 5)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from edgeas import curves
from edgeas.metrics import dice_per_image, evaluate, metric_names, nan_classes

sk = pytest.importorskip("sklearn.metrics")

PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1max")


# ---------------------------------------------------------------- helpers


def make_set(
    seed: int, n: int = 8, h: int = 12, w: int = 14, levels: int | None = 12
) -> tuple[np.ndarray, np.ndarray]:
    """Random maps (quantised to `levels` values -> many ties) with rectangular blobs
    on about half of the images, anomalous pixels scoring higher on average."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        if i % 2 == 1 or rng.random() < 0.2:
            for _ in range(rng.integers(1, 3)):
                y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
                masks[i, y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
    maps = rng.random((n, h, w)) + 0.6 * masks * rng.random((n, h, w))
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps.astype(np.float32), masks


def sk_pixel(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    y, s = masks.ravel() > 0, maps.ravel().astype(np.float64)
    p, r, _ = sk.precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return {
        "pixel_auroc": sk.roc_auc_score(y, s),
        "pixel_ap": sk.average_precision_score(y, s),
        "pixel_f1max": float(f1[:-1].max()),
    }


def sk_image(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    y = masks.reshape(len(masks), -1).any(axis=1)
    s = maps.reshape(len(maps), -1).max(axis=1).astype(np.float64)
    p, r, _ = sk.precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    return {
        "image_auroc": sk.roc_auc_score(y, s),
        "image_ap": sk.average_precision_score(y, s),
        "image_f1max": float(f1[:-1].max()),
    }


def sk_dsc_threshold(maps: np.ndarray, masks: np.ndarray) -> float:
    """The official rule: first argmax of P + R over precision_recall_curve's thresholds."""
    p, r, t = sk.precision_recall_curve(masks.ravel() > 0, maps.ravel().astype(np.float64))
    return float(t[np.argmax((p + r)[: len(t)])])


def loop_dice(maps: np.ndarray, masks: np.ndarray, thr: float) -> float:
    values = []
    for m, g in zip(maps, masks > 0):
        a, b = m >= thr, g
        if not b.any():
            values.append(0.0 if a.any() else 1.0)
        else:
            values.append(2 * np.sum(a & b) / (a.sum() + b.sum()))
    return float(np.mean(values))


def flood_regions(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of one 2-D mask by breadth-first search (independent of scipy)."""
    seen = np.zeros(mask.shape, dtype=bool)
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = [start], []
        while queue:
            y, x = queue.pop()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    inside = 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1]
                    if inside and mask[q] and not seen[q]:
                        seen[q] = True
                        queue.append(q)
        regions.append(pixels)
    return regions


def slow_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Evaluate PRO and FPR at every distinct score directly, then integrate with a loop."""
    regions = []
    for i, m in enumerate(masks > 0):
        regions += [[(i, y, x) for y, x in r] for r in flood_regions(m)]
    normal = maps[~(masks > 0)]
    xs, ys = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        xs.append(float(np.mean(normal >= t)))
        ys.append(float(np.mean([np.mean([maps[p] >= t for p in r]) for r in regions])))
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < limit:
                y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                area += (limit - x0) * (y0 + y_at) / 2
            break
    return area / limit


# ---------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 6, 40])
def test_pixel_and_image_metrics_match_sklearn(seed: int, levels: int | None) -> None:
    maps, masks = make_set(seed, n=10, levels=levels)
    res = evaluate(maps, masks, ["c"] * len(maps))["c"]
    for key, ref in {**sk_pixel(maps, masks), **sk_image(maps, masks)}.items():
        assert res[key] == pytest.approx(ref, abs=1e-12), key


@pytest.mark.parametrize("seed", range(8))
def test_dsc_threshold_and_dsc_match_official_rule(seed: int) -> None:
    maps, masks = make_set(seed, n=8, levels=8)
    curve = curves.curve_from_scores(maps, masks)
    thr = sk_dsc_threshold(maps, masks)
    assert curves.best_pr_threshold(curve) == thr
    res = evaluate(maps, masks, ["c"] * len(maps))
    assert res["c"]["dsc"] == pytest.approx(loop_dice(maps, masks, thr), abs=1e-12)


def test_dsc_tie_takes_first_maximum_in_ascending_thresholds() -> None:
    # P + R = 1.5 at threshold 0.9 (P=1, R=1/2) and at 0.4 (P=1/2, R=1): 0.4 must win.
    maps = np.array([[[0.7, 0.1, 0.1]], [[0.9, 0.4, 0.6]]], dtype=np.float32)
    masks = np.array([[[0, 0, 0]], [[1, 1, 0]]], dtype=np.uint8)
    assert sk_dsc_threshold(maps, masks) == pytest.approx(0.4)
    assert curves.best_pr_threshold(curves.curve_from_scores(maps, masks)) == pytest.approx(0.4)
    # t = 0.4: normal image predicts a pixel -> 0; second image 2*2/(3+2) = 0.8.
    assert evaluate(maps, masks, ["c", "c"])["c"]["dsc"] == pytest.approx(0.4)


def test_auroc_below_half_is_not_flipped() -> None:
    maps, masks = make_set(3, n=10, levels=None)
    inverted = (1.0 - maps).astype(np.float32)
    res = evaluate(inverted, masks, ["c"] * len(maps))["c"]
    ref = sk.roc_auc_score(masks.ravel(), inverted.ravel())
    assert ref < 0.5
    assert res["pixel_auroc"] == pytest.approx(ref, abs=1e-12)
    assert res["image_auroc"] == pytest.approx(sk_image(inverted, masks)["image_auroc"])
    # Anomalous images scoring lowest: image AUROC 0, reported as 0.
    flat = np.where(masks.any(axis=(1, 2))[:, None, None], 0.2, 0.9) * np.ones_like(maps)
    assert evaluate(flat, masks, ["c"] * len(maps))["c"]["image_auroc"] == 0.0


def test_larger_input_with_heavy_ties_matches_sklearn() -> None:
    maps, masks = make_set(11, n=60, h=48, w=48, levels=255)
    res = evaluate(maps, masks, ["c"] * len(maps))["c"]
    for key, ref in sk_pixel(maps, masks).items():
        assert res[key] == pytest.approx(ref, abs=1e-10), key


# ---------------------------------------------------------------- AU-PRO


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 5])
def test_aupro_matches_slow_reference(seed: int, levels: int | None) -> None:
    maps, masks = make_set(100 + seed, n=6, h=8, w=9, levels=levels)
    res = evaluate(maps, masks, ["c"] * len(maps))["c"]
    assert res["aupro"] == pytest.approx(slow_aupro(maps, masks), abs=1e-12)


def test_aupro_hand_computed_with_diagonal_region_and_interpolation() -> None:
    maps = np.full((2, 2, 4), 0.2, dtype=np.float32)
    masks = np.zeros((2, 2, 4), dtype=bool)
    masks[0, 0, 0] = True  # region A, 1 pixel
    masks[1, 0, 0] = masks[1, 1, 1] = True  # region B: diagonal neighbours = one region
    maps[0, 0, 0] = 0.9
    maps[1, 0, 0], maps[1, 1, 1] = 0.7, 0.6
    maps[0, 1, 3] = 0.8  # 1 normal pixel at 0.8
    maps[0, 0, 1] = maps[0, 0, 2] = maps[1, 0, 2] = maps[1, 0, 3] = 0.6  # 4 normal at 0.6
    # 13 normal pixels. Curve: (0,0) (0,1/2) (1/13,1/2) (1/13,3/4) (5/13,1) (1,1);
    # the tie at 0.6 gives a sloped segment crossing FPR 0.3 -> interpolation.
    y_at = 0.75 + (1.0 - 0.75) * (0.3 - 1 / 13) / (4 / 13)
    expected = (0.5 / 13 + (0.3 - 1 / 13) * (0.75 + y_at) / 2) / 0.3
    res = evaluate(maps, masks, ["c", "c"])["c"]
    assert res["aupro"] == pytest.approx(expected, abs=1e-12)
    assert res["aupro"] == pytest.approx(slow_aupro(maps, masks), abs=1e-12)


def test_aupro_regions_do_not_link_across_images() -> None:
    # Same pixel anomalous in two images: two regions, not one 3-D blob.
    maps = np.zeros((2, 3, 3), dtype=np.float32)
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[:, 1, 1] = True
    masks[1, 1, 2] = True
    maps[0, 1, 1] = 1.0  # region 1 fully found at FPR 0; region 2 only at the end
    res = evaluate(maps, masks, ["c", "c"])["c"]
    # PRO = 1/2 from FPR 0 to 1 (at 0.3 the last segment (0, 1/2) -> (1, 1) interpolates).
    y_at = 0.5 + 0.5 * 0.3
    assert res["aupro"] == pytest.approx((0.3 * (0.5 + y_at) / 2) / 0.3, abs=1e-12)
    assert res["aupro"] == pytest.approx(slow_aupro(maps, masks), abs=1e-12)


def test_integrate_to_exact_point_and_vertical_steps() -> None:
    x = np.array([0.0, 0.0, 0.1, 0.3, 0.3, 0.5])
    y = np.array([0.0, 1.0, 1.0, 1.0, 2.0, 2.0])
    assert curves.integrate_to(x, y, 0.3) == pytest.approx(0.3)
    assert curves.integrate_to(x, y, 0.4) == pytest.approx(0.3 + 0.2)


# ---------------------------------------------------------------- edge cases


def test_all_normal_class_is_nan_and_dsc_deploy_rule() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((4, 5, 5)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=np.uint8)
    res = evaluate(maps, masks, ["ok"] * 4, threshold=2.0)["ok"]
    for key in (*PIXEL_KEYS, *IMAGE_KEYS, "dsc", "mad"):
        assert math.isnan(res[key]), key
    assert res["dsc_deploy"] == 1.0  # nothing predicted on normal images
    low = evaluate(maps, masks, ["ok"] * 4, threshold=0.0)["ok"]
    assert low["dsc_deploy"] == 0.0  # everything predicted on normal images


def test_single_anomalous_pixel() -> None:
    maps, _ = make_set(5, n=4, h=6, w=6, levels=10)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[2, 3, 4] = True
    res = evaluate(maps, masks, ["c"] * 4)["c"]
    for key, ref in {**sk_pixel(maps, masks), **sk_image(maps, masks)}.items():
        assert res[key] == pytest.approx(ref, abs=1e-12), key
    assert res["aupro"] == pytest.approx(slow_aupro(maps, masks), abs=1e-12)
    thr = sk_dsc_threshold(maps, masks)
    assert res["dsc"] == pytest.approx(loop_dice(maps, masks, thr), abs=1e-12)


def test_constant_maps_hand_values() -> None:
    maps = np.full((4, 5, 5), 0.5, dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[1, :2, :2] = True  # 4 pixels
    masks[3, 0, :] = True  # 5 pixels
    res = evaluate(maps, masks, ["c"] * 4)["c"]
    p = 9 / 100
    assert res["pixel_auroc"] == pytest.approx(0.5)
    assert res["pixel_ap"] == pytest.approx(p)
    assert res["pixel_f1max"] == pytest.approx(2 * p / (1 + p))
    assert res["aupro"] == pytest.approx(0.15)  # straight line (0,0)-(1,1) up to 0.3, / 0.3
    assert res["image_auroc"] == pytest.approx(0.5)
    assert res["image_ap"] == pytest.approx(0.5)
    # Everything predicted: normal images 0, anomalous 2|B| / (25 + |B|).
    assert res["dsc"] == pytest.approx((0 + 8 / 29 + 0 + 10 / 30) / 4)
    for key, ref in {**sk_pixel(maps, masks), **sk_image(maps, masks)}.items():
        assert res[key] == pytest.approx(ref, abs=1e-12), key


def test_dsc_normal_image_rule_hand_values() -> None:
    maps = np.array([[[0.1, 0.2, 0.6, 0.1]], [[0.9, 0.8, 0.6, 0.1]]], dtype=np.float32)
    masks = np.array([[[0, 0, 0, 0]], [[1, 1, 0, 0]]], dtype=np.uint8)
    # Oracle: P + R = 1.5, 2.0, 1.5, ... at 0.9, 0.8, 0.6 -> 0.8; both images perfect.
    assert evaluate(maps, masks, ["c", "c"])["c"]["dsc"] == pytest.approx(1.0)
    cases = {
        0.5: (0.0 + 2 * 2 / (3 + 2)) / 2,  # normal image predicts one pixel -> 0
        0.7: (1.0 + 1.0) / 2,  # nothing on the normal image -> 1
        0.85: (1.0 + 2 * 1 / (1 + 2)) / 2,
        0.95: (1.0 + 0.0) / 2,  # defect missed entirely
    }
    for thr, expected in cases.items():
        res = evaluate(maps, masks, ["c", "c"], threshold=thr)["c"]
        assert res["dsc_deploy"] == pytest.approx(expected), thr
        assert dice_per_image(maps, masks, thr) == pytest.approx(expected), thr


def test_class_without_normal_pixels() -> None:
    maps, _ = make_set(2, n=3, h=4, w=4)
    masks = np.ones(maps.shape, dtype=bool)
    res = evaluate(maps, masks, ["c"] * 3)["c"]
    for key in (*PIXEL_KEYS, *IMAGE_KEYS, "mad"):
        assert math.isnan(res[key]), key
    assert res["dsc"] == pytest.approx(1.0)  # lowest threshold: everything, all correct


# ---------------------------------------------------------------- structure and means


def test_several_classes_macro_mean_ignores_nan() -> None:
    a_maps, a_masks = make_set(21, n=6)
    b_maps, b_masks = make_set(22, n=8)
    c_maps = np.random.default_rng(23).random((3, 12, 14)).astype(np.float32)
    c_masks = np.zeros(c_maps.shape, dtype=bool)  # all normal -> NaN pixel metrics
    maps = np.concatenate([a_maps, c_maps, b_maps])
    masks = np.concatenate([a_masks, c_masks, b_masks])
    classes = ["a"] * 6 + ["c"] * 3 + ["b"] * 8
    order = np.random.default_rng(0).permutation(len(maps))  # classes need not be contiguous
    res = evaluate(maps[order], masks[order], [classes[i] for i in order], threshold=0.7)

    assert set(res) == {"a", "b", "c", "mean"}
    keys = set(metric_names(with_deploy=True))
    assert all(set(v) == keys for v in res.values())
    alone = {
        "a": evaluate(a_maps, a_masks, ["a"] * 6, threshold=0.7)["a"],
        "b": evaluate(b_maps, b_masks, ["b"] * 8, threshold=0.7)["b"],
    }
    for key in keys:
        assert res["a"][key] == pytest.approx(alone["a"][key], nan_ok=True), key
        assert res["b"][key] == pytest.approx(alone["b"][key], nan_ok=True), key
    for key in ("pixel_ap", "aupro", "image_auroc", "mad"):
        assert math.isnan(res["c"][key])
        assert res["mean"][key] == pytest.approx((res["a"][key] + res["b"][key]) / 2)
    # dsc_deploy is defined for the all-normal class, so it enters the mean.
    three = [res[c]["dsc_deploy"] for c in "abc"]
    assert res["mean"]["dsc_deploy"] == pytest.approx(np.mean(three))
    counts = nan_classes(res)
    assert counts["pixel_ap"] == 1 and counts["dsc"] == 1 and counts["dsc_deploy"] == 0


def test_structure_without_threshold_and_mad() -> None:
    maps, masks = make_set(4, n=10)
    res = evaluate(maps, masks.astype(np.uint8) * 255, ["x"] * 10)
    assert list(res) == ["x", "mean"]
    assert tuple(res["x"]) == metric_names(False) and "dsc_deploy" not in res["x"]
    parts = [res["x"][k] for k in (*IMAGE_KEYS, "pixel_auroc", "pixel_ap", "pixel_f1max")]
    parts.append(res["x"]["aupro"])
    assert res["x"]["mad"] == pytest.approx(np.mean(parts))
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in res["x"].values())
    assert nan_classes(res) == dict.fromkeys(metric_names(False), 0)


def test_float64_input_and_list_input_agree_with_float32() -> None:
    maps, masks = make_set(7, n=6)
    ref = evaluate(maps, masks, ["c"] * 6)
    as64 = evaluate(maps.astype(np.float64), masks, ["c"] * 6)
    as_list = evaluate(list(maps), list(masks), ("c",) * 6)
    assert as64 == ref and as_list == ref


def test_bad_inputs_raise() -> None:
    maps, masks = make_set(1, n=4)
    with pytest.raises(ValueError):
        evaluate(maps, masks[:, :-1], ["c"] * 4)
    with pytest.raises(ValueError):
        evaluate(maps, masks, ["c"] * 3)
    with pytest.raises(ValueError):
        evaluate(maps, masks, ["mean"] * 4)
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        evaluate(bad, masks, ["c"] * 4)


def test_metrics_import_neither_torch_nor_scipy_nor_sklearn() -> None:
    code = (
        "import sys, edgeas.metrics, edgeas.thresholds; "
        "bad = [m for m in ('torch', 'scipy', 'sklearn') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
