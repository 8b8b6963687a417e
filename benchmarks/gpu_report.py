"""gpu.md from gpu.json (benchmarks/gpu_check.py): what ran, on what, and the figures."""

from __future__ import annotations

import json
from typing import Any

MARK = {"ok": "ok", "failed": "**FAILED**", "skipped": "skipped", "dry": "dry run",
        "not run": "not run"}


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _machine(env: dict[str, Any]) -> list[str]:
    gpu = env.get("gpu") or {}
    libs = env.get("libraries", {})
    rows = [
        ("GPU", f"{gpu.get('name', 'none')} (compute capability "
                f"{gpu.get('compute_capability', '-')}, {gpu.get('memory', '-')})"),
        ("driver", gpu.get("driver", "-")),
        ("CUDA", f"PyTorch built for {env.get('torch_cuda', '-')}; nvcc: {env.get('nvcc')}"),
        ("Python", f"{env.get('python')} ({env.get('executable')}), {env.get('cpus')} CPUs"),
        ("libraries", ", ".join(f"{k} {v}" for k, v in sorted(libs.items())) or "-"),
        ("CUDA layers", ", ".join(f"{k}: {'importable' if v is None else v}"
                                  for k, v in (env.get("cuda_layers") or {}).items())),
        ("compute-sanitizer", " ".join(env.get("compute_sanitizer") or []) or "-"),
    ]
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _kernel(fig: dict[str, Any]) -> list[str]:
    lines = ["| frame | fused, end to end (ms) | fused kernel, launch + sync (ms) | "
             "naive PyTorch, end to end (ms) | naive PyTorch on the device (ms) | "
             "speed-up end to end | max abs diff vs numpy |", "|---|---|---|---|---|---|---|"]
    for size, row in fig.items():
        fused, naive = row.get("fused") or {}, row.get("torch_naive") or {}
        lines.append(f"| {size} | {_f(fused.get('end_to_end_ms'))} | "
                     f"{_f(fused.get('kernel_launch_sync_ms'))} | "
                     f"{_f(naive.get('end_to_end_ms'))} ({naive.get('device', '-')}) | "
                     f"{_f(naive.get('device_ms'))} | {_f(row.get('speedup_end_to_end'))} | "
                     f"{_f(row.get('max_abs_diff_vs_numpy'))} |")
    return lines


def _train(fig: dict[str, Any]) -> list[str]:
    lines = ["| preset | first loss, CPU FP32 | first loss, CUDA AMP | relative difference | "
             "batch | steps | images/s | peak GPU memory (GiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for preset, row in fig.items():
        lines.append(f"| {preset} | {_f(row.get('first_loss_cpu_fp32'), 6)} | "
                     f"{_f(row.get('first_loss_cuda_amp'), 6)} | "
                     f"{_f(row.get('relative_difference'))} | {row.get('batch')} | "
                     f"{row.get('steps')} | {_f(row.get('images_per_s'))} | "
                     f"{_f(row.get('peak_memory_gib'))} |")
    return lines


def _latency(fig: dict[str, Any]) -> list[str]:
    lines = ["| preset | batch 1 (ms) | batch 8 (ms) | batch 8 images/s |", "|---|---|---|---|"]
    for preset, row in fig.items():
        one, eight = row.get("batch_1") or {}, row.get("batch_8") or {}
        lines.append(f"| {preset} | {_f(one.get('ms'))} | {_f(eight.get('ms'))} | "
                     f"{_f(eight.get('images_per_s'))} |")
    return lines


TABLES = {"kernel": _kernel, "train": _train, "latency": _latency}


def markdown(data: dict[str, Any]) -> str:
    steps = data["steps"]
    env = next((s["figures"] for s in steps if s["name"] == "env"), {})
    kind = "DRY RUN on a CPU: the device parts were skipped" if data["dry"] else "on the GPU"
    out = [
        "# make gpu-check", "",
        f"{data['started']}, {kind}; {data['wall_s']:.0f} s in all; "
        f"overall: {'ok' if data['ok'] else '**FAILED**'}. Written by benchmarks/gpu_check.py "
        "(`make gpu-check`); the raw figures are in gpu.json beside this file.", "",
        "## Machine", "", *_machine(env), "",
        "## Steps", "", "| step | what | status | seconds | checks |", "|---|---|---|---|---|",
    ]
    for s in steps:
        good = sum(c["ok"] for c in s["checks"])
        out.append(f"| {s['name']} | {s['title']} | {MARK.get(s['status'], s['status'])} | "
                   f"{s['seconds']:.0f} | {good}/{len(s['checks'])} |")
    for s in steps:
        if s["name"] == "env":
            continue
        out += ["", f"## {s['name']}: {s['title']}", ""]
        out += [f"- {'ok' if c['ok'] else '**FAILED**'}: {c['name']} ({c['detail']})"
                for c in s["checks"]]
        out += [f"- note: {n}" for n in s["notes"]]
        if s["figures"]:
            table = TABLES.get(s["name"])
            out += ["", *(table(s["figures"]) if table else
                          ["```json", json.dumps(s["figures"], indent=1, default=str), "```"])]
    return "\n".join(out) + "\n"
