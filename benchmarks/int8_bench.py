"""CPU latency of FP32 vs INT8 (ONNX Runtime QOperator and Q/DQ) vs PyTorch eager, and the
accuracy-gate numbers of `edgeas calibrate`, for the tiny and unias-lite presets.

    python benchmarks/int8_bench.py [--presets tiny,unias-lite] [--runs 20] [--images 40]
                                    [--out benchmarks/results] [--max-wait 300] [--work DIR]

Per preset: the untrained model (random weights, backbone included: dense kernels take
the same time whatever the values) is exported to ONNX with `edgeas export`'s own code,
calibrated with `edgeas calibrate` (entropy) on normal images of the built-in inspection
set, and then four runners are timed on the same preprocessed image, batch 1:
PyTorch eager (the exported graph's own module, torch.inference_mode), ONNX Runtime FP32,
INT8 QOperator (model.int8.cpu.onnx) and INT8 Q/DQ (model.int8.onnx). Runs are
interleaved (rounds of 5 calls of each runner in turn) so that load changes on this
shared machine hit all four alike; the ratios are of medians measured in that same loop.
Before timing, the script waits (--max-wait) for the 1-minute load average to drop
below 1.0 and records the load before and after.
Threads: ONNX Runtime intra-op 2 / inter-op 1, torch 2 (the machine has 2 cores).

Accuracy: the gate numbers are the worst per-image cosine of INT8 vs FP32 (both under
ONNX Runtime) of each per-level map and of the anomaly map on the held-out normal images,
as `edgeas calibrate` reports them. Random weights make no anomaly maps worth a pAP, so
no pAP is reported here (tests/test_calibrate.py measures pAP on a trained model).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import torch
from publish import write_results

from edgeas.calibration.command import CalibrateOptions, calibrate_command, output_paths
from edgeas.export.command import random_init_model
from edgeas.export.onnx_export import export_model
from edgeas.export.torch_graph import ExportGraph
from edgeas.ort import open_session
from edgeas.preprocess import preprocess_bgr
from edgeas.train.synth import CLASSES, make_normal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import LoadGate, loadavg, machine_facts  # noqa: E402

THREADS = 2
MIN_RUNS = 20
WARMUP = 3
BLOCK = 5  # calls of one runner in a row before the next runner's turn
SEED = 0
RUNNERS = ("torch_eager", "ort_fp32", "ort_int8_qoperator", "ort_int8_qdq")


def ort_session(path: Path) -> ort.InferenceSession:
    return open_session(path, threads=THREADS, inter_threads=1, quiet=True)


def normal_images(folder: Path, count: int, size: int) -> Path:
    """`count` normal images of the built-in set, the classes taken in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    classes = sorted(CLASSES)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), make_normal(classes[i % len(classes)], size, rng))
    return folder


def time_runners(runners: dict[str, Any], runs: int) -> dict[str, list[float]]:
    """`runs` timed calls per runner, in rounds of BLOCK calls of each runner in turn:
    load changes hit every runner alike, and a runtime's worker threads, which spin for
    a while after a call, rarely overlap the next runner's first call only."""
    for call in runners.values():
        for _ in range(WARMUP):
            call()
    times: dict[str, list[float]] = {name: [] for name in runners}
    while len(times[next(iter(times))]) < runs:
        for name, call in runners.items():
            for _ in range(BLOCK):
                start = time.perf_counter()
                call()
                times[name].append(1000.0 * (time.perf_counter() - start))
    return times


def eager_graph(model, record) -> torch.nn.Module:
    """The PyTorch side of the comparison: the exported graph's own module, in eval mode."""
    return ExportGraph(model, False, list(record.aggregation.blur)).eval()


def bench_preset(preset: str, work: Path, runs: int, images: int, budget_s: float) -> dict:
    folder = work / preset
    folder.mkdir(parents=True, exist_ok=True)
    model, record = random_init_model(preset)
    start = time.perf_counter()
    exported = export_model(model, record, batch=1, images=2)
    fp32 = folder / "model.onnx"
    fp32.write_bytes(exported.model.SerializeToString())
    export_s = time.perf_counter() - start
    size = int(record.preprocessing.input_size[0])
    data = normal_images(folder / "normal", images, size)

    start = time.perf_counter()
    int8 = folder / "model.int8.onnx"
    report = calibrate_command(fp32, data, int8, CalibrateOptions(method="entropy",
                                                                  allow_drop=True))
    calibrate_s = time.perf_counter() - start
    files = output_paths(int8)

    recipe = record.preprocessing
    frame = make_normal(sorted(CLASSES)[0], size, np.random.default_rng(SEED + 1))
    x = preprocess_bgr(frame, recipe)[None]
    graph = eager_graph(model, record)
    xt = torch.from_numpy(x.copy())
    sessions = {"ort_fp32": ort_session(fp32),
                "ort_int8_qoperator": ort_session(files["qoperator"]),
                "ort_int8_qdq": ort_session(files["qdq"])}

    def torch_call() -> None:
        with torch.inference_mode():
            graph(xt)

    runners = {"torch_eager": torch_call}
    for name, sess in sessions.items():
        runners[name] = (lambda s=sess: s.run(None, {"image": x}))
    load = LoadGate(budget_s).wait()  # a fresh budget per preset
    times = time_runners(runners, runs)
    load["load_after"] = loadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    p90 = {k: float(np.percentile(v, 90)) for k, v in times.items()}
    gate = report["gate"]["variants"]
    return {
        "backbone": record.model.backbone,
        "latency_ms": {k: {"median": round(med[k], 2), "p90": round(p90[k], 2),
                           "runs": len(times[k])} for k in RUNNERS},
        "ratios": {
            "ort_fp32_over_int8_qoperator": round(med["ort_fp32"] / med["ort_int8_qoperator"], 3),
            "ort_fp32_over_int8_qdq": round(med["ort_fp32"] / med["ort_int8_qdq"], 3),
            "torch_over_ort_fp32": round(med["torch_eager"] / med["ort_fp32"], 3),
            "torch_over_int8_qoperator": round(med["torch_eager"] / med["ort_int8_qoperator"], 3),
        },
        "gate": {fmt: {"images": v["held_out"]["images"],
                       "cosine_min": {k: round(c, 5) for k, c in
                                      v["held_out"]["cosine_min"].items()},
                       "cosine_mean": {k: round(c, 5) for k, c in
                                       v["held_out"]["cosine_mean"].items()}}
                 for fmt, v in gate.items()},
        "gate_passed": report["gate"]["passed"],
        "gate_failures": report["gate"]["failures"],
        "calibration": {"images": report["calibration"]["images"],
                        "held_out": report["calibration"]["held_out"], "method": "entropy",
                        "tensors": report["ranges"]["tensors"],
                        "seconds": round(calibrate_s, 1)},
        "export_seconds": round(export_s, 1),
        "file_mb": {name: round(path.stat().st_size / 2**20, 2) for name, path in
                    (("fp32", fp32), ("int8_qdq", files["qdq"]),
                     ("int8_qoperator", files["qoperator"]))},
        "load": load,
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# INT8 on CPU: latency and accuracy gate",
        "",
        f"Produced by `{result['command']}` (niceness {result.get('niceness', 0)}).",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, shared with other jobs; Python "
        f"{m['python']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}. Threads: ONNX "
        f"Runtime intra-op {THREADS} / inter-op 1, torch {THREADS}. Batch 1, one image, "
        f"runs interleaved across the four runners in rounds of {BLOCK}; random weights "
        "(latency does not depend on them).",
        "",
        "## Latency (ms, median / p90)",
        "",
        "| preset | PyTorch eager | ORT FP32 | ORT INT8 QOperator | ORT INT8 Q/DQ | FP32 / "
        "QOperator | FP32 / Q/DQ | torch / ORT FP32 | runs | load 1 min before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in result["presets"].items():
        lat, r = p["latency_ms"], p["ratios"]
        cells = [f"{lat[k]['median']:.1f} / {lat[k]['p90']:.1f}" for k in RUNNERS]
        before = p["load"]["load_at_start"][:1] or ["-"]
        after = p["load"]["load_after"][:1] or ["-"]
        lines.append(
            f"| {name} | {' | '.join(cells)} | {r['ort_fp32_over_int8_qoperator']:.2f}x | "
            f"{r['ort_fp32_over_int8_qdq']:.2f}x | {r['torch_over_ort_fp32']:.2f}x | "
            f"{lat['ort_fp32']['runs']} (+{WARMUP} warm-up) | {before[0]} -> {after[0]}"
            f"{'' if p['load']['quiet_at_start'] else ' (busy)'} |")
    lines += [
        "",
        "## Accuracy gate (INT8 vs FP32, ONNX Runtime, held-out normal images)",
        "",
        "Worst per-image cosine of each per-level map and of the anomaly map (reference "
        "aggregation); `edgeas calibrate` fails below 0.95 on the anomaly map.",
        "",
        "| preset | model | images | res1 | res2 | res3 | res4 | anomaly map | gate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in result["presets"].items():
        for fmt, g in p["gate"].items():
            cos = list(g["cosine_min"].values())
            lines.append(f"| {name} | {fmt} | {g['images']} | "
                         + " | ".join(f"{c:.4f}" for c in cos)
                         + f" | {'passed' if p['gate_passed'] else 'failed'} |")
    lines += [
        "",
        "## Calibration",
        "",
        "| preset | images (+ held out) | tensors | calibrate s | FP32 / Q/DQ / QOperator MB |",
        "|---|---|---|---|---|",
    ]
    for name, p in result["presets"].items():
        c, f = p["calibration"], p["file_mb"]
        lines.append(f"| {name} | {c['images']} (+{c['held_out']}) | {c['tensors']} | "
                     f"{c['seconds']} | {f['fp32']} / {f['int8_qdq']} / {f['int8_qoperator']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,unias-lite")
    parser.add_argument("--runs", type=int, default=MIN_RUNS)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--max-wait", type=float, default=300.0,
                        help="seconds to wait per preset for a quiet machine before timing")
    parser.add_argument("--work", type=Path, default=None, help="keep the models here")
    args = parser.parse_args()
    if args.runs < MIN_RUNS:
        parser.error(f"--runs must be >= {MIN_RUNS}")
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    command = "python benchmarks/int8_bench.py " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="edgeas-int8-") as tmp:
        work = args.work or Path(tmp)
        presets = {p: bench_preset(p, work, args.runs, args.images, args.max_wait)
                   for p in args.presets.split(",")}
    result = {
        "command": command.strip(),
        "niceness": os.nice(0),
        "machine": {**machine_facts(), "onnxruntime": ort.__version__},
        "threads": {"onnxruntime_intra_op": THREADS, "onnxruntime_inter_op": 1,
                    "torch": THREADS},
        "presets": presets,
    }
    write_results(args.out, "int8", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
