"""precision.json -> precision.md (benchmarks/precision.py); `python
benchmarks/precision_report.py [--out benchmarks/results] [--merge OTHER/precision.json ...]`
rewrites the Markdown alone, or after merging the models of runs made with another --out."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from publish import write_results

MAX_PAP_DROP = 1.0
MIN_COSINE = 0.95


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _delta(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}"


def _cos(v: float | None) -> str:
    return "NaN/inf" if v is None else f"{v:.4f}"


def target_met(entry: dict[str, Any]) -> str:
    """The issue's target for this variant's format: Q/DQ (and FP16, for TensorRT) within
    1.0 pAP and worst map cosine >= 0.95; QOperator within 1.0 pAP."""
    delta = (entry.get("delta_points") or {}).get("pixel_ap")
    cos = entry["cosine_min"]["anomaly_map"]
    if entry.get("nonfinite_images") or cos is None or delta is None:
        return "no"
    ok = -delta <= MAX_PAP_DROP
    if entry["format"] in ("qdq", "fp16"):
        ok = ok and cos >= MIN_COSINE
    return "yes" if ok else "no"


def _row(name: str, e: dict[str, Any], fp32: dict[str, Any]) -> str:
    m, d = e.get("metrics") or {}, e.get("delta_points") or {}
    dec = e.get("decisions") or {}
    lat = e.get("latency", {}).get("median_ms", "-")
    floats = ", ".join(e.get("float_blocks", [])) or "-"
    return (f"| {name} | {_pct(m.get('pixel_ap'))} ({_delta(d.get('pixel_ap'))}) | "
            f"{_pct(m.get('dsc'))} ({_delta(d.get('dsc'))}) | {_pct(dec.get('frame_recall'))} | "
            f"{_pct(dec.get('frame_false_ng'))} | {_pct(dec.get('recall_at_fng_5'))} | "
            f"{_cos(e['cosine_min']['anomaly_map'])} | {_cos(e['cosine_mean']['anomaly_map'])} | "
            f"{lat} | {floats} | {target_met(e)} |")


def markdown(report: dict[str, Any]) -> str:
    m = report.get("machine", {})
    lines = [
        "# Precision of trained models: FP32, FP16, INT8 (issue 21)",
        "",
        "Produced by `benchmarks/precision.py` (one call per model, command below each "
        "model; run with `nice -n 10` on a shared machine). ONNX Runtime "
        f"{m.get('onnxruntime', '')} on the CPU: {m.get('cpu_model', '?')}, "
        f"{m.get('cpu_count', '?')} CPUs. Metrics on the test split of the eval data, "
        "the model's own aggregation (from its metadata) at model resolution; change vs "
        "FP32 in points in brackets. "
        "Decisions (edgeas.decisions) at the model's threshold and min_area: frame recall, "
        "false-NG rate, recall at 5% false NG. Cosine: per-image cosine of the anomaly map "
        "to FP32's on the held-out normal images (worst, mean). Latency: median ms, batch 1, "
        "2 threads, interleaved runs. Targets: Q/DQ (and FP16) within 1.0 pAP and worst "
        "cosine >= 0.95; QOperator within 1.0 pAP.",
    ]
    for name, r in report["models"].items():
        fp32 = r["fp32"]
        lines += [
            "", f"## {name}", "",
            f"`{r['command']}`", "",
            f"{r['preset']} ({', '.join(r['classes']) or 'no classes'}); "
            f"{r['calibration_images']} calibration + {r['held_out']} held-out normal images "
            f"of {r['images']}; {r['eval_images']} test images of {r['eval_data']}; "
            f"{r['seconds'] / 60:.0f} min in all.", "",
            "| variant | pAP | DSC | frame recall | false NG | recall @5% FNG | worst cos "
            "| mean cos | ms | kept float | target |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        fm, fd = fp32["metrics"], fp32["decisions"]
        lines.append(f"| fp32 | {_pct(fm['pixel_ap'])} | {_pct(fm['dsc'])} | "
                     f"{_pct(fd.get('frame_recall'))} | {_pct(fd.get('frame_false_ng'))} | "
                     f"{_pct(fd.get('recall_at_fng_5'))} | 1 | 1 | "
                     f"{fp32.get('latency', {}).get('median_ms', '-')} | - | - |")
        for vname, e in r["variants"].items():
            lines.append(_row(vname, e, fp32))
        for k, v in r.get("failures", {}).items():
            lines.append(f"\n{k} failed: `{v}`")
        sens = r.get("sensitivity") or {}
        for fmt, entry in sens.get("formats", {}).items():
            ranking = entry.get("ranking")
            if not ranking:
                continue
            top = ", ".join(f"{b['block']} ({_cos(b['cosine_min']['anomaly_map'])}"
                            + (f", {_delta(b['delta_points']['pixel_ap'])} pAP"
                               if b.get("delta_points") else "") + ")"
                            for b in ranking[:5])
            lines.append(f"\nMost sensitive blocks, {fmt} (each alone INT8 on "
                         f"{sens['ranking_images']['held_out']} held-out + "
                         f"{sens['ranking_images']['eval']} test images): {top}.")
    return "\n".join(lines) + "\n"


def write(out: Path, report: dict[str, Any]) -> None:
    write_results(out, "precision", report, markdown(report))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--merge", type=Path, nargs="*", default=[],
                   help="precision.json files of runs made with another --out, merged in")
    a = p.parse_args()
    path = a.out / "precision.json"
    report = json.loads(path.read_text()) if path.exists() else {"models": {}}
    for other in a.merge:
        data = json.loads(other.read_text())
        report["models"].update(data["models"])
        report["machine"] = data["machine"]
    write(a.out, report)
