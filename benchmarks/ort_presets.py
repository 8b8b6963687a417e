"""ONNX Runtime CPU latency of whole presets (backbone + decoder), all timed in one loop,
with each preset's ratio to the reference preset (issue 7: unias-edge vs unias-lite).

    python benchmarks/ort_presets.py [--presets unias-lite,unias-edge,unias-b4,tiny]
                                     [--runs 20] [--max-wait 600] [--out benchmarks/results]

The first preset is the reference. Each preset's untrained model (random weights: dense
kernels take the same time whatever the values, and B4 has no bundled weights) is
exported with `edgeas export`'s own code (FP32, batch 1, the deployed graph: per-level
maps plus the aggregated anomaly map) and run by ONNX Runtime on the CPU, intra-op 2 /
inter-op 1 threads. The sessions are timed interleaved (int8_bench.py's rounds of 5 calls
of each in turn), so a change of load on this shared machine hits every preset alike and
the ratios are of medians from the same loop. Before timing, the script waits
(--max-wait) for the 1-minute load average to drop below 1.0 and records the load.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from int8_bench import BLOCK, MIN_RUNS, SEED, THREADS, WARMUP, ort_session, time_runners
from machine import LoadGate, loadavg, machine_facts
from publish import write_results

from edgeas.export.command import random_init_model
from edgeas.export.onnx_export import export_model
from edgeas.preprocess import preprocess_bgr
from edgeas.train.synth import CLASSES, make_normal


def export_preset(preset: str, folder: Path) -> tuple[Path, np.ndarray]:
    """model.onnx of the preset and one preprocessed normal image for it."""
    model, record = random_init_model(preset)
    exported = export_model(model, record, batch=1, images=2)
    path = folder / f"{preset}.onnx"
    path.write_bytes(exported.model.SerializeToString())
    size = int(record.preprocessing.input_size[0])
    frame = make_normal(sorted(CLASSES)[0], size, np.random.default_rng(SEED + 1))
    return path, preprocess_bgr(frame, record.preprocessing)[None]


def latency_summary(times: list[float]) -> dict[str, Any]:
    ms = np.asarray(times)
    return {"median": round(float(np.median(ms)), 1), "p90": round(float(np.percentile(ms, 90)), 1),
            "runs": len(times)}


def run(presets: list[str], runs: int, max_wait: float, work: Path) -> dict[str, Any]:
    calls, sizes = {}, {}
    for preset in presets:
        print(f"[ort_presets] exporting {preset} ...", file=sys.stderr, flush=True)
        path, image = export_preset(preset, work)
        session = ort_session(path)
        name = session.get_inputs()[0].name
        calls[preset] = lambda s=session, n=name, x=image: s.run(None, {n: x})
        sizes[preset] = round(path.stat().st_size / 2**20, 1)
    load = LoadGate(max_wait).wait()
    print("[ort_presets] timing ...", file=sys.stderr, flush=True)
    times = time_runners(calls, runs)
    load["load_after"] = loadavg()
    reference = presets[0]
    # ratio per round of BLOCK calls, so that each ratio compares neighbouring minutes
    blocks = {p: [statistics.median(t[i : i + BLOCK]) for i in range(0, len(t), BLOCK)]
              for p, t in times.items()}
    rows = {}
    for preset in presets:
        per_round = [a / b for a, b in zip(blocks[preset], blocks[reference], strict=True)]
        rows[preset] = {**latency_summary(times[preset]), "onnx_mb": sizes[preset],
                        "ratio_to_reference": round(statistics.median(per_round), 3)}
    return {"reference": reference, "presets": rows, "load": load}


def markdown(result: dict[str, Any]) -> str:
    m, ref, load = result["machine"], result["reference"], result["load"]
    lines = [
        "# ONNX Runtime CPU latency of the presets, one loop", "",
        f"Produced by `{result['command']}`.", "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, shared with other jobs; "
        f"onnxruntime {m['onnxruntime']}. FP32 ONNX from `edgeas export` (random weights), "
        f"batch 1, ONNX Runtime CPU, intra-op {THREADS} / inter-op 1 threads; the presets "
        f"timed interleaved in rounds of {BLOCK} calls (+{WARMUP} warm-up each). Ratio: "
        f"median over rounds of (this preset / {ref}) within the round. Load (1 min) "
        f"{(load['load_at_start'] or ['-'])[0]} before, {(load['load_after'] or ['-'])[0]} "
        f"after{'' if load['quiet_at_start'] else ' (the machine was busy at the start)'}.",
        "", f"| preset | median ms | p90 ms | x {ref} | runs | ONNX MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["presets"].items():
        lines.append(f"| {name} | {r['median']} | {r['p90']} | {r['ratio_to_reference']:.3f} "
                     f"| {r['runs']} | {r['onnx_mb']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="unias-lite,unias-edge,unias-b4,tiny",
                        help="first = reference")
    parser.add_argument("--runs", type=int, default=MIN_RUNS)
    parser.add_argument("--max-wait", type=float, default=600.0,
                        help="seconds to wait for a quiet machine before timing")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.runs < MIN_RUNS or args.runs % BLOCK:
        parser.error(f"--runs must be >= {MIN_RUNS} and a multiple of {BLOCK}")
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    with tempfile.TemporaryDirectory(prefix="edgeas-ort-") as tmp:
        result = run(presets, args.runs, args.max_wait, Path(tmp))
    result = {"command": "python benchmarks/ort_presets.py " + shlex.join(sys.argv[1:]),
              "machine": {**machine_facts(), "onnxruntime": ort.__version__}, **result}
    write_results(args.out, "ort_presets", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
