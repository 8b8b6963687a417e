"""The Markdown table of benchmarks/model_bench.py: cost per preset, the check against
unias.md's "Cost" figures, and what the FLOP counter leaves out."""

from __future__ import annotations

from typing import Any

from flops import UNCOUNTED_FLOPS_PER_ELEMENT


def markdown(report: dict[str, Any]) -> str:
    m, presets, cfg = report["machine"], report["presets"], report["settings"]
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
        f'below {cfg["quiet_load_threshold"]}; "after" includes this benchmark\'s own '
        f'{cfg["torch_threads"]} threads.',
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
