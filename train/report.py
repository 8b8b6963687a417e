"""Figures for `edgeas eval`: PR curves, per-class pAP/DSC bars, best/median/worst examples,
and the station's decisions (recall vs false-NG rate, the deployed point marked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeas.errors import require


def _pyplot():
    matplotlib = require("matplotlib", "matplotlib", "train")
    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    return plt


def _class_threshold(maps: np.ndarray, masks: np.ndarray) -> float | None:
    from edgeas.curves import best_pr_threshold, curve_from_scores

    labels = masks.reshape(-1) > 0
    if not labels.any() or labels.all():
        return None
    return float(best_pr_threshold(curve_from_scores(maps.reshape(-1), labels)))


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    denom = pred.sum() + gt.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(pred, gt).sum() / denom)


def pr_curves(pred, path: Path) -> None:
    from edgeas.curves import curve_from_scores

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    labels_all = np.asarray(pred.classes)
    for cls in dict.fromkeys(pred.classes):
        keep = labels_all == cls
        labels = pred.masks[keep].reshape(-1) > 0
        if not labels.any():
            continue
        curve = curve_from_scores(pred.maps[keep].reshape(-1), labels)
        precision = curve.tps / np.maximum(curve.tps + curve.fps, 1)
        recall = curve.tps / curve.n_pos
        ax.plot(recall, precision, label=cls)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="pixel precision-recall per class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metric_bars(result: dict[str, dict[str, float]], path: Path) -> None:
    plt = _pyplot()
    classes = [c for c in result if c != "mean"] + ["mean"]
    names = [m for m in ("pixel_ap", "dsc", "dsc_deploy") if m in result["mean"]]
    x = np.arange(len(classes))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, len(classes) * 0.9), 4))
    for i, name in enumerate(names):
        values = [100 * np.nan_to_num(result[c][name]) for c in classes]
        ax.bar(x + i * width, values, width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, classes, rotation=30, ha="right")
    ax.set(ylabel="percent", ylim=(0, 100), title="pAP and DSC per class")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def examples(pred, threshold: float | None, path: Path) -> None:
    """Per class: best, median and worst anomalous image by Dice at the class's oracle
    threshold; columns image, ground truth, map, predicted mask."""
    import cv2

    from edgeas.train.data import read_image

    plt = _pyplot()
    labels_all = np.asarray(pred.classes)
    rows: list[tuple[str, int, float, float]] = []
    for cls in dict.fromkeys(pred.classes):
        idx = np.flatnonzero(labels_all == cls)
        cls_thr = _class_threshold(pred.maps[idx], pred.masks[idx])
        if cls_thr is None:
            continue
        anomalous = [i for i in idx if pred.masks[i].any()]
        scored = sorted(
            ((_dice(pred.maps[i] >= cls_thr, pred.masks[i] > 0), i) for i in anomalous),
            reverse=True,
        )
        picks = [("best", scored[0]), ("median", scored[len(scored) // 2]), ("worst", scored[-1])]
        rows += [(f"{cls} {tag}", i, d, cls_thr) for tag, (d, i) in picks]
    if not rows:
        return
    vmax = float(np.quantile(pred.maps, 0.999))
    fig, axes = plt.subplots(len(rows), 4, figsize=(9, 2.3 * len(rows)), squeeze=False)
    for r, (title, i, dice, thr) in enumerate(rows):
        h, w = pred.maps[i].shape
        rgb = cv2.cvtColor(cv2.resize(read_image(pred.images[i]), (w, h)), cv2.COLOR_BGR2RGB)
        panels = [
            (rgb, None, title),
            (pred.masks[i], "gray", "ground truth"),
            (pred.maps[i], "jet", "anomaly map"),
            ((pred.maps[i] >= thr).astype(np.uint8), "gray", f"mask, Dice {dice:.2f}"),
        ]
        for ax, (img, cmap, name) in zip(axes[r], panels):
            kwargs: dict[str, Any] = {"cmap": cmap} if cmap else {}
            if cmap == "jet":
                kwargs.update(vmin=0, vmax=vmax)
            ax.imshow(img, **kwargs)
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def decisions(pred, result, threshold: float | None, min_area: int, path: Path) -> None:
    """Image recall vs false-NG rate per class and their mean, from the decision scores of
    the station's rule (edgeas.decisions) on the decision maps (a decision head's when the
    model has one); the deployed threshold's point marked on each, the 1% and 5% false-NG
    targets as dotted lines. With a head, the UniAS map's own mean curve is drawn dashed
    for comparison (it has no deployed point: the threshold is the head's)."""
    from edgeas.decisions import decision_report, mean_curve
    from edgeas.train.evaluate import decision_metrics_of

    plt = _pyplot()
    curves = decision_metrics_of(pred, threshold, min_area)[1]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for cls, curve in curves.items():
        if not (curve.n_normal and curve.n_defective):
            continue
        line = ax.step(curve.false_ng, curve.recall, where="post", lw=1.2, label=cls)[0]
        point = result[cls]
        if not np.isnan(point["frame_recall"]) and not np.isnan(point["frame_false_ng"]):
            ax.plot(point["frame_false_ng"], point["frame_recall"], "o", color=line.get_color())
    xs, ys = mean_curve(curves)
    if not np.isnan(ys).all():
        ax.step(xs, ys, "k-", where="post", lw=2.2, label="mean")
        mean = result["mean"]
        if not np.isnan(mean["frame_recall"]) and not np.isnan(mean["frame_false_ng"]):
            ax.plot(mean["frame_false_ng"], mean["frame_recall"], "k*", ms=14,
                    label=f"deployed (threshold {threshold:.4g})")
    if pred.head is not None:
        alone = decision_report(pred.aggregated_maps, pred.masks, pred.classes, None, min_area,
                                scores=pred.decision_scores(min_area, aggregated=True))[1]
        xs, ys = mean_curve(alone)
        if not np.isnan(ys).all():
            ax.step(xs, ys, color="0.4", ls="--", where="post", lw=1.6,
                    label=f"mean, UniAS {pred.decision_mode} map alone")
    for target in (0.01, 0.05):
        ax.axvline(target, color="0.6", ls=":", lw=1)
    ax.set(xlabel="false NG (normal images called NG)",
           ylabel="recall (defective images called NG)", xlim=(-0.01, 1.01), ylim=(0, 1.02),
           title=f"station decisions, min_area {min_area} ({pred.decided_on})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_figures(pred, result, threshold: float | None, out: Path,
                  min_area: int = 0) -> list[Path]:
    paths = [out / "pr_curves.png", out / "pap_dsc.png", out / "examples.png",
             out / "decisions.png"]
    pr_curves(pred, paths[0])
    metric_bars(result, paths[1])
    examples(pred, threshold, paths[2])
    decisions(pred, result, threshold, min_area, paths[3])
    return [p for p in paths if p.exists()]
