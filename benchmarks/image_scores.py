"""Image scores of a trained UniAS model, against a nearest-neighbour baseline (issue 12).

    python benchmarks/image_scores.py --checkpoint RUN/last.pt --data DIR
        [--coreset 0.1] [--min-area 16] [--out benchmarks/results]

A station's OK/NG call ranks images by one score. Today that score is the one the
decision rule induces on the anomaly map (its maximum, with min_area the largest
threshold leaving a region of min_area pixels). This script measures whether another
score of the same model's maps ranks clean against defective images better, using
normal images only wherever something is fitted (the held-out split of the run):
- the map (both smoothings, both modes): max, the rule's score at min_area, top-k means;
- each level alone: its max;
- combinations standardised on the held-out normal images: the sum of the z-scores of
  the log of each level's max;
- the PatchCore-style baseline (benchmarks/patchcore.py) on the same backbone, and its
  z-sum with the map's max.
Per row: image AUROC and recall at 1% / 5% false NG (per class, then the mean, as
`edgeas eval` computes them) and the same pooled over classes (one threshold for every
product, as a mixed line sees it). Writes image_scores.json / .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from publish import write_results  # noqa: E402


def _ranking(scores: np.ndarray, defective: np.ndarray, classes: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score  # a test oracle elsewhere; a metric here

    from edgeas.decisions import decision_curve

    per = {"auroc": [], "r1": [], "r5": []}
    for c in dict.fromkeys(classes.tolist()):
        keep = classes == c
        curve = decision_curve(scores[keep], defective[keep])
        per["auroc"].append(roc_auc_score(defective[keep], scores[keep]))
        per["r1"].append(curve.recall_at(0.01))
        per["r5"].append(curve.recall_at(0.05))
    pooled = decision_curve(scores, defective)
    return {"image_auroc": float(np.mean(per["auroc"])),
            "recall_at_fng_1": float(np.mean(per["r1"])),
            "recall_at_fng_5": float(np.mean(per["r5"])),
            "pooled_auroc": float(roc_auc_score(defective, scores)),
            "pooled_recall_at_fng_1": pooled.recall_at(0.01),
            "pooled_recall_at_fng_5": pooled.recall_at(0.05)}


def _z(test: np.ndarray, normal: np.ndarray) -> np.ndarray:
    return (test - normal.mean()) / max(float(normal.std()), 1e-12)


def _flat_max(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(len(maps), -1).max(axis=1)


def _top_mean(maps: np.ndarray, k: int) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def score_rows(test_levels, val_levels, size, min_area: int,
               knn: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Every candidate score of the test images (name -> (N,) scores)."""
    from edgeas.aggregate import aggregate_batch
    from edgeas.decisions import decision_scores

    rows: dict[str, np.ndarray] = {}
    for smoothing in ("official", "none"):
        for mode in ("reference", "fused"):
            maps = aggregate_batch(test_levels, size, mode, smoothing)
            tag = f"map {smoothing} {mode}"
            rows[f"{tag}: max"] = _flat_max(maps)
            rows[f"{tag}: rule score, min_area {min_area}"] = decision_scores(maps, min_area)
            for k in (10, 100, 1000):
                rows[f"{tag}: top-{k} mean"] = _top_mean(maps, k)
    for i, level in enumerate(test_levels):
        rows[f"level res{i + 1} alone: max"] = _flat_max(level)
    logs = [(np.log(_flat_max(t)), np.log(_flat_max(v))) for t, v in
            zip(test_levels, val_levels, strict=True)]
    rows["z-sum of log level maxima (held-out normals)"] = sum(_z(t, v) for t, v in logs)
    if knn is not None:
        knn_test, knn_val = knn
        rows["PatchCore-style kNN: max"] = knn_test
        ref_t = _flat_max(aggregate_batch(test_levels, size, "fused", "official"))
        ref_v = _flat_max(aggregate_batch(val_levels, size, "fused", "official"))
        rows["z-sum of log map max and log kNN max"] = (
            _z(np.log(ref_t), np.log(ref_v)) + _z(np.log(knn_test), np.log(knn_val)))
    return rows


def _knn_scores(data: Path, backbone: str, coreset: float, val_fraction: float, seed: int,
                test_set, val_set) -> tuple[np.ndarray, np.ndarray]:
    import patchcore
    import torch

    from edgeas.preprocess import Recipe
    from edgeas.train.backbones import build_backbone
    from edgeas.train.data import index_dataset, split_train_val
    from edgeas.train.datasets import TestImages

    torch.manual_seed(seed)
    net = build_backbone(backbone)
    recipe = Recipe((224, 224), net.mean, net.std)
    train, _ = split_train_val(index_dataset(data).train, val_fraction, seed)
    base = patchcore.fit(net, TestImages(train, recipe), patchcore.DEFAULT_TAPS, coreset, seed)
    size = tuple(recipe.input_size)
    return (_flat_max(patchcore.anomaly_maps(base, net, test_set, size)),
            _flat_max(patchcore.anomaly_maps(base, net, val_set, size)))


def run(checkpoint: Path, data: Path, coreset: float, min_area: int) -> dict[str, Any]:
    from edgeas.export.command import checkpoint_model
    from edgeas.train.checkpoint import load_checkpoint
    from edgeas.train.data import index_dataset, split_train_val
    from edgeas.train.datasets import TestImages
    from edgeas.train.inference import predict_level_maps

    model, record = checkpoint_model(checkpoint)
    train_cfg = load_checkpoint(checkpoint)["config"]["train"]
    index = index_dataset(data)
    _, val = split_train_val(index.train, train_cfg["val_fraction"], train_cfg["seed"])
    recipe = record.preprocessing
    test_set, val_set = TestImages(index.test, recipe), TestImages(val, recipe)
    test_levels = predict_level_maps(model, test_set)
    val_levels = predict_level_maps(model, val_set)
    defective = np.array([s.defect != "good" for s in index.test])
    classes = np.array([s.cls for s in index.test])
    knn = None
    if coreset > 0:
        knn = _knn_scores(data, record.model.backbone, coreset, train_cfg["val_fraction"],
                          train_cfg["seed"], test_set, val_set)
    rows = score_rows(test_levels, val_levels, tuple(recipe.input_size), min_area, knn)
    return {"checkpoint": str(checkpoint), "data": str(data), "min_area": min_area,
            "coreset": coreset, "held_out": len(val), "test_images": len(index.test),
            "rows": {name: _ranking(s, defective, classes) for name, s in rows.items()}}


def markdown(report: dict[str, Any]) -> str:
    keys = ("image_auroc", "recall_at_fng_1", "recall_at_fng_5", "pooled_auroc",
            "pooled_recall_at_fng_1", "pooled_recall_at_fng_5")
    lines = ["# Image scores of one UniAS model against a nearest-neighbour baseline", "",
             f"`python benchmarks/image_scores.py --checkpoint {report['checkpoint']} --data "
             f"{report['data']} --coreset {report['coreset']} --min-area "
             f"{report['min_area']}`: {report['test_images']} test images; standardisation "
             f"on the run's {report['held_out']} held-out normal images. Percent. Per class: "
             "the mean over classes of the class's figure; pooled: one ranking of all "
             "classes together (one threshold for a mixed line).", "",
             "| score | image AUROC | recall @1% fNG | recall @5% fNG | pooled AUROC "
             "| pooled @1% | pooled @5% |", "|---|---|---|---|---|---|---|"]
    for name, r in report["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[k]:.1f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--coreset", type=float, default=0.1, help="0: no kNN baseline")
    p.add_argument("--min-area", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    a = p.parse_args()
    import torch

    torch.set_num_threads(2)
    report = run(a.checkpoint, a.data, a.coreset, a.min_area)
    write_results(a.out, "image_scores", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
