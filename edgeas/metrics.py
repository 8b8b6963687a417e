"""Segmentation and detection metrics (protocol.md section 5), numpy only.

`evaluate` returns, for each class and for "mean", a dict of floats in
[0, 1] or NaN. Per class, every pixel of every image of the class is pooled;
"mean" is the macro mean over classes, ignoring NaN (`nan_classes` says how
many classes each mean left out).

Scale: each class's pixel scores are sorted once (float32) and ROC, PR, AP,
F1-max, the DSC threshold and the PRO curve all come from that one order by
cumulative sums, so an MVTec-sized set (86.6 M pixels) needs a few hundred
MB beyond the maps themselves.

Undefined values:
- pixel_auroc, pixel_ap, pixel_f1max, aupro: NaN unless the class has both
  anomalous and normal pixels;
- dsc: NaN when the class has no anomalous pixel (no PR curve, so no oracle
  threshold); dsc_deploy is always defined (a normal image scores 1 when
  nothing is predicted, else 0);
- image_auroc, image_ap, image_f1max: NaN when all images of the class have
  the same label;
- mad: NaN when any of its seven parts is NaN.
AUROCs are never flipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeas import curves

PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "dsc", "pixel_f1max", "aupro")
IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")
# ADer's mAD: image AUROC/AP/F1-max and pixel AUROC/AP/F1-max/AU-PRO.
MAD_PARTS = (
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "aupro",
)
MEAN_KEY = "mean"


def metric_names(with_deploy: bool = False) -> tuple[str, ...]:
    """Keys of every per-class dict, in report order."""
    names = ("pixel_auroc", "pixel_ap", "dsc")
    if with_deploy:
        names += ("dsc_deploy",)
    return names + ("pixel_f1max", "aupro") + IMAGE_METRICS + ("mad",)


def evaluate(
    maps: np.ndarray,
    masks: np.ndarray,
    classes: Sequence[str],
    threshold: float | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per class and their macro mean.

    maps: float (N, H, W) anomaly maps; masks: (N, H, W), anomalous where > 0;
    classes: N class names; threshold: the deployment threshold (adds
    `dsc_deploy`). Returns {class: {metric: float}, ..., "mean": {...}},
    classes in order of first appearance.
    """
    maps = maps if isinstance(maps, np.ndarray) else np.asarray(maps)
    masks = masks if isinstance(masks, np.ndarray) else np.asarray(masks)
    names = np.asarray([str(c) for c in classes], dtype=object)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {maps.shape}")
    if masks.shape != maps.shape:
        raise ValueError(f"masks shape {masks.shape} differs from maps shape {maps.shape}")
    if names.shape != (maps.shape[0],):
        raise ValueError(f"{names.size} class names for {maps.shape[0]} maps")
    if maps.shape[0] == 0:
        raise ValueError("no maps to evaluate")
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    unique = list(dict.fromkeys(names.tolist()))
    if MEAN_KEY in unique:
        raise ValueError(f"a class may not be named {MEAN_KEY!r}")

    result: dict[str, dict[str, float]] = {}
    for name in unique:
        idx = np.flatnonzero(names == name)
        # Copy one class at a time: never a float32/float64 copy of every map at once.
        class_maps = np.ascontiguousarray(maps[idx], dtype=np.float32)
        class_masks = masks[idx] > 0
        if not np.isfinite(class_maps).all():
            raise ValueError(f"class {name!r}: maps contain NaN or inf")
        result[name] = _evaluate_class(class_maps, class_masks, threshold)
        del class_maps, class_masks

    keys = metric_names(threshold is not None)
    result[MEAN_KEY] = {k: _nanmean([result[c][k] for c in unique]) for k in keys}
    return result


def nan_classes(result: dict[str, dict[str, float]]) -> dict[str, int]:
    """For each metric, how many classes are NaN and so left out of the mean."""
    per_class = [v for k, v in result.items() if k != MEAN_KEY]
    if not per_class:
        return {}
    return {m: sum(1 for v in per_class if np.isnan(v[m])) for m in per_class[0]}


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _evaluate_class(
    maps: np.ndarray, masks: np.ndarray, threshold: float | None
) -> dict[str, float]:
    out: dict[str, float] = {}
    out.update(_pixel_metrics(maps, masks))
    if threshold is not None:
        out["dsc_deploy"] = dice_per_image(maps, masks, threshold)
    out.update(_image_metrics(maps, masks))
    parts = [out[k] for k in MAD_PARTS]
    out["mad"] = float("nan") if any(np.isnan(parts)) else float(np.mean(parts))
    return {k: out[k] for k in metric_names(threshold is not None)}


def _pixel_metrics(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    nan = float("nan")
    scores = maps.reshape(-1)
    labels = masks.reshape(-1)
    n_pos = int(np.count_nonzero(labels))
    n_neg = labels.size - n_pos
    if n_pos == 0:
        return dict.fromkeys(("pixel_auroc", "pixel_ap", "dsc", "pixel_f1max", "aupro"), nan)

    order = curves.descending_order(scores)
    sorted_scores = scores[order]
    curve = curves.curve_from_sorted(sorted_scores, labels[order])
    del sorted_scores
    dsc = dice_per_image(maps, masks, curves.best_pr_threshold(curve))
    if n_neg == 0:
        # Ranking metrics need both kinds of pixel; the oracle DSC does not.
        del order
        return {"pixel_auroc": nan, "pixel_ap": nan, "dsc": dsc, "pixel_f1max": nan, "aupro": nan}

    region_ids, sizes = _regions(masks)
    sorted_ids = region_ids.reshape(-1)[order]
    del region_ids, order
    return {
        "pixel_auroc": curves.roc_auc(curve),
        "pixel_ap": curves.average_precision(curve),
        "dsc": dsc,
        "pixel_f1max": curves.f1_max(curve),
        "aupro": curves.pro_auc(curve, sorted_ids, sizes),
    }


def _image_metrics(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    scores = maps.reshape(maps.shape[0], -1).max(axis=1)
    labels = masks.reshape(masks.shape[0], -1).any(axis=1)
    if labels.all() or not labels.any():
        return dict.fromkeys(IMAGE_METRICS, float("nan"))
    curve = curves.curve_from_scores(scores, labels)
    return {
        "image_auroc": curves.roc_auc(curve),
        "image_ap": curves.average_precision(curve),
        "image_f1max": curves.f1_max(curve),
    }


def _regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected ground-truth regions, labelled within each image (never across images).

    Returns int32 ids (0 = normal, 1.. = regions, unique over the whole
    stack) and the size of each region (index 0 unused).
    """
    from scipy import ndimage  # lazy: only AU-PRO needs scipy

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-neighbours within a slice, no links between images
    ids, n = ndimage.label(masks, structure=structure, output=np.int32)
    sizes = np.bincount(ids.reshape(-1), minlength=n + 1)
    return ids, sizes


def dice_per_image(maps: np.ndarray, masks: np.ndarray, threshold: float) -> float:
    """Mean over images of 2|A n B| / (|A| + |B|), A = {map >= threshold}, B = mask > 0.

    An image with an empty ground truth scores 1 when nothing is predicted,
    else 0 (UniAS official evaluation rule).
    """
    if np.isnan(threshold):
        return float("nan")
    maps = np.asarray(maps)
    masks = np.asarray(masks) > 0
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    n = maps.shape[0]
    pred = maps.reshape(n, -1) >= threshold
    gt = masks.reshape(n, -1)
    inter = np.count_nonzero(pred & gt, axis=1).astype(np.float64)
    size_a = np.count_nonzero(pred, axis=1).astype(np.float64)
    size_b = np.count_nonzero(gt, axis=1).astype(np.float64)
    denom = size_a + size_b
    # A normal image with a prediction gets 0 / |A| = 0 from the formula; only 0 / 0
    # (nothing predicted, nothing expected) needs the rule, via the `out` default of 1.
    dice = np.divide(2.0 * inter, denom, out=np.ones(n), where=denom > 0)
    return float(dice.mean())
