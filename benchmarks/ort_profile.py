"""Where ONNX Runtime spends a frame on the CPU: a per-operator profile of an FP32 model and
of its INT8 (QOperator) model (issue 16 part 1).

    python benchmarks/ort_profile.py --onnx unias-edge.onnx [--int8 unias-edge.int8.cpu.onnx]
        [--runs 30] [--warmup 5] [--top 12] [--name unias-edge] [--out benchmarks/results]

The models (random weights cost what trained ones do):
    edgeas export --config unias-edge --random-init -o unias-edge.onnx
    edgeas synth data --per-class 16 && edgeas calibrate --onnx unias-edge.onnx \
        --images data -o unias-edge.int8.onnx --allow-drop   # writes .int8.cpu.onnx too

ONNX Runtime's own profiler (`SessionOptions.enable_profiling`), the session set up as
the station's (`edgeas.ort.open_session`: all graph optimisations, 2 intra-op threads, 1
inter-op), batch 1, one preprocessed image of the built-in set. Node events of the warm-up
runs are dropped; per operator type: total kernel time per frame, share, node count. For
the INT8 model each executed node is counted as integer (QLinear*, *Integer, the
quantize/dequantize conversions) or float (everything else: what quantization left in
FP32), with the float share of time. Results merge into ort_profile.json by --name;
ort_profile.md is rewritten from all of them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import loadavg, machine_facts  # noqa: E402
from publish import write_results  # noqa: E402

THREADS = 2
INTEGER_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
               "MatMulInteger", "ConvInteger"}


# FP32 ops that the QOperator model runs as integer kernels (a constant-weight MatMul with
# its bias is a Gemm after ONNX Runtime's fusion), and those integer kernels
QUANTIZED_FP32_OPS = ("Conv", "Gemm")
INTEGER_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul")
TARGET_SPEEDUP = 1.8  # issue 16: INT8 >= 1.8x FP32 on unias-edge


def speedup_bound(fp32: dict[str, Any], int8: dict[str, Any],
                  target: float = TARGET_SPEEDUP) -> dict[str, float]:
    """What the profiles allow INT8 to gain over FP32 (Amdahl): the FP32 kernel time splits
    into what INT8 runs as integer kernels (Conv, Gemm) and the rest; with the integer
    kernels' measured speed-up over their float versions and conversions for free, the
    frame can gain at most `bound_measured`, and at most `bound_infinite` however fast they
    were; `needed_kernel_speedup`: what they would need for `target` (inf when the rest
    alone is too slow)."""
    def ms(profile: dict[str, Any], ops) -> float:
        return sum(o["ms_per_frame"] for o in profile["ops"] if o["op"] in ops)

    total = fp32["kernel_ms_per_frame"]
    quantized = ms(fp32, QUANTIZED_FP32_OPS)
    integer = ms(int8, INTEGER_KERNELS)
    rest = total - quantized
    kernel_speedup = quantized / integer if integer else float("inf")
    budget = total / target - rest
    return {
        "fp32_quantized_ms": round(quantized, 3), "fp32_rest_ms": round(rest, 3),
        "int8_kernel_ms": round(integer, 3), "kernel_speedup": round(kernel_speedup, 3),
        "bound_measured": round(total / (rest + quantized / kernel_speedup), 3),
        "bound_infinite": round(total / rest, 3) if rest > 0 else float("inf"),
        "target": target,
        "needed_kernel_speedup": round(quantized / budget, 2) if budget > 0 else float("inf"),
    }


def is_integer_op(op: str) -> bool:
    """Ops that compute on (or convert to/from) 8-bit integers."""
    return op in INTEGER_OPS or op.startswith("QLinear") or op.startswith("QGemm")


def profiled_session(path: Path, trace_dir: Path):
    """The station's session (edgeas.ort.open_session, 2 intra-op / 1 inter-op threads,
    the same optimisers) with ONNX Runtime's profiler on."""
    from edgeas.ort import open_session

    return open_session(path, threads=THREADS, inter_threads=1,
                        profile_prefix=str(trace_dir / path.stem))


def node_events(trace: list[dict[str, Any]], warmup: int) -> tuple[list[dict], int]:
    """Kernel events of the runs after `warmup`, and how many runs those are."""
    runs = sorted((e for e in trace if e.get("cat") == "Session"
                   and e.get("name") == "model_run"), key=lambda e: e["ts"])
    kept = runs[warmup:]
    if not kept:
        raise SystemExit(f"the profile has {len(runs)} runs, none after {warmup} warm-up")
    start = kept[0]["ts"]
    nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
             and e["ts"] >= start]
    return nodes, len(kept)


def summarise(nodes: list[dict], runs: int, frame_ms: list[float]) -> dict[str, Any]:
    per_op: dict[str, dict[str, float]] = defaultdict(lambda: {"us": 0.0, "nodes": set()})
    for e in nodes:
        op = e["args"]["op_name"]
        per_op[op]["us"] += float(e["dur"])
        per_op[op]["nodes"].add(e["name"])
    total_us = sum(v["us"] for v in per_op.values())
    ops = sorted(({"op": op, "ms_per_frame": v["us"] / runs / 1e3,
                   "share": v["us"] / total_us if total_us else 0.0,
                   "nodes": len(v["nodes"]), "integer": is_integer_op(op)}
                  for op, v in per_op.items()), key=lambda r: -r["ms_per_frame"])
    float_us = sum(v["us"] for op, v in per_op.items() if not is_integer_op(op))
    return {
        "runs": runs,
        "frame_ms_median": float(np.median(frame_ms)),
        "kernel_ms_per_frame": total_us / runs / 1e3,
        "nodes": sum(r["nodes"] for r in ops),
        "float_nodes": sum(r["nodes"] for r in ops if not r["integer"]),
        "float_share": float_us / total_us if total_us else 0.0,
        "ops": [{**r, "ms_per_frame": round(r["ms_per_frame"], 3),
                 "share": round(r["share"], 4)} for r in ops],
    }


def profile(path: Path, image: np.ndarray, runs: int, warmup: int) -> dict[str, Any]:
    import time

    with tempfile.TemporaryDirectory() as tmp:
        session = profiled_session(path, Path(tmp))
        feed = {session.get_inputs()[0].name: image}
        frame_ms = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            session.run(None, feed)
            if i >= warmup:
                frame_ms.append(1e3 * (time.perf_counter() - t0))
        trace = json.loads(Path(session.end_profiling()).read_text())
    nodes, kept = node_events(trace, warmup)
    return summarise(nodes, kept, frame_ms)


def test_image(path: Path) -> np.ndarray:
    from edgeas.artifacts import read_onnx_record
    from edgeas.preprocess import preprocess_bgr
    from edgeas.train.synth import CLASSES, make_normal

    record = read_onnx_record(path)
    size = int(record.preprocessing.input_size[0])
    frame = make_normal(sorted(CLASSES)[0], size, np.random.default_rng(1))
    return preprocess_bgr(frame, record.preprocessing)[None]


def markdown(report: dict[str, Any]) -> str:
    m = report.get("machine", {})
    lines = ["# ONNX Runtime on the CPU: where a frame's time goes (issue 16)", "",
             f"`benchmarks/ort_profile.py`: ONNX Runtime {m.get('onnxruntime', '')}'s profiler, "
             f"{m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} CPUs (shared: load "
             "average in each model's line), intra-op 2 / inter-op 1 threads, all graph "
             "optimisations, batch 1. ms per frame: summed kernel time of the operator "
             "type per run (its threads' work as ONNX Runtime times it); frame: median "
             "wall time of a run. Integer ops: QLinear*, *Integer and the quantize/"
             "dequantize conversions; the rest runs in float."]
    for name, r in report["models"].items():
        lines += ["", f"## {name}", "", f"`{r['command']}`", ""]
        for kind, p in r["profiles"].items():
            lines += [f"**{kind}** ({p['model']}): frame {p['frame_ms_median']:.1f} ms "
                      f"median over {p['runs']} runs, kernels {p['kernel_ms_per_frame']:.1f} "
                      f"ms, {p['nodes']} nodes executed"
                      + (f", {p['float_nodes']} of them float ({100 * p['float_share']:.0f}%"
                         " of kernel time)" if kind != "fp32" else "")
                      + f"; load {p['load_before']} -> {p['load_after']}.", "",
                      "| op | ms / frame | share | nodes |", "|---|---|---|---|"]
            for op in p["ops"][: r["top"]]:
                tag = "" if kind == "fp32" or op["integer"] else " (float)"
                lines.append(f"| {op['op']}{tag} | {op['ms_per_frame']:.2f} | "
                             f"{100 * op['share']:.1f}% | {op['nodes']} |")
            rest = p["ops"][r["top"]:]
            if rest:
                lines.append(f"| {len(rest)} other op types | "
                             f"{sum(o['ms_per_frame'] for o in rest):.2f} | "
                             f"{100 * sum(o['share'] for o in rest):.1f}% | "
                             f"{sum(o['nodes'] for o in rest)} |")
            lines.append("")
        b = r.get("bound")
        if b:
            lines += [f"**What INT8 can gain here** (Amdahl, conversions for free): Conv and "
                      f"Gemm take {b['fp32_quantized_ms']:.1f} ms of the FP32 kernel time, the "
                      f"rest {b['fp32_rest_ms']:.1f} ms; their integer kernels run "
                      f"{b['kernel_speedup']:.2f}x faster ({b['int8_kernel_ms']:.1f} ms), so "
                      f"INT8 can be at most {b['bound_measured']:.2f}x FP32, and "
                      f"{b['bound_infinite']:.2f}x with infinitely fast integer kernels; "
                      f"{b['target']}x would need them {b['needed_kernel_speedup']}x faster "
                      "than their float versions.", ""]
    return "\n".join(lines).rstrip() + "\n"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--int8", type=Path, default=None, help="its QOperator model")


def models_given(a: argparse.Namespace) -> list[tuple[str, Path]]:
    """(kind, path) of the FP32 model and, when given, its INT8 one; exits naming a
    missing file."""
    for path in (a.onnx, a.int8):
        if path is not None and not path.is_file():
            raise SystemExit(f"no such model file: {path}")
    return [(kind, path) for kind, path in (("fp32", a.onnx), ("int8 QOperator", a.int8))
            if path is not None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p)
    p.add_argument("--name", default=None, help="the results' key (default: the file stem)")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    a = p.parse_args()
    models = models_given(a)
    image = test_image(a.onnx)
    profiles = {}
    for kind, path in models:
        before = loadavg()
        result = profile(path, image, a.runs, a.warmup)
        profiles[kind] = {"model": path.name, **result, "load_before": before,
                          "load_after": loadavg()}
        print(f"{kind}: {result['frame_ms_median']:.1f} ms/frame, top "
              + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in result["ops"][:4]))
    json_path = a.out / "ort_profile.json"
    report = json.loads(json_path.read_text()) if json_path.exists() else {"models": {}}
    import onnxruntime

    report["machine"] = {**machine_facts(), "onnxruntime": onnxruntime.__version__}
    bound = (speedup_bound(profiles["fp32"], profiles["int8 QOperator"])
             if len(profiles) == 2 else None)
    report["models"][a.name or a.onnx.stem] = {
        "profiles": profiles, "top": a.top, "bound": bound,
        "command": "python benchmarks/ort_profile.py " + shlex.join(sys.argv[1:])}
    write_results(a.out, "ort_profile", report, markdown(report))


if __name__ == "__main__":
    main()
