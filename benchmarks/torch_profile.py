"""Where ONNX Runtime's FP32 frame beats PyTorch eager's, by kind of work (issue 16 part 5:
ORT FP32 >= 2x PyTorch eager).

    python benchmarks/torch_profile.py --preset unias-edge --onnx unias-edge.onnx
        [--runs 10] [--warmup 3] [--out benchmarks/results]

PyTorch: the exported graph's own module (edgeas.export.torch_graph.ExportGraph around a
random-init model of --preset, as int8_bench.py times it), torch.inference_mode, 2
threads, torch.profiler's self CPU time per aten op. ONNX Runtime: ort_profile.py's
profile of --onnx (the same preset exported; random weights cost what trained ones do),
2 intra-op threads. Both are profiled one after the other in one process, on the same
preprocessed image, and their time split into convolutions, matrix products (linear
layers and the FFN), attention (products and softmax) and the rest (normalisations,
elementwise ops, copies and layout changes). The table gives each kind's ms per frame in
both and their ratio: ORT's overall ratio is the time-weighted mix of those.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
from publish import write_results

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import loadavg, machine_facts  # noqa: E402
from ort_profile import profile, test_image  # noqa: E402

THREADS = 2
KINDS = ("convolution", "matrix product", "attention", "rest")
TORCH_KINDS = {
    "convolution": ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward",
                    "aten::slow_conv_transpose2d", "aten::_convolution"),
    "matrix product": ("aten::addmm", "aten::mm", "aten::bmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_attention_math", "aten::_softmax"),
}
ORT_KINDS = {
    "convolution": ("Conv", "ConvTranspose", "FusedConv"),
    "matrix product": ("Gemm", "MatMul"),
    # the attention's products of two activations, fused with their transposes/scale
    "attention": ("FusedMatMul", "Softmax"),
}


def kind_of(op: str, table: dict[str, tuple[str, ...]]) -> str:
    return next((kind for kind, ops in table.items() if op in ops), "rest")


def by_kind(ms_per_op: dict[str, float], table: dict[str, tuple[str, ...]]) -> dict[str, float]:
    out = dict.fromkeys(KINDS, 0.0)
    for op, ms in ms_per_op.items():
        out[kind_of(op, table)] += ms
    return {k: round(v, 3) for k, v in out.items()}


def torch_profile(preset: str, image: np.ndarray, runs: int, warmup: int) -> dict[str, Any]:
    """Self CPU ms per frame of each aten op of the preset's exported graph module."""
    import time

    import torch
    from int8_bench import eager_graph
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profiler

    from edgeas.export.command import random_init_model

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model, record = random_init_model(preset)
    graph = eager_graph(model, record)
    x = torch.from_numpy(image.copy())
    frame_ms = []
    with torch.inference_mode():
        for _ in range(warmup):
            graph(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            graph(x)
            frame_ms.append(1e3 * (time.perf_counter() - t0))
        with torch_profiler(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                graph(x)
    ops = {e.key: e.self_cpu_time_total / 1e3 / runs for e in prof.key_averages()}
    return {"frame_ms_median": float(np.median(frame_ms)), "runs": runs,
            "self_ms_per_frame": round(sum(ops.values()), 3), "kinds": by_kind(ops, TORCH_KINDS)}


def compare(torch_kinds: dict[str, float], ort_kinds: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for kind in (*KINDS, "total"):
        t = sum(torch_kinds.values()) if kind == "total" else torch_kinds[kind]
        o = sum(ort_kinds.values()) if kind == "total" else ort_kinds[kind]
        rows.append({"kind": kind, "torch_ms": round(t, 3), "ort_ms": round(o, 3),
                     "torch_over_ort": round(t / o, 3) if o else None})
    return rows


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    t, o = report["torch"], report["ort_fp32"]
    lines = ["# PyTorch eager against ONNX Runtime FP32, by kind of work (issue 16)", "",
             f"`{report['command']}`", "",
             f"{m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} CPUs (shared), torch "
             f"{m.get('torch', '')} and ONNX Runtime {m.get('onnxruntime', '')}, 2 threads "
             "each, batch 1, one image; load "
             f"{report['load_before']} -> {report['load_after']}. PyTorch: self CPU time of "
             "its aten ops (torch.profiler); ONNX Runtime: kernel time of its ops (its "
             f"profiler). Frames: PyTorch {t['frame_ms_median']:.1f} ms, ONNX Runtime "
             f"{o['frame_ms_median']:.1f} ms (medians, unprofiled for PyTorch, profiled for "
             f"ONNX Runtime): {t['frame_ms_median'] / o['frame_ms_median']:.2f}x.", "",
             "| kind | PyTorch ms / frame | ONNX Runtime ms / frame | PyTorch / ORT |",
             "|---|---|---|---|"]
    for row in report["rows"]:
        ratio = f"{row['torch_over_ort']:.2f}x" if row["torch_over_ort"] else "-"
        lines.append(f"| {row['kind']} | {row['torch_ms']:.1f} | {row['ort_ms']:.1f} | "
                     f"{ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="unias-edge")
    p.add_argument("--onnx", type=Path, required=True, help="the preset's exported FP32 model")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    a = p.parse_args()
    if not a.onnx.is_file():
        raise SystemExit(f"no such model file: {a.onnx}")
    import onnxruntime
    import torch

    image = test_image(a.onnx)
    before = loadavg()
    ort_fp32 = profile(a.onnx, image, a.runs, a.warmup)
    torch_fp32 = torch_profile(a.preset, image, a.runs, a.warmup)
    ort_ms = {o["op"]: o["ms_per_frame"] for o in ort_fp32["ops"]}
    ort_kinds = by_kind(ort_ms, ORT_KINDS)
    report = {
        "machine": {**machine_facts(), "onnxruntime": onnxruntime.__version__,
                    "torch": torch.__version__},
        "command": "python benchmarks/torch_profile.py " + shlex.join(sys.argv[1:]),
        "preset": a.preset, "load_before": before, "load_after": loadavg(),
        "torch": torch_fp32,
        "ort_fp32": {"frame_ms_median": ort_fp32["frame_ms_median"],
                     "kernel_ms_per_frame": ort_fp32["kernel_ms_per_frame"],
                     "kinds": ort_kinds},
        "rows": compare(torch_fp32["kinds"], ort_kinds),
    }
    write_results(a.out, "torch_profile", report, markdown(report))
    print(markdown(report), file=sys.stderr)


if __name__ == "__main__":
    main()
