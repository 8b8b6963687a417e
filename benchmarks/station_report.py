"""The Markdown page of benchmarks/station.py's report (results/station.md)."""

from __future__ import annotations

from typing import Any


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _calls(r: dict[str, Any]) -> str:
    return (f"{r['tp']}/{r['defective']} defective NG ({_pct(r['recall'])}), "
            f"{r['fp']}/{r['clean']} clean NG ({_pct(r['false_ng'])})")


def markdown(report: dict[str, Any]) -> str:
    d, recipe = report["decisions"], report["recipe"]
    replay, met = d["replay"], report["meets_target"]
    target = report["target"]
    lines = [
        "# The demo station, measured (`make demo` as a benchmark)",
        "",
        f"`{report['command']}` on {report['machine']['cpu_model']} "
        f"({report['machine']['cpu_count']} cores, shared: see the load columns).",
        f"Recipe: config `{recipe['config']}`, `edgeas synth --per-class "
        f"{recipe['per_class']}`, epochs {recipe['epochs'] or 'as configured'}, clip frames "
        f"{recipe['frame'] or 'image size'}; {d['frames']} frames.",
        "",
        f"**Station** (events.jsonl vs the clip's JSON): {_calls(d['station'])}. Target: >= "
        f"{_pct(target['recall'])} and <= {_pct(target['false_ng'])}, within "
        f"{target['wall_s']:.0f} s: recall {'met' if met['recall'] else 'NOT met'}, false NG "
        f"{'met' if met['false_ng'] else 'NOT met'}, time "
        + ({True: "met", False: "NOT met", None: "not measured (partial run)"}[met["wall_s"]])
        + f" ({report['wall_s']:.0f} s wall, {report['cpu_s']:.0f} s CPU).",
    ]
    summary = d.get("stream_summary_decisions")
    if summary:
        same = (summary["tp"], summary["fp"]) == (d["station"]["tp"], d["station"]["fp"])
        lines.append(f"The stream's own summary: {summary['tp']} TP, {summary['fp']} FP "
                     f"({'the same' if same else 'DIFFERENT'}).")
    th = replay["record_threshold"]
    lines += [
        "",
        "## Stages",
        "",
        "| stage | wall s | CPU s | load before | command |",
        "|---|---|---|---|---|",
    ]
    for r in report["stages"]:
        load = r["load_before"][0] if r["load_before"] else "-"
        lines.append(f"| {r['stage']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {load} | "
                     f"`{r['command']}` |")
    lines.append(f"| **total** | **{report['wall_s']:.1f}** | {report['cpu_s']:.1f} | | |")
    epochs = report.get("train_epoch_s") or []
    if epochs:
        lines += ["", f"Training epochs (s): {', '.join(f'{v:g}' for v in epochs)}; median "
                  f"{sorted(epochs)[len(epochs) // 2]:g} s. An epoch far above the median "
                  "ran while other jobs held the cores."]
    lines += [
        "",
        "## Decisions replayed at model resolution",
        "",
        f"The exported model over the {replay['held_out_images']} held-out normal images of the "
        f"run and the {d['frames']} decoded clip frames, {replay['mode']} maps at model size. "
        f"Image score under the rule with min_area m: the largest t at which an 8-connected "
        f"region of {{map >= t}} has >= m pixels (the map's max for m <= 1); NG iff score >= tau. "
        f"The station's tau: {th['value']} ({th['policy']} {th['param']}, min_area "
        f"{th['min_area']}, margin {th['margin']}). \"fitted\": tau fitted here, <= 1% of the "
        f"held-out images NG (their max when there are < 100). Recall at a false-NG rate: tau "
        f"chosen on the clip's own clean frames (an oracle: the best a threshold can do).",
        "",
        "| min_area | frame AUROC | recall @0% | @1% | @2% | @5% | @10% | fitted tau: recall | "
        "false NG | station tau: recall | false NG | held-out max | clean-frame max |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for area, row in replay["by_min_area"].items():
        c = row["recall_at_false_ng"]
        rec = row.get("record")
        lines.append(
            f"| {area} | {row['auroc']:.3f} | "
            + " | ".join(_pct(c[k]) for k in ("0", "0.01", "0.02", "0.05", "0.1"))
            + f" | {_pct(row['fitted']['recall'])} | {_pct(row['fitted']['false_ng'])} | "
            + (f"{_pct(rec['recall'])} | {_pct(rec['false_ng'])}" if rec else "- | -")
            + f" | {row['held_out_max']:.4g} | {row['clean_max']:.4g} |")
    return "\n".join(lines) + "\n"
