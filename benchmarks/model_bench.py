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
import os
import platform
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

from edgeas.config import load_config
from edgeas.fileio import atomic_write_text
from edgeas.train.backbones import get_spec
from edgeas.train.model.unias import UniAS, build_model

aten = torch.ops.aten

DEFAULT_PRESETS = ("tiny", "unias-lite", "unias-b4")
MIN_RUNS = 20
MIN_WARMUP = 3
THREADS = 2
QUIET_LOAD = 1.0  # 1-minute load average below which the machine counts as quiet
POLL_S = 15.0
# The full-size B4 forward takes seconds on 2 cores: never time it more than the minimum.
HEAVY_PRESETS = {"unias-b4"}
SEED = 0
# Upper end of the arithmetic per output element of the ops the counter skips (an add
# is 1, eval BatchNorm 2, GroupNorm / LayerNorm / bilinear resize / GELU up to ~10):
# used only to bound what the FLOP counts leave out.
UNCOUNTED_FLOPS_PER_ELEMENT = 10

# Reference numbers of unias.md "Cost" (batch 1, 224, FLOPs = 2 x MACs).
SPEC = {
    "decoder_gflops": 80.9,
    "decoder_params_m": 53.8,
    "backbone_gflops": 3.0,
    "res1_head_gflops": 31.0,
    "pixel_decoder_finest_conv_gflops": 15.0,
}


def _sdpa_cpu_flops(
    query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *_: Any, **__: Any
) -> int:
    # Same formula as the CUDA SDPA kernels get in flop_counter's own registry.
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Formulas the stock FlopCounterMode lacks for ops this model runs on CPU.
EXTRA_FORMULAS: dict[Any, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
}
COUNTED_OPS = {*flop_registry, *EXTRA_FORMULAS}


# ---------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float]:
    """1, 5 and 15-minute load averages (empty where /proc is missing)."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


class LoadGate:
    """Waits for a quiet machine, with one time budget shared by every wait of the run."""

    def __init__(self, budget_s: float, threshold: float = QUIET_LOAD) -> None:
        self.budget_s = budget_s
        self.threshold = threshold
        self.spent_s = 0.0

    def wait(self) -> dict[str, Any]:
        first = loadavg()
        t0 = time.monotonic()
        now = first
        while now and now[0] >= self.threshold and self.spent_s < self.budget_s:
            pause = min(POLL_S, self.budget_s - self.spent_s)
            time.sleep(pause)
            self.spent_s += pause
            now = loadavg()
        return {
            "load_on_arrival": first,
            "load_at_start": now,
            "waited_s": round(time.monotonic() - t0, 1),
            # False: the budget ran out and the timing ran on a busy machine.
            "quiet_at_start": bool(now) and now[0] < self.threshold,
        }


# ---------------------------------------------------------------------------- counting


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without requires_grad while counting.

    FlopCounterMode's module tracker registers gradient hooks on module inputs that
    require grad, which fails under no_grad (e.g. on an expanded embedding weight).
    Nothing here needs gradients, so they are switched off and restored after.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _is_view(func: torch._ops.OpOverload) -> bool:
    # A view aliases its input without writing it: no arithmetic, nothing to report.
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


class UncountedOps(TorchDispatchMode):
    """Ops that run with no FLOP formula (FlopCounterMode adds 0 for them), with output sizes.

    Mirrors FlopCounterMode's dispatch: try to decompose an op first (a composite op such
    as `linear` becomes `addmm`), and only what does not decompose runs as itself.
    """

    def __init__(self, counted: set[Any]) -> None:
        super().__init__()
        self.counted = counted
        self.elements: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        with self:
            decomposed = func.decompose(*args, **kwargs)
        if decomposed is not NotImplemented:
            return decomposed
        out = func(*args, **kwargs)
        if func._overloadpacket not in self.counted and not _is_view(func):
            name = str(func._overloadpacket)
            self.calls[name] += 1
            outs = out if isinstance(out, (tuple, list)) else [out]
            self.elements[name] += sum(t.numel() for t in outs if isinstance(t, Tensor))
        return out


def flop_count(
    fn: Callable[[], Any], extra: dict[Any, Callable[..., int]] | None = None
) -> FlopCounterMode:
    with torch.no_grad(), FlopCounterMode(display=False, depth=None, custom_mapping=extra) as fc:
        fn()
    return fc


def uncounted(fn: Callable[[], Any]) -> dict[str, Any]:
    with torch.no_grad(), UncountedOps(COUNTED_OPS) as mode:
        fn()
    ops = {
        name: {"calls": mode.calls[name], "output_m_elements": round(n / 1e6, 3)}
        for name, n in mode.elements.most_common()
    }
    return {"ops": ops, "output_m_elements": round(sum(mode.elements.values()) / 1e6, 2)}


def by_op(fc: FlopCounterMode) -> dict[str, float]:
    return {str(op): gflops(n) for op, n in fc.get_flop_counts().get("Global", {}).items()}


def by_module(fc: FlopCounterMode, root: str, max_depth: int = 3) -> dict[str, float]:
    """GFLOPs per submodule (names relative to `root`) down to `max_depth` dots."""
    out = {}
    for name, ops in fc.get_flop_counts().items():
        if name.startswith(root + "."):
            rel = name[len(root) + 1 :]
            if rel.count(".") < max_depth:
                out[rel] = gflops(sum(ops.values()))
    return dict(sorted(out.items()))


def params_by_module(module: nn.Module, depth: int = 2) -> dict[str, float]:
    """Parameters (millions) of submodules `depth` levels down (e.g. predictor.out_agg)."""
    out = {}
    for name, sub in module.named_modules():
        if name and name.count(".") == depth - 1:
            out[name] = round(count_params(sub) / 1e6, 3)
    return out


def gflops(n: float) -> float:
    return round(n / 1e9, 3)


def full_network_gflops(backbone_name: str, size: int) -> float:
    """FLOPs of the whole ImageNet classifier (every stage, head conv, fc), for the spec check.

    edgeas stops the backbone at the stride-16 tap; the reference code runs the whole
    network, so the spec's backbone figure is this one.
    """
    import timm

    net = timm.create_model(get_spec(backbone_name).timm_name, pretrained=False).eval()
    x = torch.zeros(1, 3, size, size)
    with frozen(net):
        return gflops(flop_count(lambda: net(x)).get_total_flops())


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
        aten._scaled_dot_product_flash_attention_for_cpu, 0
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


def markdown(report: dict[str, Any]) -> str:
    m, presets = report["machine"], report["presets"]
    sizes = sorted({"x".join(str(v) for v in r["input_size"]) for r in presets.values()})
    lines = [
        "# UniAS model cost: parameters, FLOPs, CPU latency",
        "",
        "Produced by:",
        "",
        *[
            f"- `{cmd}` (" + ", ".join(n for n, r in presets.items() if r["command"] == cmd) + ")"
            for cmd in report["commands"]
        ],
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, shared with other users; "
        f"Python {m['python']}, torch {m['torch']}.",
        f"Batch 1, input {', '.join(sizes)}, eval mode, torch.inference_mode, "
        "random weights (pretrained=False). FLOPs = 2 x MACs (FlopCounterMode, plus the "
        "CPU attention formula; see below).",
        "",
        "| preset | backbone | params backbone / decoder / total (M) "
        "| GFLOPs backbone / decoder / total | latency median (ms) | p90 (ms) "
        "| backbone / decoder median (ms) | decoder share | runs | threads "
        "| load 1/5/15 min before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in presets.items():
        p, g, lat = r["params"], r["gflops"], r["latency"]
        before, after = lat["load"]["load_at_start"], lat["load"]["load_at_end"]
        lines.append(
            f"| {name} | {r['backbone']} "
            f"| {p['backbone'] / 1e6:.2f} / {p['decoder'] / 1e6:.2f} / {p['total'] / 1e6:.2f} "
            f"| {g['backbone']:.2f} / {g['decoder']:.2f} / {g['total']:.2f} "
            f"| {lat['total_ms']['median']:.1f} | {lat['total_ms']['p90']:.1f} "
            f"| {lat['backbone_ms']['median']:.1f} / {lat['decoder_ms']['median']:.1f} "
            f"| {lat['decoder_share_median']:.0%} | {lat['runs']} (+{lat['warmup']} warm-up) "
            f"| {lat['torch_threads']} "
            f"| {_load(before)} -> {_load(after)} |"
        )
    busy = [n for n, r in presets.items() if not r["latency"]["load"]["quiet_at_start"]]
    lines += [
        "",
        "Backbone GFLOPs are to the stride-16 tap (res4), which is where edgeas stops "
        'the backbone. Load "before" is read after waiting for the 1-minute load to drop '
        f'below {QUIET_LOAD}; "after" includes this benchmark\'s own {THREADS} threads.',
    ]
    if busy:
        lines.append(
            "The wait budget ran out before the machine was quiet for: "
            f"{', '.join(busy)}. Those latencies were measured with other users' jobs "
            "competing for the cores: they are upper bounds, their p90 spread is wide, and "
            "they are not comparable between presets (the decoders of unias-lite and "
            "unias-b4 are the same reference decoder). Use them for targets only after a "
            "re-run on a quiet machine."
        )
    if "spec_check" in report:
        lines += ["", *_spec_lines(report["spec_check"])]
    lines += ["", *_counter_lines(report)]
    return "\n".join(lines) + "\n"


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "n/a"


def _spec_lines(s: dict[str, Any]) -> list[str]:
    bb = s["backbone_gflops"]
    return [
        '## unias-b4 against unias.md "Cost"',
        "",
        "| quantity | spec | measured |",
        "|---|---|---|",
        f"| decoder GFLOPs | {s['decoder_gflops']['spec']} | {s['decoder_gflops']['measured']} |",
        f"| decoder params (M) | {s['decoder_params_m']['spec']} "
        f"| {s['decoder_params_m']['measured']} |",
        f"| res1 head (predictor.out_agg.3) GFLOPs | ~{s['res1_head_gflops']['spec']:.0f} "
        f"| {s['res1_head_gflops']['measured']} |",
        f"| finest pixel-decoder 3x3 conv (layer_1) GFLOPs "
        f"| ~{s['pixel_decoder_finest_conv_gflops']['spec']:.0f} "
        f"| {s['pixel_decoder_finest_conv_gflops']['measured']} |",
        f"| backbone GFLOPs | {bb['spec']} | {bb['measured_full_network']} (whole "
        f"tf_efficientnet_b4 classifier); {bb['measured_to_stride16_tap']} (to the "
        "stride-16 tap, what edgeas runs) |",
        "",
        "The decoder agrees with the spec. The stock FlopCounterMode reports "
        f"{s['decoder_gflops_stock_counter']} decoder GFLOPs, because it has no formula for "
        "CPU attention; the difference "
        f"({s['decoder_gflops']['measured'] - s['decoder_gflops_stock_counter']:.3f} GFLOPs) "
        "is the attention matrix products. The parameter count differs only by rounding. "
        "The spec's 3.0 "
        "backbone GFLOPs are the whole B4 network at 224 (the reference code runs every "
        "stage and the head conv); edgeas drops the stages after the res4 tap (and the "
        "head conv and classifier), so its backbone costs less.",
    ]


def _counter_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "## What the FLOP counter counts",
        "",
        "Counted (2 x MACs): convolutions (including the depthwise and Gaussian-blur "
        "convs), linear layers (addmm / mm, so the attention in/out projections and FFNs), "
        "and attention's two matrix products Q K^T and A V. The last needs a formula this "
        "script adds for `aten._scaled_dot_product_flash_attention_for_cpu`: stock "
        "FlopCounterMode only knows the CUDA SDPA kernels and counts CPU attention as 0. "
        "Masked attention is counted dense (the kernel computes masked scores as well).",
        "",
        "Not counted (0 FLOPs): every other op. Their output elements per forward "
        "measure what is missing: these ops cost roughly 1 to 10 FLOPs per output element "
        "(an add 1, eval BatchNorm 2, GroupNorm / LayerNorm / bilinear resize / GELU up to "
        f"~10), so the last column bounds the omission at {UNCOUNTED_FLOPS_PER_ELEMENT} "
        "FLOPs per element, against the counted FLOPs of the same part.",
        "",
        "| preset | part | uncounted output (M elements) | largest uncounted ops (M elements) "
        f"| bound at {UNCOUNTED_FLOPS_PER_ELEMENT} FLOPs/element: GFLOPs (vs counted) |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["presets"].items():
        for part in ("backbone", "decoder"):
            u = r["uncounted"][part]
            top = ", ".join(
                f"{op.removeprefix('aten.')} {v['output_m_elements']:.1f}"
                for op, v in list(u["ops"].items())[:6]
            )
            bound = u["output_m_elements"] * UNCOUNTED_FLOPS_PER_ELEMENT / 1e3
            counted = r["gflops"][part]
            lines.append(
                f"| {name} | {part} | {u['output_m_elements']:.1f} | {top} "
                f"| {bound:.2f} ({bound / counted:.0%} of {counted:.2f}) |"
            )
    lines += [
        "",
        "These are BatchNorm (the backbone's, unfused in eval), ReLU6 / SiLU, SE pooling "
        "(B4), GroupNorm, LayerNorm, GELU, ReLU, softmax (inside the attention kernel, "
        "not listed separately), residual adds, bilinear upsampling, the cosine distance, "
        "padding and copies.",
    ]
    return lines


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
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "model_cost.md", markdown(report))
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
