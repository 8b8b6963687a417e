"""Parameters, forward FLOPs and CPU latency of the UniAS presets, backbone vs decoder.

    python benchmarks/model_bench.py [--presets tiny,unias-lite,unias-b4] [--runs 20]
                                     [--out benchmarks/results] [--max-wait 600] [--merge]

--merge re-measures only the listed presets and keeps the other presets' entries of the
existing model_cost.json; every entry records the command that produced it.

Every number is for batch 1 at the preset's input size (224 x 224 for all presets).

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (FLOPs = 2 x MACs for
convolutions and matrix products). Its registry knows the CUDA attention kernels but not
the CPU one: on CPU, `scaled_dot_product_attention` (which nn.MultiheadAttention calls
when need_weights=False, as every edgeas attention layer does) runs as
`aten._scaled_dot_product_flash_attention_for_cpu`, which the counter would count as 0.
This script registers the registry's own SDPA formula for that op (the two matrix
products Q K^T and A V; the neighbour mask is not discounted, the kernel computes the
masked scores too). Everything else that runs without a formula (elementwise ops,
normalisations, softmax, resizing, pooling, copies) counts 0; the script lists those
ops with their output sizes, so the omission is measured, not guessed.

Latency: eval mode, torch.inference_mode, torch threads = 2, weights random
(pretrained=False: dense kernels take the same time whatever the values, and B4 has no
bundled weights). One timed call of `model(image)` per run; hooks on `model.decoder`
split it into backbone and decoder time, so the parts add up to the measured whole.
The machine is shared: before timing each preset the script waits (within --max-wait
seconds in total) for the 1-minute load average to drop below 1.0 and records the
load average before and after the timed runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import (  # noqa: E402
    EXTRA_FORMULAS,
    by_module,
    by_op,
    count_params,
    flop_count,
    frozen,
    full_network_gflops,
    gflops,
    params_by_module,
    uncounted,
)
from machine import QUIET_LOAD, LoadGate, loadavg, machine_facts  # noqa: E402
from model_bench_report import markdown  # noqa: E402
from publish import write_results  # noqa: E402

from edgeas.config import load_config  # noqa: E402
from edgeas.train.model.unias import UniAS, build_model  # noqa: E402

DEFAULT_PRESETS = ("tiny", "unias-lite", "unias-b4")
MIN_RUNS = 20
MIN_WARMUP = 3
THREADS = 2
# The full-size B4 forward takes seconds on 2 cores: never time it more than the minimum.
HEAVY_PRESETS = {"unias-b4"}
SEED = 0
# Reference numbers of unias.md "Cost" (batch 1, 224, FLOPs = 2 x MACs).
SPEC = {
    "decoder_gflops": 80.9,
    "decoder_params_m": 53.8,
    "backbone_gflops": 3.0,
    "res1_head_gflops": 31.0,
    "pixel_decoder_finest_conv_gflops": 15.0,
}


# ---------------------------------------------------------------------------- timing


def summarise_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "median": round(float(np.median(ms)), 2),
        "p90": round(float(np.percentile(ms, 90)), 2),
        "min": round(float(ms.min()), 2),
        "max": round(float(ms.max()), 2),
    }


def time_model(model: UniAS, image: Tensor, runs: int, warmup: int) -> dict[str, Any]:
    """Median / p90 of whole forwards, split into backbone and decoder by decoder hooks."""
    stamps: dict[str, float] = {}

    def before(_m: nn.Module, _args: Any) -> None:
        stamps["decoder_start"] = time.perf_counter()

    def after(_m: nn.Module, _args: Any, _out: Any) -> None:
        stamps["decoder_end"] = time.perf_counter()

    handles = [
        model.decoder.register_forward_pre_hook(before),
        model.decoder.register_forward_hook(after),
    ]
    total, backbone, decoder = [], [], []
    try:
        with torch.inference_mode():
            for i in range(warmup + runs):
                t0 = time.perf_counter()
                model(image)
                t1 = time.perf_counter()
                if i >= warmup:
                    total.append(t1 - t0)
                    backbone.append(stamps["decoder_start"] - t0)
                    decoder.append(stamps["decoder_end"] - stamps["decoder_start"])
    finally:
        for h in handles:
            h.remove()
    shares = [d / t for d, t in zip(decoder, total)]
    return {
        "runs": runs,
        "warmup": warmup,
        "total_ms": summarise_ms(total),
        "backbone_ms": summarise_ms(backbone),
        "decoder_ms": summarise_ms(decoder),
        "decoder_share_median": round(statistics.median(shares), 3),
    }


def time_module(module: nn.Module, image: Tensor, runs: int, warmup: int) -> dict[str, float]:
    """Median / p90 latency of `module(image)` under inference_mode."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            module(image)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return summarise_ms(times)


# ---------------------------------------------------------------------------- presets


def model_cost(model: UniAS, image: Tensor) -> dict[str, Any]:
    """Parameters and FLOPs of backbone and decoder (no timing)."""
    with torch.no_grad():
        feats = model.backbone(image)
    with frozen(model):
        fb = flop_count(lambda: model.backbone(image), EXTRA_FORMULAS)
        fd = flop_count(lambda: model.decoder(feats), EXTRA_FORMULAS)
        # The stock counter, to show what it would report without the CPU SDPA formula.
        fd_stock = flop_count(lambda: model.decoder(feats))
        un_b = uncounted(lambda: model.backbone(image))
        un_d = uncounted(lambda: model.decoder(feats))
    pb, pd = count_params(model.backbone), count_params(model.decoder)
    b, d = fb.get_total_flops(), fd.get_total_flops()
    attention = fd.get_flop_counts()["Global"].get(
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, 0
    )
    return {
        "backbone": model.backbone.name,
        "channels": list(model.backbone.channels),
        "strides": list(model.backbone.strides),
        "params": {"backbone": pb, "decoder": pd, "total": pb + pd},
        "gflops": {"backbone": gflops(b), "decoder": gflops(d), "total": gflops(b + d)},
        "decoder_attention_gflops": gflops(attention),
        "decoder_gflops_stock_counter": gflops(fd_stock.get_total_flops()),
        "gflops_by_op": {"backbone": by_op(fb), "decoder": by_op(fd)},
        "decoder_gflops_by_module": by_module(fd, "UniASDecoder"),
        "decoder_params_m_by_module": params_by_module(model.decoder),
        "uncounted": {"backbone": un_b, "decoder": un_d},
    }


def build(name: str) -> tuple[UniAS, Tensor]:
    """The preset's model (random weights, eval mode) and a seeded random input image."""
    torch.manual_seed(SEED)
    cfg = load_config(name)
    model = build_model(cfg, pretrained=False).eval()
    h, w = cfg.input_size
    image = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(SEED))
    return model, image


def preset_cost(name: str, model: UniAS, image: Tensor) -> dict[str, Any]:
    result: dict[str, Any] = {"input_size": list(image.shape[-2:]), **model_cost(model, image)}
    size = int(image.shape[-1])
    result["backbone_full_network_gflops"] = full_network_gflops(model.backbone.name, size)
    return result


def preset_latency(
    name: str, model: UniAS, image: Tensor, runs: int, warmup: int, gate: LoadGate
) -> dict[str, Any]:
    if name in HEAVY_PRESETS:
        runs = MIN_RUNS
    load = gate.wait()
    timing = time_model(model, image, runs, warmup)
    load["load_at_end"] = loadavg()
    return {**timing, "torch_threads": torch.get_num_threads(), "load": load}


def spec_check(r: dict[str, Any]) -> dict[str, Any]:
    """unias-b4 decoder and backbone against unias.md "Cost"."""
    mods = r["decoder_gflops_by_module"]
    return {
        "decoder_gflops": {"spec": SPEC["decoder_gflops"], "measured": r["gflops"]["decoder"]},
        "decoder_params_m": {
            "spec": SPEC["decoder_params_m"],
            "measured": round(r["params"]["decoder"] / 1e6, 2),
        },
        "res1_head_gflops": {
            "spec": SPEC["res1_head_gflops"],
            "measured": mods.get("predictor.out_agg.3"),
        },
        "pixel_decoder_finest_conv_gflops": {
            "spec": SPEC["pixel_decoder_finest_conv_gflops"],
            "measured": mods.get("pixel_decoder.layer_1"),
        },
        "backbone_gflops": {
            "spec": SPEC["backbone_gflops"],
            "measured_to_stride16_tap": r["gflops"]["backbone"],
            "measured_full_network": r["backbone_full_network_gflops"],
        },
        "decoder_gflops_stock_counter": r["decoder_gflops_stock_counter"],
    }


# ---------------------------------------------------------------------------- report


def run(
    presets: list[str], runs: int, warmup: int, out_dir: Path, max_wait: float, merge: bool
) -> dict:
    torch.set_num_threads(THREADS)
    gate = LoadGate(max_wait)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    json_path = out_dir / "model_cost.json"
    # --merge re-measures some presets and keeps the others' earlier entries (each entry
    # names the command that produced it), so a slow preset need not be re-run.
    old = json.loads(json_path.read_text()) if merge and json_path.exists() else {"presets": {}}
    # Files from before per-preset commands name their one command at the top level.
    kept = {n: {"command": old.get("command"), **r} for n, r in old["presets"].items()}
    report: dict[str, Any] = {
        "machine": machine_facts(),
        "settings": {
            "batch": 1,
            "heavy_presets_capped_at_runs": {p: MIN_RUNS for p in HEAVY_PRESETS},
            "torch_threads": THREADS,
            "quiet_load_threshold": QUIET_LOAD,
            "pretrained": False,
            "extra_flop_formulas": [str(op) for op in EXTRA_FORMULAS],
        },
        "presets": dict(kept),
    }
    # All FLOP counting first, all timing after: counting is compute too, and the load
    # it leaves behind would otherwise delay (or pollute) the next preset's timing.
    built = {name: build(name) for name in presets}
    for name, (model, image) in built.items():
        print(f"[model_bench] counting {name} ...", file=sys.stderr, flush=True)
        report["presets"][name] = {"command": command, **preset_cost(name, model, image)}
    for name, (model, image) in built.items():
        print(f"[model_bench] timing {name} ...", file=sys.stderr, flush=True)
        lat = preset_latency(name, model, image, runs, warmup, gate)
        report["presets"][name]["latency"] = {
            **lat,
            "max_wait_s": max_wait,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    report["commands"] = list(dict.fromkeys(r["command"] for r in report["presets"].values()))
    if "unias-b4" in report["presets"]:
        report["spec_check"] = spec_check(report["presets"]["unias-b4"])
    write_results(out_dir, "model_cost", report, markdown(report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", default=",".join(DEFAULT_PRESETS), help="comma-separated preset names"
    )
    parser.add_argument("--runs", type=int, default=MIN_RUNS, help=f"timed runs (>= {MIN_RUNS})")
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
        help="seconds in total to wait for a quiet machine before timing (default 600)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the entries of presets not measured now from the existing model_cost.json",
    )
    args = parser.parse_args()
    if args.runs < MIN_RUNS:
        parser.error(f"--runs must be at least {MIN_RUNS}")
    if args.warmup < MIN_WARMUP:
        parser.error(f"--warmup must be at least {MIN_WARMUP}")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    report = run(presets, args.runs, args.warmup, args.out, args.max_wait, args.merge)
    print(markdown(report))


if __name__ == "__main__":
    main()
