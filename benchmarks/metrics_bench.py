"""Time and memory of edgeas.metrics.evaluate on an MVTec-sized synthetic set.

    python benchmarks/metrics_bench.py [--images 1725] [--out benchmarks/results]

MVTec AD's test split is 1,725 images over 15 classes; at 224 x 224 that is
86.6 M pixels. Maps are smooth noise with raised blobs over the ground-truth
defects (about half the images), continuous float32, so almost every pixel
score is distinct: the worst case for the number of curve thresholds.

Memory is reported two ways, because neither alone is the whole truth:
- tracemalloc peak: numpy's own allocations made inside `evaluate` (a second,
  separate run, since tracing slows allocation a little);
- ru_maxrss delta: growth of the process's resident high-water mark during
  the timed run, over a baseline that already holds the maps and masks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
from publish import write_results

from edgeas.metrics import evaluate, nan_classes
from edgeas.thresholds import threshold_from_normal

N_CLASSES = 15
SIZE = 224
SEED = 0


def make_data(n_images: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fill preallocated arrays one image at a time, so the baseline RSS is just the data."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n_images, SIZE, SIZE), dtype=np.float32)
    masks = np.zeros((n_images, SIZE, SIZE), dtype=np.uint8)
    classes = [f"class{i * N_CLASSES // n_images:02d}" for i in range(n_images)]
    for i in range(n_images):
        noise = rng.random((SIZE, SIZE), dtype=np.float32)
        field = cv2.GaussianBlur(noise, (0, 0), sigmaX=4.0)
        field = (field - field.min()) * (0.3 / max(float(np.ptp(field)), 1e-6))
        if rng.random() < 0.5:
            for _ in range(int(rng.integers(1, 4))):
                center = (int(rng.integers(20, SIZE - 20)), int(rng.integers(20, SIZE - 20)))
                axes = (int(rng.integers(3, 30)), int(rng.integers(3, 30)))
                angle = float(rng.uniform(0, 180))
                cv2.ellipse(masks[i], center, axes, angle, 0, 360, 1, thickness=-1)
            bump = cv2.GaussianBlur(masks[i].astype(np.float32), (0, 0), sigmaX=3.0)
            field += float(rng.uniform(0.05, 0.6)) * bump
        maps[i] = field + 0.02 * rng.random((SIZE, SIZE), dtype=np.float32)
    return maps, masks, classes


def maxrss_mb() -> float:
    # Linux reports kilobytes, macOS bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def run(n_images: int, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    maps, masks, classes = make_data(n_images)
    gen_s = time.perf_counter() - t0
    normal = np.flatnonzero(~masks.any(axis=(1, 2)))[:50]
    threshold = threshold_from_normal(maps[normal], "quantile", 0.999)

    rss_before = maxrss_mb()
    t0 = time.perf_counter()
    result = evaluate(maps, masks, classes, threshold=threshold)
    wall_s = time.perf_counter() - t0
    rss_after = maxrss_mb()

    tracemalloc.start()
    t0 = time.perf_counter()
    traced = evaluate(maps, masks, classes, threshold=threshold)
    traced_s = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Deterministic: both runs must agree exactly (json also compares NaN sensibly).
    assert json.dumps(traced) == json.dumps(result)

    report = {
        "images": n_images,
        "classes": len(set(classes)),
        "size": [SIZE, SIZE],
        "pixels": int(maps.size),
        "anomalous_images": int(masks.any(axis=(1, 2)).sum()),
        "input_mb": round((maps.nbytes + masks.nbytes) / 2**20, 1),
        "generate_s": round(gen_s, 2),
        "evaluate_wall_s": round(wall_s, 2),
        "evaluate_wall_s_tracemalloc": round(traced_s, 2),
        "tracemalloc_peak_mb": round(peak / 2**20, 1),
        "maxrss_before_mb": round(rss_before, 1),
        "maxrss_after_mb": round(rss_after, 1),
        "maxrss_delta_mb": round(rss_after - rss_before, 1),
        "mean": {k: round(v, 4) for k, v in result["mean"].items()},
        "nan_classes": nan_classes(result),
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
    }
    write_results(out_dir, "metrics", report, markdown(report))
    return report


def markdown(r: dict) -> str:
    rows = [
        ("images / classes", f"{r['images']} / {r['classes']}"),
        ("pixels", f"{r['pixels'] / 1e6:.1f} M ({r['size'][0]}x{r['size'][1]})"),
        ("input (maps float32 + masks uint8)", f"{r['input_mb']} MB"),
        ("evaluate wall time", f"{r['evaluate_wall_s']} s"),
        ("evaluate wall time under tracemalloc", f"{r['evaluate_wall_s_tracemalloc']} s"),
        ("tracemalloc peak (numpy allocations in evaluate)", f"{r['tracemalloc_peak_mb']} MB"),
        ("ru_maxrss before -> after", f"{r['maxrss_before_mb']} -> {r['maxrss_after_mb']} MB"),
        ("ru_maxrss delta during evaluate", f"{r['maxrss_delta_mb']} MB"),
    ]
    m = r["machine"]
    lines = [
        "# edgeas.metrics.evaluate benchmark",
        "",
        f"Synthetic MVTec-sized set; Python {m['python']}, numpy {m['numpy']}, "
        f"{m['cpu_count']} CPUs ({m['cpu']}). Generated by `benchmarks/metrics_bench.py`.",
        "",
        "| quantity | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "Mean metrics on the synthetic set (sanity only, not model quality):",
        "",
        "| " + " | ".join(r["mean"]) + " |",
        "|" + "---|" * len(r["mean"]),
        "| " + " | ".join(f"{v:.4f}" for v in r["mean"].values()) + " |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1725, help="number of maps (default 1725)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="output dir"
    )
    args = parser.parse_args()
    if args.images < N_CLASSES:
        parser.error(f"--images must be at least {N_CLASSES}")
    report = run(args.images, args.out)
    print(markdown(report))


if __name__ == "__main__":
    main()
