"""Precision variants of one trained model under ONNX Runtime on this CPU (issue 21): FP32,
typed FP16, INT8 Q/DQ and QOperator from `edgeas calibrate`'s ranges (entropy, percentile,
minmax), the mixed-precision plan of `edgeas calibrate --mixed-precision`, and NVIDIA
Model Optimizer's ONNX PTQ (Q/DQ) on the same calibration images.

    python benchmarks/precision.py --name NAME --onnx model.onnx --images DIR --eval-data DIR
        [--num 256] [--methods entropy,percentile,minmax] [--plan-method entropy|auto]
        [--sensitivity] [--rank-held 16] [--rank-eval 32] [--max-float-blocks 6]
        [--modelopt-python PY] [--modelopt-methods entropy,max]
        [--latency-runs 20] [--work DIR] [--out benchmarks/results]

Images as `edgeas calibrate` takes them: up to --num normal images of --images, one in 8
held out (never calibrated on). Per variant: pAP, DSC, AUROCs (edgeas.metrics) and the
decision metrics (edgeas.decisions, at the model's threshold and min_area) on the test
split of --eval-data, with the FP32 anomaly maps as reference: change in points; the
worst and mean per-image cosine of the anomaly map to FP32's on the held-out images;
median ONNX Runtime CPU latency, batch 1, 2 threads, runs interleaved across variants.
Targets (issue 21): Q/DQ within 1.0 pAP and worst map cosine >= 0.95; QOperator within
1.0 pAP. One model per call; results merge into precision.json by --name and
precision.md is rewritten from all of them (precision_report.py).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import loadavg, machine_facts  # noqa: E402
from precision_report import write  # noqa: E402

from edgeas import calibimages  # noqa: E402
from edgeas.artifacts import read_onnx_record, sha256_file  # noqa: E402
from edgeas.calibration import images as im  # noqa: E402
from edgeas.calibration import mixed as mx  # noqa: E402
from edgeas.calibration import quantize as qz  # noqa: E402
from edgeas.calibration import ranges as rg  # noqa: E402
from edgeas.calibration.command import _batches, _static_batch  # noqa: E402
from edgeas.calibration.scoring import Reference, Score, Targets  # noqa: E402
from edgeas.decisions import decision_metrics  # noqa: E402
from edgeas.ort import open_session  # noqa: E402

THREADS = 2
console = Console(stderr=True)
# Each finished variant is kept in WORK/NAME/<sha of the ONNX>/ (its entry and its model),
# so that an interrupted run on this shared machine resumes instead of starting over.
CACHE: list[Path] = []


def _cached(name: str) -> tuple[Path, Path]:
    slug = name.replace("/", "_").replace("+", "_")
    return CACHE[0] / f"{slug}.json", CACHE[0] / f"{slug}.onnx"


def session(model_bytes: bytes, threads: int | None = None):
    return open_session(model_bytes, threads=threads, inter_threads=1 if threads else None,
                        extra="export")


def decisions(ref: Reference, maps: np.ndarray) -> dict[str, float]:
    record = ref.record
    # the maps are the record's own aggregation (Reference), the one the threshold was fitted on
    threshold = record.threshold.value if record.threshold.is_set else None
    result = decision_metrics(maps, ref.eval_masks, ref.eval_classes, threshold,
                              record.min_area)
    return {k: float(v) for k, v in result["mean"].items()}


def evaluate(name: str, model, ref: Reference, targets: Targets, extra: dict[str, Any],
             variants: dict[str, Any], blobs: dict[str, bytes]) -> None:
    entry_path, model_path = _cached(name)
    if entry_path.exists() and model_path.exists():
        variants[name] = json.loads(entry_path.read_text())
        blobs[name] = model_path.read_bytes()
        console.print(f"{name}: from {entry_path}")
        return
    if callable(model):  # made only when not cached
        model = model()
    t0 = time.perf_counter()
    blob = model.SerializeToString()
    score: Score = ref.score(session(blob), targets, keep_maps=True)
    entry = {**score.to_json(), **extra, "score_seconds": round(time.perf_counter() - t0, 1)}
    if score.eval_maps is not None:
        entry["decisions"] = decisions(ref, score.eval_maps)
    variants[name] = entry
    blobs[name] = blob
    model_path.write_bytes(blob)
    entry_path.write_text(json.dumps(entry))
    cos = score.cosine_min["anomaly_map"]
    pap = "" if score.pap_drop is None else f" pAP {-score.pap_drop:+.2f}"
    console.print(f"{name}: worst map cosine {cos}{pap}; {'; '.join(score.problems) or 'ok'}")


def latency(blobs: dict[str, bytes], image: np.ndarray, runs: int) -> dict[str, dict]:
    """Median/p90 ms per variant, batch 1, in rounds of 5 calls of each variant in turn."""
    sessions = {k: session(b, THREADS) for k, b in blobs.items()}
    feeds = {k: {s.get_inputs()[0].name: image} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(3):
            s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    load = loadavg()
    while len(times[next(iter(times))]) < runs:
        for k, s in sessions.items():
            for _ in range(5):
                t0 = time.perf_counter()
                s.run(None, feeds[k])
                times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: {"median_ms": round(statistics.median(v), 1),
                "p90_ms": round(float(np.percentile(v, 90)), 1), "runs": len(v),
                "load_before": load, "load_after": loadavg()} for k, v in times.items()}


def modelopt(a, onnx_path: Path, calib: np.ndarray, work: Path, method: str) -> tuple[Any, dict]:
    npy = work / "calib.npy"
    if not npy.exists():
        np.save(npy, calib)
    out = work / f"modelopt.{method}.onnx"
    if _cached(f"modelopt-qdq/{method}")[0].exists():
        return (lambda: onnx.load(str(out))), {}
    cmd = [a.modelopt_python, str(Path(__file__).parent / "modelopt_ptq.py"), "--onnx",
           str(onnx_path), "--calib", str(npy), "-o", str(out), "--method", method]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip().splitlines()[-1] if run.stderr else "failed")
    info = json.loads(run.stdout.strip().splitlines()[-1])
    model = onnx.load(str(out))
    info["qdq_problems"] = qz.qdq_problems(model)[:5]
    info["qdq_nodes"] = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                            for n in model.graph.node)
    return (lambda: model), info


def plan_ranges(method: str, ranges: dict[str, rg.Ranges], variants: dict[str, Any]
                ) -> dict[str, rg.Ranges]:
    """{format: ranges} the plan starts from: --plan-method's, or with `auto` each format's
    method of least damage (as `edgeas calibrate --method auto` chooses, from the same
    scores: the variants already measured)."""
    if method != "auto":
        return {fmt: ranges[method] for fmt in qz.FORMATS}
    out = {}
    for fmt in qz.FORMATS:
        targets = Targets(0.95, 1.0, fmt == "qdq")

        def damage(m: str, f: str = fmt, t: Targets = targets) -> float:
            e = variants[f"{f}/{m}"]
            score = Score(e["held_out_images"], e["cosine_min"], e["cosine_mean"],
                          e["nonfinite_images"], e["metrics"], e["delta_points"])
            return score.damage(t)

        out[fmt] = ranges[min(ranges, key=damage)]  # ties: the first in --methods
    return out


def cached_ranges(model, calib: np.ndarray, method: str, work: Path) -> rg.Ranges:
    path = work / f"ranges.{method}.json"
    if path.exists():
        return rg.Ranges(**json.loads(path.read_text()))
    ranges = rg.collect(model, _batches(calib, _static_batch(model)), method,
                        lambda b: session(b))
    path.write_text(json.dumps(ranges.__dict__))
    return ranges


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--eval-data", type=Path, required=True)
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--methods", default="entropy,percentile,minmax")
    p.add_argument("--plan-method", default="entropy", help="a method, or auto: per format "
                   "the one of least damage")
    p.add_argument("--sensitivity", action="store_true", help="rank blocks even if passing")
    p.add_argument("--max-float-blocks", type=int, default=6)
    p.add_argument("--rank-held", type=int, default=mx.RANK_HELD,
                   help="held-out images of the block ranking (calibrate's default)")
    p.add_argument("--rank-eval", type=int, default=mx.RANK_EVAL,
                   help="test images of the block ranking (calibrate's default)")
    p.add_argument("--modelopt-python", default=None)
    p.add_argument("--modelopt-methods", default="entropy,max")
    p.add_argument("--latency-runs", type=int, default=20)
    p.add_argument("--work", type=Path, default=Path("/tmp/edgeas-precision"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    a = p.parse_args()
    start = time.perf_counter()
    work = a.work / a.name / sha256_file(a.onnx)[:12]
    work.mkdir(parents=True, exist_ok=True)
    CACHE.append(work)
    record = read_onnx_record(a.onnx)
    model = onnx.load(str(a.onnx))
    paths = calibimages.list_images(a.images, a.num)
    tensors = im.load_tensors(paths, record.preprocessing)
    keep, hold = im.split_holdout(len(paths))
    fp32 = session(model.SerializeToString())
    ref = mx.build_reference(record, fp32, tensors[hold], a.eval_data, console)
    qdq_t, cpu_t = Targets(0.95, 1.0, True), Targets(0.95, 1.0, False)
    variants: dict[str, Any] = {}
    blobs: dict[str, bytes] = {"fp32": model.SerializeToString()}
    failures: dict[str, str] = {}
    fp32_maps = ref.ref_eval
    fp32_entry = {"metrics": ref.fp32_metrics, "decisions": decisions(ref, fp32_maps)}

    from edgeas.export.fp16 import convert_to_fp16

    evaluate("fp16", lambda: convert_to_fp16(model)[0], ref, qdq_t, {"format": "fp16"},
             variants, blobs)
    ranges = {}
    for method in a.methods.split(","):
        t0 = time.perf_counter()
        ranges[method] = cached_ranges(model, tensors[keep], method, work)
        secs = round(time.perf_counter() - t0, 1)
        for fmt, targets in (("qdq", qdq_t), ("qoperator", cpu_t)):
            evaluate(f"{fmt}/{method}",
                     lambda f=fmt, m=method: qz.quantize(model, ranges[m], f), ref, targets,
                     {"format": fmt, "method": method, "ranges_seconds": secs}, variants, blobs)
    opts = mx.MixedOptions(sensitivity=a.sensitivity, mixed_precision=True,
                           max_float_blocks=a.max_float_blocks, rank_held=a.rank_held,
                           rank_eval=a.rank_eval)
    t0 = time.perf_counter()
    sens_path = work / "sensitivity.json"
    if sens_path.exists():
        sens, plans = json.loads(sens_path.read_text()), {}
    else:
        plans, sens = mx.run(model, plan_ranges(a.plan_method, ranges, variants), ref, opts,
                             session, console)
        sens_path.write_text(json.dumps(sens))
    plan_s = round(time.perf_counter() - t0, 1)
    for fmt, entry in sens["formats"].items():
        chosen = entry.get("plan") or {}
        if chosen.get("float_blocks"):  # from this run's plans, or cached with the report
            method = entry.get("method", a.plan_method)
            evaluate(f"{fmt}/{method}+mixed", plans[fmt].model if plans else None, ref,
                     qdq_t if fmt == "qdq" else cpu_t,
                     {"format": fmt, "method": method,
                      "float_blocks": chosen["float_blocks"],
                      "float_nodes": chosen["float_nodes"], "plan_seconds": plan_s},
                     variants, blobs)
    if a.modelopt_python:
        for method in a.modelopt_methods.split(","):
            try:
                mo, info = modelopt(a, a.onnx, tensors[keep], work, method)
            except Exception as exc:  # reported, not fatal: the comparison says why
                failures[f"modelopt/{method}"] = str(exc)
                console.print(f"[red]modelopt {method} failed:[/] {exc}")
                continue
            evaluate(f"modelopt-qdq/{method}", mo, ref, qdq_t,
                     {"format": "qdq", "method": f"modelopt {method}", **info}, variants, blobs)
    lat = latency(blobs, tensors[hold][:1], a.latency_runs)
    fp32_entry["latency"] = lat.pop("fp32")
    for k, v in lat.items():
        variants[k]["latency"] = v
    result = {
        "onnx": str(a.onnx), "sha256": sha256_file(a.onnx), "preset": record.model.preset,
        "classes": list(record.model.classes), "images": str(a.images),
        "eval_data": str(a.eval_data), "calibration_images": len(keep), "held_out": len(hold),
        "eval_images": len(ref.eval_images), "fp32": fp32_entry, "variants": variants,
        "sensitivity": sens, "failures": failures, "threads": THREADS,
        "command": "python benchmarks/precision.py " + shlex.join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - start, 1),
    }
    json_path = a.out / "precision.json"
    old = json.loads(json_path.read_text()) if json_path.exists() else {"models": {}}
    old["models"][a.name] = result
    import onnxruntime

    old["machine"] = {**machine_facts(), "onnxruntime": onnxruntime.__version__}
    write(a.out, old)


if __name__ == "__main__":
    main()
