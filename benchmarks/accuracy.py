"""Segmentation quality of decoder variants under one fixed training budget (issue 7).

    python benchmarks/accuracy.py --configs unias-lite,unias-edge --width 64 --seeds 0,1
        [--epochs 2] [--classes brick,tissue,coins,coffee] [--per-class 24] [--data-seed 0]
        [--batch 8] [--lr 0.001] [--work /tmp/edgeas-accuracy] [--out benchmarks/results]
        [--merge] [--report-only]

A spec is a preset or YAML plus optional `+dotted.key=value` overrides (YAML values),
e.g. `unias-edge+model.head=upsample`. A row is one spec at one budget; the first spec
is the reference the others are compared with at equal budget. All rows share one
built-in data set (`edgeas synth`), one recipe and one budget (--epochs x --batch
optimizer steps) and are trained once per seed in --seeds (the run-to-run spread).

The reference decoder at full width costs seconds per image per training step on a
2-core CPU, so rows are trained at decoder width --width: every decoder width (hidden,
conv, mask, FFNs, pixel_fine_dims, and the GroupNorm group count, to keep channels per
group) is scaled by width / hidden_dim. GFLOPs are reported for the trained (reduced)
decoder and for the config at its own full width. Runs are cached in --work (an
interrupted run resumes); --merge keeps the other rows of an existing accuracy.json.

Per row: `edgeas train`, `edgeas eval` (pAP, DSC, deployable DSC, pixel and image AUROC,
per class and mean), decoder parameters and GFLOPs (model_bench.py's counter), ONNX
Runtime CPU latency of the exported trained model (edgeas's exporter, batch 1, 2
threads; measured alone, so it moves with the machine's load), training time from the
run logs, and the median time of one training step measured interleaved with the
reference's (the comparable figure on a shared host).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_report import DECISIONS, METRICS, summarise, write  # noqa: E402
from flops import EXTRA_FORMULAS, flop_count, frozen  # noqa: E402
from machine import loadavg, machine_facts  # noqa: E402

from edgeas.config import EdgeasConfig, config_from_dict, load_config  # noqa: E402
from edgeas.fileio import atomic_write_text  # noqa: E402

# Widths scaled together by --width; group_norm_groups keeps channels per group.
SCALED = ("hidden_dim", "conv_dim", "mask_dim", "ffn_dim", "pixel_ffn_dim", "group_norm_groups")
THREADS = 2


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`base+model.head=deconv+model.ffn_dim=256` -> ("base", nested overrides)."""
    base, *items = spec.split("+")
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"config spec {spec!r}: override {item!r} is not key=value")
        *parents, leaf = key.split(".")
        node = overrides
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return base, overrides


def full_config(spec: str) -> EdgeasConfig:
    base, overrides = parse_spec(spec)
    return load_config(base, overrides)


def scale_widths(model: dict[str, Any], width: int) -> dict[str, Any]:
    """The model section with every decoder width scaled by width / hidden_dim."""
    out, den = dict(model), model["hidden_dim"]
    for key in (*SCALED, "pixel_fine_dims"):
        values = model[key] if key == "pixel_fine_dims" else [model[key]]
        if any(v * width % den or v * width < den for v in values):
            raise SystemExit(f"model.{key} {model[key]} does not scale to width {width}")
        scaled = [v * width // den for v in values]
        out[key] = scaled if key == "pixel_fine_dims" else scaled[0]
    return out


def run_config(spec: str, width: int, train: dict[str, Any]) -> dict[str, Any]:
    """The full config dict that is trained: reduced width, the shared recipe."""
    data = full_config(spec).to_dict()
    data["model"] = scale_widths(data["model"], width)
    data["train"].update(train)
    config_from_dict(data, f"{spec} at width {width}")  # validate before spending compute
    return data


def decoder_cost(cfg: EdgeasConfig) -> dict[str, float]:
    """Decoder parameters (M) and forward GFLOPs at the config's input size, batch 1."""
    import torch

    from edgeas.train.model.unias import build_model

    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False).eval()
    image = torch.randn(1, 3, *cfg.input_size)
    with torch.no_grad():
        feats = model.backbone(image)
    with frozen(model):
        fc = flop_count(lambda: model.decoder(feats), EXTRA_FORMULAS)
    params = sum(p.numel() for p in model.decoder.parameters())
    return {"decoder_params_m": round(params / 1e6, 3),
            "decoder_gflops": round(fc.get_total_flops() / 1e9, 3)}


def slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


def edgeas(*args: str) -> float:
    """Run an edgeas command (its output goes to this script's); returns wall seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgeas", *args], check=True)
    return time.perf_counter() - t0


def make_data(work: Path, classes: str, per_class: int, seed: int) -> Path:
    data = work / f"data_{slug(classes)}_n{per_class}_s{seed}"
    if not data.exists():
        edgeas("synth", str(data), "--classes", classes, "--per-class", str(per_class),
               "--seed", str(seed))
    return data


def _resumable(cfg_path: Path, cfg: dict[str, Any], train_dir: Path) -> bool:
    """An interrupted run of this very config (its epoch count aside) resumes."""
    if not (cfg_path.exists() and (train_dir / "last.pt").exists()):
        return False
    old = yaml.safe_load(cfg_path.read_text())
    strip = lambda c: {**c, "train": {**c["train"], "epochs": 0}}  # noqa: E731
    log = train_dir / "metrics.jsonl"
    done = sum(1 for _ in log.open()) if log.exists() else 0
    return strip(old) == strip(cfg) and done <= cfg["train"]["epochs"]


def train_and_eval(spec: str, seed: int, width: int, train: dict[str, Any], data: Path,
                   work: Path) -> dict[str, Any]:
    run = work / "runs" / f"{slug(spec)}_w{width}_e{train['epochs']}_s{seed}"
    if (run / "result.json").exists():
        return json.loads((run / "result.json").read_text())
    cfg = run_config(spec, width, {**train, "seed": seed})
    cfg_path = run / "config.yaml"
    resume = run.exists() and _resumable(cfg_path, cfg, run / "train")
    if run.exists() and not resume:
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    load_before = loadavg()
    args = ["--config", str(cfg_path), "--data", str(data), "--out", str(run / "train")]
    if resume:  # exact resume, to the budget of this call
        args += ["--resume", "--epochs", str(train["epochs"])]
    train_wall = edgeas("train", *args)
    load_after = loadavg()
    epochs = [json.loads(line) for line in (run / "train" / "metrics.jsonl").open()]
    edgeas("eval", "--checkpoint", str(run / "train" / "last.pt"), "--data", str(data),
           "--out", str(run / "eval"))
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    settings = run / "eval" / "aggregation.json"  # eval's smoothing comparison (issue 13)
    result = {
        "aggregation": json.loads(settings.read_text()) if settings.exists() else None,
        "spec": spec, "seed": seed, "width": width, "run": str(run),
        # decision metrics exist in runs evaluated since issue 12 (older runs lack them)
        "metrics": {cls: {m: v[m] for m in (*METRICS, *DECISIONS) if m in v}
                    for cls, v in metrics.items()},
        "steps": epochs[-1]["step"], "final_loss": epochs[-1]["loss"],
        # A resumed run's log misses the part of the epoch that ran before the stop.
        "train_loop_s": round(sum(e["seconds"] for e in epochs), 1),
        "train_command_s": round(train_wall, 1), "resumed": resume,
        "load_before_after": [load_before, load_after],
    }
    atomic_write_text(run / "result.json", json.dumps(result, indent=2))
    return result


def step_seconds(cfgs: dict[str, dict[str, Any]], batch: int, rounds: int = 3) -> dict:
    """Median seconds of one training step (backbone, decoder forward/backward, AdamW) per
    config, interleaved round by round so that every config sees the same machine load."""
    import torch

    from edgeas.train.model.unias import build_model
    from edgeas.train.trainer import make_optimizer

    torch.manual_seed(0)
    models = {}
    for spec, data in cfgs.items():
        cfg = config_from_dict(data, spec)
        model = build_model(cfg, pretrained=False)
        model.decoder.train()
        models[spec] = (model, make_optimizer(cfg, list(model.decoder.parameters())))
    images = torch.randn(batch, 3, *cfg.input_size)
    times: dict[str, list[float]] = {spec: [] for spec in cfgs}
    for i in range(1 + rounds):  # round 0 warms up allocators and kernels
        for spec, (model, opt) in models.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                feats = model.backbone(images)
            loss = model.loss(model.decoder(feats))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:
                times[spec].append(time.perf_counter() - t0)
    return {spec: round(statistics.median(t), 2) for spec, t in times.items()}


def ort_latency(checkpoint: Path, runs: int, warmup: int = 3) -> dict[str, Any]:
    """Export the trained checkpoint with edgeas's exporter; median ORT CPU latency, batch 1."""
    from edgeas.export import verify
    from edgeas.export.command import checkpoint_model
    from edgeas.export.onnx_export import export_model
    from edgeas.ort import open_session

    model, record = checkpoint_model(checkpoint)
    result = export_model(model, record, batch=1)
    session = open_session(result.model.SerializeToString(), threads=THREADS, inter_threads=1,
                           quiet=False)
    image = verify.sample_images(record, 1)
    times, load = [], loadavg()
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        session.run(None, {"image": image})
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return {"median_ms": round(float(np.median(ms)), 1), "runs": runs, "threads": THREADS,
            "p90_ms": round(float(np.percentile(ms, 90)), 1), "load_before": load}


def baseline_row(name: str, data: Path, spec: str, coreset: float) -> dict[str, Any]:
    """A training-free peer on the same data, backbone, held-out split and threshold
    policy as the first spec (benchmarks/patchcore.py)."""
    if name != "patchcore":
        raise SystemExit(f"unknown baseline {name!r} (known: patchcore)")
    import patchcore

    cfg = full_config(spec)
    t = cfg.threshold
    result = patchcore.run(data, cfg.backbone.name, patchcore.DEFAULT_TAPS, coreset,
                           cfg.train.val_fraction, cfg.train.seed, min_area=t.min_area,
                           target=t.param if t.policy == "frame_fpr" and t.param else 0.01)
    result["label"] = f"PatchCore-style kNN ({cfg.backbone.name}, coreset {coreset:g})"
    return result


def merge_runs(old: dict[str, Any] | None, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This call's runs plus the old row's runs of other seeds (sorted by seed), so that
    rerunning some seeds of a row keeps the rest."""
    seeds = {r["seed"] for r in runs}
    kept = [r for r in (old or {}).get("runs", []) if r["seed"] not in seeds]
    return sorted([*kept, *runs], key=lambda r: r["seed"])


def add_baselines(json_path: Path, a: argparse.Namespace) -> None:
    """The --baselines on the data of accuracy.json's settings, its rows kept as they are."""
    report = json.loads(json_path.read_text())
    s = report["settings"]
    data = make_data(a.work, s["classes"], s["per_class"], s["data_seed"])
    command = "python " + " ".join(shlex.quote(v) for v in sys.argv)
    for name in filter(None, (b.strip() for b in a.baselines.split(","))):
        row = baseline_row(name, data, report["reference"], a.coreset)
        report.setdefault("baselines", {})[name] = dict(row, command=command)
    write(a.out, report)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="unias-lite,unias-edge", help="first = reference")
    p.add_argument("--seeds", default="0,1", help="training seeds of every row")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--classes", default="brick,tissue,coins,coffee")
    p.add_argument("--per-class", type=int, default=24)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latency-runs", type=int, default=20)
    p.add_argument("--work", type=Path, default=Path("/tmp/edgeas-accuracy"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--merge", action="store_true", help="keep accuracy.json's other rows")
    p.add_argument("--report-only", action="store_true", help="only rewrite accuracy.md")
    p.add_argument("--baselines", default="", help="training-free peers to add: patchcore")
    p.add_argument("--baselines-only", action="store_true",
                   help="add --baselines to accuracy.json's rows without training any")
    p.add_argument("--coreset", type=float, default=0.1, help="PatchCore coreset fraction")
    a = p.parse_args()
    json_path = a.out / "accuracy.json"
    if a.report_only:
        report = json.loads(json_path.read_text())
        for row in report["rows"].values():
            row["summary"] = summarise(row["runs"])
        return write(a.out, report)
    if a.baselines_only:
        return add_baselines(json_path, a)
    specs = [c.strip() for c in a.configs.split(",") if c.strip()]
    seeds = [int(v) for v in a.seeds.split(",")]
    # A constant rate: lr_step_epochs far beyond the budget.
    train = {"epochs": a.epochs, "batch": a.batch, "micro_batch": a.batch, "lr": a.lr,
             "lr_step_epochs": 1000, "save_every": 0, "val_every": 0}
    settings = {"classes": a.classes, "per_class": a.per_class, "data_seed": a.data_seed,
                "batch": a.batch, "lr": a.lr, "width": a.width,
                "backbone": full_config(specs[0]).backbone.name,
                "input_size": full_config(specs[0]).input_size}
    old = json.loads(json_path.read_text()) if a.merge and json_path.exists() else {}
    if old and {k: old["settings"][k] for k in settings} != settings:
        raise SystemExit("--merge: data, recipe or width differ from accuracy.json's")
    a.work.mkdir(parents=True, exist_ok=True)
    data = make_data(a.work, a.classes, a.per_class, a.data_seed)
    command = "python " + " ".join(shlex.quote(v) for v in sys.argv)
    rows: dict[str, Any] = dict(old.get("rows", {}))
    for spec in specs:
        label = f"{spec} [{a.epochs} ep]"
        runs = merge_runs(rows.get(label) if a.merge else None,
                          [train_and_eval(spec, seed, a.width, train, data, a.work)
                           for seed in seeds])
        rows[label] = {
            "spec": spec, "epochs": a.epochs, "command": command, "runs": runs,
            "summary": summarise(runs), "config_trained": run_config(spec, a.width, train),
            "reduced": decoder_cost(config_from_dict(run_config(spec, a.width, train), spec)),
            "full_width": decoder_cost(full_config(spec)),
            "ort": ort_latency(Path(runs[0]["run"]) / "train" / "last.pt", a.latency_runs),
        }
    # The reference is always timed alongside, so that every row has a comparable pair.
    reference = old.get("reference", specs[0])
    timed = list(dict.fromkeys([reference, *specs]))
    load = loadavg()
    steps = step_seconds({spec: run_config(spec, a.width, train) for spec in timed}, a.batch)
    for spec in specs:
        rows[f"{spec} [{a.epochs} ep]"]["train_step_s"] = {
            "median_s": steps[spec], "reference_median_s": steps[reference], "rounds": 3,
            "interleaved_with": timed, "load_before": load}
    test_dir = data / a.classes.split(",")[0] / "test"
    settings["test_per_class"] = sum(1 for _ in test_dir.rglob("*.png"))
    baselines = dict(old.get("baselines", {}))
    for name in filter(None, (b.strip() for b in a.baselines.split(","))):
        baselines[name] = baseline_row(name, data, specs[0], a.coreset)
        baselines[name]["command"] = command
    write(a.out, {"machine": machine_facts(), "settings": settings,
                  "reference": reference, "rows": rows, "baselines": baselines})


if __name__ == "__main__":
    main()
