"""Which EfficientNet-Lite for the `unias-lite` preset: cost of Lite0, Lite1 and Lite2.

    python benchmarks/lite_choice.py [--runs 20] [--out benchmarks/results] [--max-wait 600]

For each variant, with its packaged ImageNet weights (pretrained=True): backbone
parameters, GFLOPs to the stride-16 tap (res4, where edgeas stops the backbone) at
224 x 224, CPU latency of the backbone alone, channels per tap, and the cost of the
whole preset (the backbone plus the reference decoder built for that backbone's
channels via load_config("unias-lite", {"backbone": {"name": NAME}})).

FLOPs and latency are measured as in model_bench.py (FlopCounterMode plus its CPU
attention formula; eval mode, torch.inference_mode, 2 threads, batch 1). The three
backbones are timed round-robin (one run of each in turn), so a burst of load from
other users of the machine hits all three alike instead of one variant's whole series.

No anomaly-detection accuracy is measured here (none is available yet); the ImageNet
accuracies quoted are the published ones, at each variant's own training resolution.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from flops import EXTRA_FORMULAS, count_params, flop_count, frozen, gflops
from machine import QUIET_LOAD, LoadGate, loadavg, machine_facts
from model_bench import MIN_RUNS, MIN_WARMUP, SEED, THREADS, summarise_ms
from publish import write_results
from torch import Tensor, nn

from edgeas.config import load_config
from edgeas.train.model.unias import build_model

PRESET = "unias-lite"
VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Published, not measured here: tensorflow/tpu models/official/efficientnet/lite/README.md
# (FP32 ImageNet top-1, each at its own input resolution). Not valid at edgeas's 224 for
# Lite1 / Lite2, which would run below their training resolution.
PUBLISHED = {
    "efficientnet_lite0": {"train_resolution": 224, "imagenet_top1": 75.1},
    "efficientnet_lite1": {"train_resolution": 240, "imagenet_top1": 76.7},
    "efficientnet_lite2": {"train_resolution": 260, "imagenet_top1": 77.6},
}
PUBLISHED_SOURCE = (
    "https://github.com/tensorflow/tpu/blob/master/models/official/efficientnet/lite/README.md"
)
RECOMMENDED = "efficientnet_lite0"
# A Lite backbone forward takes milliseconds, so more runs than the minimum cost little
# and steady the median on a shared machine.
DEFAULT_RUNS = 100


def variant_cost(name: str, image: Tensor) -> tuple[dict[str, Any], nn.Module]:
    """Parameters and FLOPs of one variant and of the preset built on it; its backbone."""
    cfg = load_config(PRESET, {"backbone": {"name": name}})
    model = build_model(cfg, pretrained=True).eval()
    backbone = model.backbone
    with torch.no_grad():
        feats = backbone(image)
    with frozen(model):
        fb = flop_count(lambda: backbone(image), EXTRA_FORMULAS)
        fd = flop_count(lambda: model.decoder(feats), EXTRA_FORMULAS)
    pb, pd = count_params(backbone), count_params(model.decoder)
    b, d = fb.get_total_flops(), fd.get_total_flops()
    return {
        "input_size": list(cfg.input_size),
        "channels": list(backbone.channels),
        "strides": list(backbone.strides),
        "tap_sizes": [list(f.shape[-2:]) for f in feats],
        "params": {"backbone": pb, "decoder": pd, "total": pb + pd},
        "gflops": {"backbone": gflops(b), "decoder": gflops(d), "total": gflops(b + d)},
        "backbone_share_of_gflops": round(b / (b + d), 4),
        **PUBLISHED[name],
    }, backbone


def time_round_robin(
    modules: dict[str, nn.Module], image: Tensor, runs: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Median / p90 latency of each module, the modules taking turns run by run."""
    times: dict[str, list[float]] = {name: [] for name in modules}
    with torch.inference_mode():
        for i in range(warmup + runs):
            for name, module in modules.items():
                t0 = time.perf_counter()
                module(image)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    return {name: summarise_ms(t) for name, t in times.items()}


def run(runs: int, warmup: int, out_dir: Path, max_wait: float) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(SEED))
    variants: dict[str, Any] = {}
    backbones: dict[str, nn.Module] = {}
    for name in VARIANTS:
        print(f"[lite_choice] {name} ...", file=sys.stderr, flush=True)
        torch.manual_seed(SEED)
        variants[name], backbones[name] = variant_cost(name, image)
    gate = LoadGate(max_wait)
    load = gate.wait()
    latency = time_round_robin(backbones, image, runs, warmup)
    load["load_at_end"] = loadavg()
    for name in VARIANTS:
        variants[name]["backbone_latency_ms"] = latency[name]
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine_facts(),
        "settings": {
            "batch": 1,
            "pretrained": True,
            "runs": runs,
            "warmup": warmup,
            "torch_threads": torch.get_num_threads(),
            "timing": "backbone alone, round-robin over the variants",
            "quiet_load_threshold": QUIET_LOAD,
            "max_wait_s": max_wait,
        },
        "load": load,
        "published_source": PUBLISHED_SOURCE,
        "variants": variants,
        "recommendation": RECOMMENDED,
    }
    write_results(out_dir, "lite_choice", report, markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    m, v, load, s = report["machine"], report["variants"], report["load"], report["settings"]
    lines = [
        "# EfficientNet-Lite backbone for the unias-lite preset",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, shared with other users; "
        f"Python {m['python']}, torch {m['torch']}; torch threads {s['torch_threads']}. "
        f"Load average (1/5/15 min) before timing {_load(load['load_at_start'])}, after "
        f"{_load(load['load_at_end'])}"
        + (
            ""
            if load["quiet_at_start"]
            else "; the machine never got quiet, so latencies are upper bounds"
        )
        + ".",
        f"Batch 1, 224x224, packaged ImageNet weights, eval mode, torch.inference_mode; "
        f"backbone latency over {s['runs']} runs (+{s['warmup']} warm-up), variants timed "
        "round-robin. FLOPs = 2 x MACs (FlopCounterMode plus its CPU attention formula, "
        "see model_cost.md). The whole preset's latency (decoder included) is in "
        "model_cost.md, row unias-lite.",
        "",
        "| variant | trained at | channels res1..res4 | backbone params (M) "
        "| backbone GFLOPs (to stride-16 tap) | backbone latency median / p90 (ms) "
        "| preset params (M) | preset GFLOPs (decoder) | backbone share of preset GFLOPs "
        "| published ImageNet top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in v.items():
        lat = r["backbone_latency_ms"]
        lines.append(
            f"| {name} | {r['train_resolution']} | {'/'.join(str(c) for c in r['channels'])} "
            f"| {r['params']['backbone'] / 1e6:.2f} | {r['gflops']['backbone']:.3f} "
            f"| {lat['median']:.1f} / {lat['p90']:.1f} "
            f"| {r['params']['total'] / 1e6:.2f} "
            f"| {r['gflops']['total']:.2f} ({r['gflops']['decoder']:.2f}) "
            f"| {r['backbone_share_of_gflops']:.1%} | {r['imagenet_top1']}% |"
        )
    lines += ["", "## Recommendation", "", recommendation(report), ""]
    return "\n".join(lines)


def recommendation(report: dict[str, Any]) -> str:
    v = report["variants"]
    l0, l1, l2 = (v[n] for n in VARIANTS)
    extra1 = l1["gflops"]["total"] / l0["gflops"]["total"] - 1
    extra2 = l2["gflops"]["total"] / l0["gflops"]["total"] - 1
    bb1 = l1["gflops"]["backbone"] / l0["gflops"]["backbone"] - 1
    bb2 = l2["gflops"]["backbone"] / l0["gflops"]["backbone"] - 1
    lat = {n: v[n]["backbone_latency_ms"]["median"] for n in VARIANTS}
    return (
        f"Keep **{RECOMMENDED}** (what the preset already names). Basis: cost and input "
        "resolution only; no anomaly-segmentation accuracy has been measured for any "
        f"variant. The decoder dominates: it is {l0['gflops']['decoder']:.1f} of the "
        f"{l0['gflops']['total']:.1f} preset GFLOPs with Lite0, and the backbone is "
        f"{l0['backbone_share_of_gflops']:.1%} (Lite0) to {l2['backbone_share_of_gflops']:.1%} "
        f"(Lite2). Lite1 and Lite2 need {bb1:+.0%} and {bb2:+.0%} backbone FLOPs "
        f"(backbone median {lat[VARIANTS[0]]:.0f} / {lat[VARIANTS[1]]:.0f} / "
        f"{lat[VARIANTS[2]]:.0f} ms here) but only {extra1:+.1%} and {extra2:+.1%} "
        "for the whole preset, so cost alone would not rule them out. What speaks against "
        "them is unmeasured benefit: their higher published ImageNet top-1 "
        f"({l1['imagenet_top1']}% and {l2['imagenet_top1']}% vs {l0['imagenet_top1']}%) "
        f"was obtained at {l1['train_resolution']} and {l2['train_resolution']} px, while "
        "edgeas feeds 224 px, so at 224 they see objects smaller than in training and that "
        "advantage is not established; Lite0 was trained at 224 and so runs at its own "
        "resolution. Lite1 has the same tap channels as Lite0 (it is only deeper); Lite2 "
        "is wider at res3/res4. If feature quality turns out to limit anomaly accuracy, "
        "Lite2 is the one worth comparing against Lite0 on the anomaly benchmark, since "
        "its extra cost for the whole preset is small."
    )


def _load(values: list[float]) -> str:
    return "/".join(f"{x:.2f}" for x in values) if values else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=DEFAULT_RUNS, help=f"timed runs (>= {MIN_RUNS}, default 100)"
    )
    parser.add_argument(
        "--warmup", type=int, default=MIN_WARMUP, help=f"warm-up runs (>= {MIN_WARMUP})"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="output dir"
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=600.0,
        help="seconds to wait for a quiet machine before timing (default 600)",
    )
    args = parser.parse_args()
    if args.runs < MIN_RUNS:
        parser.error(f"--runs must be at least {MIN_RUNS}")
    if args.warmup < MIN_WARMUP:
        parser.error(f"--warmup must be at least {MIN_WARMUP}")
    report = run(args.runs, args.warmup, args.out, args.max_wait)
    print(markdown(report))


if __name__ == "__main__":
    main()
