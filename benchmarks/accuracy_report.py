"""The summary and the Markdown report of benchmarks/accuracy.py (issue 7): means and
spreads over seeds, differences to the reference row, per-seed and per-class tables."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
from publish import write_results

METRICS = ("pixel_ap", "dsc", "dsc_deploy", "pixel_auroc", "image_auroc")
SHORT = ("pAP", "DSC", "deploy DSC", "pixel AUROC", "image AUROC")
# The station's OK/NG figures (edgeas.decisions), in runs evaluated since issue 12.
DECISIONS = ("frame_recall", "frame_false_ng", "recall_at_fng_1", "recall_at_fng_5")
DECISION_SHORT = ("frame recall", "false NG", "recall @1% fNG", "recall @5% fNG")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of each metric (per class and mean), and the spread of the mean."""
    mean = {c: {m: float(np.mean([r["metrics"][c][m] for r in runs])) for m in METRICS}
            for c in runs[0]["metrics"]}
    per_seed = {m: [r["metrics"]["mean"][m] for r in runs] for m in METRICS}
    timed = [r["train_loop_s"] for r in runs if not r.get("resumed")]
    # decision metrics: the mean over the runs that have them (older runs do not)
    decided = [r for r in runs if DECISIONS[0] in r["metrics"]["mean"]]
    decisions = {m: float(np.mean([r["metrics"]["mean"][m] for r in decided]))
                 for m in DECISIONS} if decided else {}
    return {
        "decisions": decisions, "decision_seeds": [r["seed"] for r in decided],
        "seeds": [r["seed"] for r in runs], "metrics": mean, "per_seed": per_seed,
        "range": {m: max(v) - min(v) for m, v in per_seed.items()},
        "std": {m: statistics.stdev(v) if len(v) > 1 else None for m, v in per_seed.items()},
        "train_loop_s_mean": float(np.mean(timed)) if timed else None,
        "steps": runs[0]["steps"],
    }


def pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.2f}"


def _step(row: dict[str, Any]) -> str:
    t = row.get("train_step_s")
    return "-" if not t else f"{t['median_s']} (ref {t['reference_median_s']})"


def _ref_label(report: dict[str, Any], row: dict[str, Any]) -> str | None:
    for label, r in report["rows"].items():
        if r["spec"] == report["reference"] and r["epochs"] == row["epochs"]:
            return label
    return None


def markdown(report: dict[str, Any]) -> str:
    s, rows, m0 = report["settings"], report["rows"], report["machine"]
    full_ref = next(r["full_width"]["decoder_gflops"] for r in rows.values()
                    if r["spec"] == report["reference"])
    lines = [
        "# Decoder variants: segmentation quality under one fixed budget", "", "Produced by:",
        "", *[f"- `{c}`" for c in dict.fromkeys(r["command"] for r in rows.values())], "",
        f"Data: `edgeas synth --classes {s['classes']} --per-class {s['per_class']} --seed "
        f"{s['data_seed']}` ({s['test_per_class']} test images per class). Recipe: batch "
        f"{s['batch']}, AdamW lr {s['lr']} (constant), the preset's settings otherwise; "
        "budget = epochs x batch (steps column). Backbone "
        f"{s['backbone']}, input {s['input_size']}, every trained decoder at width "
        f"{s['width']} (all decoder widths scaled by width / hidden_dim). Machine: "
        f"{m0['cpu_model']}, {m0['cpu_count']} CPUs, shared with other jobs.",
        "",
        "Metrics in percent: mean over the classes, then over the seeds (+- the standard "
        "deviation over seeds); spread = max - min of the per-seed means. GFLOPs: "
        "decoder, 224 x 224, batch 1, FLOPs = 2 x MACs "
        "(model_bench.py's counter). ORT: ONNX Runtime CPU latency of the whole exported "
        "model (backbone + decoder), batch 1, 2 threads, median. Train s: training-loop "
        "seconds per run from the run logs (mean over seeds; different minutes of a shared "
        f"machine, so loosely comparable). Step s: median seconds of one training step of "
        f"batch {s['batch']}, measured interleaved with the reference's (in brackets).",
        "",
        "| config | steps | seeds | pAP | pAP spread | DSC | DSC spread | deploy DSC "
        f"| pixel AUROC | image AUROC | params (M) @{s['width']} | GFLOPs @{s['width']} "
        "| full-width GFLOPs (x ref) | ORT ms | train s | step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        sm, full = r["summary"], r["full_width"]["decoder_gflops"]
        m, rng, sd = sm["metrics"]["mean"], sm["range"], sm["std"]
        train_s = sm["train_loop_s_mean"]
        lines.append(
            f"| {label} | {sm['steps']} | {','.join(map(str, sm['seeds']))} "
            f"| {pct(m['pixel_ap'])} +- {pct(sd['pixel_ap'])} | {pct(rng['pixel_ap'])} "
            f"| {pct(m['dsc'])} +- {pct(sd['dsc'])} | {pct(rng['dsc'])} "
            f"| {pct(m['dsc_deploy'])} | {pct(m['pixel_auroc'])} "
            f"| {pct(m['image_auroc'])} | {r['reduced']['decoder_params_m']:.2f} "
            f"| {r['reduced']['decoder_gflops']:.2f} | {full:.2f} ({full / full_ref:.3f}) "
            f"| {r.get('ort', {}).get('median_ms', '-')} "
            f"| {'-' if train_s is None else round(train_s)} "
            f"| {_step(r)} |"
        )
    lines += ["", "Differences to the reference config at the same budget, in points "
              "(mean over seeds; the spreads are max - min over seeds):", "",
              "| config | d pAP | d DSC | d deploy DSC | d pixel AUROC | pAP spread ref / this "
              "| DSC spread ref / this |", "|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        ref = _ref_label(report, r)
        if ref is None or ref == label:
            continue
        a, b = rows[ref]["summary"], r["summary"]
        d = {k: 100 * (b["metrics"]["mean"][k] - a["metrics"]["mean"][k]) for k in METRICS}
        lines.append(
            f"| {label} | {d['pixel_ap']:+.2f} | {d['dsc']:+.2f} | {d['dsc_deploy']:+.2f} "
            f"| {d['pixel_auroc']:+.2f} | {pct(a['range']['pixel_ap'])} / "
            f"{pct(b['range']['pixel_ap'])} | {pct(a['range']['dsc'])} / "
            f"{pct(b['range']['dsc'])} |")
    head = "| config | seed | " + " | ".join(SHORT) + " | final loss | train s |"
    lines += ["", "Per seed:", "", head, "|---|---|" + "---|" * (len(METRICS) + 2)]
    for label, r in rows.items():
        for run in r["runs"]:
            t = "resumed (log incomplete)" if run.get("resumed") else f"{run['train_loop_s']:.0f}"
            lines.append(f"| {label} | {run['seed']} | "
                         + " | ".join(pct(run["metrics"]["mean"][k]) for k in METRICS)
                         + f" | {run['final_loss']:.1f} | {t} |")
    lines += ["", "Per class (mean over seeds):", "", "| config | class | " + " | ".join(SHORT)
              + " |", "|---|---|" + "---|" * len(METRICS)]
    for label, r in rows.items():
        for cls, m in r["summary"]["metrics"].items():
            if cls != "mean":
                lines.append(f"| {label} | {cls} | "
                             + " | ".join(pct(m[k]) for k in METRICS) + " |")
    return "\n".join(lines + decisions_section(report) + settings_section(report)) + "\n"


def decisions_section(report: dict[str, Any]) -> list[str]:
    """UniAS rows and the training-free baselines side by side on what a station is
    judged by: image ranking and OK/NG calls (edgeas.decisions; per class, then mean)."""
    rows, baselines = report["rows"], report.get("baselines", {})
    head = ("| model | seeds | pAP | image AUROC | " + " | ".join(DECISION_SHORT) + " |")
    lines = ["", "## Decisions, and the training-free baseline", "",
             "What a station is judged by, on the same test images: image AUROC and the "
             "decision metrics of `edgeas eval` (recall and false NG at the stored threshold, "
             "`frame_fpr` fitted on held-out normal images; recall at 1% / 5% false NG per "
             "class, then the mean). UniAS rows: mean over the seeds evaluated with them "
             "(runs from before issue 12 have none). The baseline is fitted once on the "
             "training split of the first row's config, its threshold on the same held-out "
             "images (`benchmarks/patchcore.py`).", "", head,
             "|---|---|---|---|" + "---|" * len(DECISIONS)]
    for label, r in rows.items():
        sm = r["summary"]
        dec = sm.get("decisions") or {}
        if not dec:
            continue
        # pAP and AUROC over the same seeds as the decision figures
        same = [run["metrics"]["mean"] for run in r["runs"]
                if run["seed"] in sm["decision_seeds"]]
        pap, auroc = (float(np.mean([m[k] for m in same])) for k in ("pixel_ap", "image_auroc"))
        lines.append(f"| {label} | {','.join(map(str, sm['decision_seeds']))} "
                     f"| {pct(pap)} | {pct(auroc)} | "
                     + " | ".join(pct(dec[k]) for k in DECISIONS) + " |")
    for b in baselines.values():
        m = b["metrics"]["mean"]
        lines.append(f"| {b['label']} | - | {pct(m['pixel_ap'])} | {pct(m['image_auroc'])} | "
                     + " | ".join(pct(m[k]) for k in DECISIONS) + " |")
    for b in baselines.values():
        lines += ["", f"{b['label']}: `{b['command']}`; bank {b['bank']} of {b['patches']} "
                  f"patches, fitted in {b['fit_s']} s, {b['test_s_per_image']} s per test "
                  f"image; threshold {b['threshold']:.4g} on {b['held_out']} held-out images."]
    return lines


SETTING_FIGURES = {"pixel_ap": "pAP", "dsc": "DSC", "image_auroc": "image AUROC",
                   "recall_at_fng_1": "recall @1% fNG"}


def settings_section(report: dict[str, Any]) -> list[str]:
    """Each row's smoothing settings side by side (eval's aggregation.json, mean over the
    seeds that have it), and what the fused mode costs against the reference."""
    head = ("| config | seeds | smoothing | mode | " + " | ".join(SETTING_FIGURES.values())
            + " |")
    lines = ["", "## Aggregation settings", "",
             "`edgeas eval`'s comparison on each trained model (aggregation.json): the "
             "official smoothing and none, each computed straightforwardly (`reference`) "
             "and fast (`fused`); mean over the seeds evaluated with it. Last columns, for "
             "the model's own setting: fused minus reference pAP (points) and the share of "
             "test images with the same OK/NG call at the stored threshold.", "",
             head[:-1] + "| fused - ref pAP | same call |",
             "|---|---|---|---|" + "---|" * (len(SETTING_FIGURES) + 2)]
    for label, r in report["rows"].items():
        runs = [run for run in r["runs"] if run.get("aggregation")]
        if not runs:
            continue
        seeds = ",".join(str(run["seed"]) for run in runs)
        first = runs[0]["aggregation"]
        checks = [run["aggregation"]["fused_vs_reference"] for run in runs]
        for name, modes in first["settings"].items():
            for mode in modes:
                vals = [float(np.mean([run["aggregation"]["settings"][name][mode][k]
                                       for run in runs])) for k in SETTING_FIGURES]
                own = name == first["setting"] and mode == "fused"
                extra = ("| - | - |" if not own else
                         f"| {np.mean([c['pixel_ap_points'] for c in checks]):+.2f} "
                         f"| {_same(checks)} |")
                lines.append(f"| {label} | {seeds} | {name} | {mode} | "
                             + " | ".join(pct(v) for v in vals) + " " + extra)
    return lines


def _same(checks: list[dict[str, Any]]) -> str:
    same = [c["same_decision"] for c in checks if c["same_decision"] is not None]
    return "-" if not same else f"{100 * min(same):.1f}% (worst seed)"


def write(out: Path, report: dict[str, Any]) -> None:
    write_results(out, "accuracy", report, markdown(report))
    print(markdown(report))
