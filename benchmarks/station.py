"""`make demo` as a benchmark: per-stage time and the station's calls on the demo clip.

The demo chain's wall time per stage and the station's OK/NG calls on the demo clip
against the clip's ground truth (issue 12).

    python benchmarks/station.py [--out DIR] [--config demo-cpu] [--per-class 32]
        [--epochs N] [--frame 1280x720] [--start STAGE] [--results benchmarks/results]

Runs the commands of the Makefile's demo target (synth, train, eval, export --precision
fp16, commissioning: synth of fresh normal parts, their camera clip, threshold fit on it;
calibrate, synth-clip, stream with --serve/--events/--record) one after the other
by subprocess, in --out (default: a temporary folder), and times each (wall and CPU
seconds of the child, with the load average around it: the host is shared).
`--start STAGE` reuses the earlier stages' outputs in --out.

Then it measures the decisions three ways:
- station: the frames the stream called NG (the `frame` of every line of
  events/events.jsonl) against the clip's JSON: recall (defective frames NG) and
  false-NG rate (clean frames NG); cross-checked with the stream's own summary;
- replay: the exported model over the held-out normal images of the run (the split
  the threshold was fitted on) and over the decoded clip frames, maps at model size;
  image scores under the decision rule (station_scores.py) for several min_area
  values; tau fitted here on the held-out scores (<= 1 % of them NG, i.e. their max
  when there are fewer than 100) and the station's own tau, each applied to the clip;
- curve: recall on the clip at 0/1/2/5/10 % false NG (tau chosen on the clip itself:
  an oracle, the best any threshold could do with these scores) and image AUROC.
Writes results/station.json and .md (benchmarks/publish.write_results).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import loadavg, machine_facts  # noqa: E402
from publish import write_results  # noqa: E402
from station_report import markdown  # noqa: E402
from station_scores import auroc, decision_rates, fit_threshold, rates, recall_at, scores  # noqa: E402

STAGES = ("synth", "train", "eval", "export", "commission_data", "commission_clip", "refit",
          "calibrate", "clip", "stream")
TARGET = {"recall": 0.95, "false_ng": 0.02, "wall_s": 600.0}
MIN_AREAS = (0, 16, 64)
BATCH = 8


def demo_commands(out: Path, args: argparse.Namespace, serve: str) -> dict[str, list[str]]:
    """The Makefile's demo target, stage by stage, with this run's recipe."""
    d = str(out)
    clip = [f"{d}/line.mp4"] + (["--frame", args.frame] if args.frame else [])
    clip += shlex.split(args.clip_extra)
    return {
        "synth": ["edgeas", "synth", f"{d}/data", "--per-class", str(args.per_class),
                  "--seed", "0"],
        "train": ["edgeas", "train", "--config", args.config, "--data", f"{d}/data",
                  "--out", f"{d}/run"] + (["--epochs", str(args.epochs)] if args.epochs else []),
        "eval": ["edgeas", "eval", "--checkpoint", f"{d}/run/last.pt", "--data", f"{d}/data",
                 "--out", f"{d}/eval"],
        "export": ["edgeas", "export", "--checkpoint", f"{d}/run/last.pt",
                   "-o", f"{d}/model.onnx", "--precision", "fp16"],
        # commissioning: fresh normal parts (another seed) through the same camera path,
        # the threshold refitted on those frames
        "commission_data": ["edgeas", "synth", f"{d}/commission", "--per-class", "20",
                            "--seed", "1"],
        "commission_clip": ["edgeas", "synth-clip", f"{d}/commission", "-o",
                            f"{d}/commission.mp4", "--split", "train", "--hold", "1"]
        + (["--frame", args.frame] if args.frame else []) + shlex.split(args.clip_extra),
        "refit": ["edgeas", "threshold", "fit", "--model", f"{d}/model.onnx", "--images",
                  f"{d}/commission.mp4"],
        "calibrate": ["edgeas", "calibrate", "--onnx", f"{d}/model.onnx", "--images",
                      f"{d}/data", "--eval-data", f"{d}/data", "-o", f"{d}/model.int8.onnx"],
        "clip": ["edgeas", "synth-clip", f"{d}/data", "-o", *clip],
        "stream": ["edgeas", "stream", "--model", f"{d}/model.onnx", "--video",
                   f"{d}/line.mp4", "--serve", serve, "--events", f"{d}/events",
                   "--record", f"{d}/annotated.mp4", "--summary-json", f"{d}/summary.json"],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_stage(name: str, cmd: list[str], log_dir: Path) -> dict[str, Any]:
    """Run one stage; its output goes to LOG_DIR/NAME.log (shown on failure)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = loadavg()
    started = time.perf_counter()
    log = log_dir / f"{name}.log"
    with log.open("w") as handle:
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row = {"stage": name, "command": shlex.join(cmd), "wall_s": round(wall, 1),
           "cpu_s": round(cpu, 1), "load_before": load, "load_after": loadavg()}
    print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    if code:
        sys.exit(f"stage {name} failed (exit {code}):\n{log.read_text()[-3000:]}")
    return row


# --------------------------------------------------------------------------- measuring


def clip_labels(clip_json: Path) -> np.ndarray:
    doc = json.loads(clip_json.read_text())
    return np.array([f["defect"] for f in sorted(doc["frames"], key=lambda f: f["frame"])])


def station_calls(events: Path, n_frames: int) -> np.ndarray:
    """NG per frame from events.jsonl (the stream writes one line per NG frame)."""
    ng = np.zeros(n_frames, bool)
    log = events / "events.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        ng[json.loads(line)["frame"]] = True
    return ng


def model_maps(backend, images: list[np.ndarray], mode: str) -> list[np.ndarray]:
    """The maps the station decides on, at model size, of uint8 BGR images through the
    exported model: the decision head's when the model has one, else the aggregated map."""
    from edgeas.aggregate import aggregate
    from edgeas.decision_head import head_map, split_outputs
    from edgeas.postprocess import record_setting
    from edgeas.preprocess import preprocess_bgr

    recipe = backend.record.preprocessing
    _, smoothing, use = record_setting(backend.record, mode)  # the model's own setting
    maps = []
    step = backend.batch or BATCH  # a static-batch export takes exactly its batch
    for s in range(0, len(images), step):
        batch = np.stack([preprocess_bgr(im, recipe) for im in images[s : s + step]])
        levels, grids = split_outputs(backend.record, backend.infer(batch))
        head = backend.record.model.head
        for j in range(len(batch)):
            if grids is not None:
                maps.append(head_map(grids[j], recipe.input_size, head.sigma))
                continue
            amap, _ = aggregate([lv[j] for lv in levels], recipe.input_size, None, mode,
                                smoothing, use)
            maps.append(amap)
    return maps


def read_frames(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


def held_out_images(out: Path) -> list[np.ndarray]:
    """The run's held-out normal images: the split train/run.py fitted the threshold on."""
    from edgeas.config import load_config
    from edgeas.imageio import read_bgr
    from edgeas.train.data import index_dataset, split_train_val

    cfg = load_config(str(out / "run" / "config.yaml"))
    _, val = split_train_val(index_dataset(out / "data").train, cfg.train.val_fraction,
                             cfg.train.seed)
    return [read_bgr(s.path) for s in val]


def replay(out: Path, defect: np.ndarray, min_areas: tuple[int, ...]) -> dict[str, Any]:
    """Decision figures from the exported model's maps at model resolution (module doc)."""
    from edgeas.runtime.backends import open_backend

    backend = open_backend(out / "model.onnx", "cpu")
    rec = backend.record
    mode = rec.aggregation.mode
    normal = model_maps(backend, held_out_images(out), mode)
    clip = model_maps(backend, read_frames(out / "line.mp4"), mode)
    if len(clip) != len(defect):
        raise SystemExit(f"decoded {len(clip)} frames, the clip's JSON lists {len(defect)}")
    station_area = int(rec.threshold.min_area)
    result: dict[str, Any] = {
        "mode": mode, "held_out_images": len(normal),
        "record_threshold": {"value": rec.threshold.value, "policy": rec.threshold.policy,
                             "param": rec.threshold.param, "min_area": station_area,
                             "margin": getattr(rec.threshold, "margin", None)},
        "by_min_area": {},
    }
    for area in sorted({*min_areas, station_area}):
        held, frames = scores(normal, area), scores(clip, area)
        tau = fit_threshold(held, 0.01)
        row = {"auroc": auroc(frames, defect), "recall_at_false_ng": recall_at(frames, defect),
               "fitted_tau": tau, "fitted": rates(frames, defect, tau),
               "held_out_max": float(held.max()),
               "clean_max": float(frames[~defect].max()) if (~defect).any() else None}
        if area == station_area and rec.threshold.value is not None:
            row["record"] = rates(frames, defect, rec.threshold.value)
        result["by_min_area"][str(area)] = row
    backend.close()
    return result


def epoch_seconds(out: Path) -> list[float]:
    """Seconds of each training epoch (run/metrics.jsonl): on a shared host they show
    which part of the train stage's wall time was contention."""
    log = out / "run" / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return [round(float(json.loads(line)["seconds"]), 1) for line in lines]


def measure(out: Path, min_areas: tuple[int, ...]) -> dict[str, Any]:
    defect = clip_labels(out / "line.json")
    station = decision_rates(station_calls(out / "events", len(defect)), defect)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    result = {"frames": len(defect), "station": station,
              "stream_summary_decisions": summary.get("decisions"),
              "replay": replay(out, defect, min_areas)}
    doc = json.loads((out / "line.json").read_text())
    result["clip"] = {k: doc[k] for k in ("size", "fps", "geometry") if k in doc}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--config", default="demo-cpu")
    parser.add_argument("--per-class", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--frame", default="1280x720", help="clip frame WxH ('' : image size)")
    parser.add_argument("--clip-extra", default="",
                        help="more synth-clip options, e.g. '--fill 0.9 --keep-aspect'")
    parser.add_argument("--start", choices=STAGES, default="synth",
                        help="reuse the earlier stages' outputs in --out")
    parser.add_argument("--min-areas", default=",".join(map(str, MIN_AREAS)))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--stem", default="station")
    args = parser.parse_args()
    min_areas = tuple(int(v) for v in args.min_areas.split(","))
    with tempfile.TemporaryDirectory(prefix="edgeas-station-") as tmp:
        out = (args.out or Path(tmp) / "demo").resolve()
        if args.start == "synth" and out.exists() and any(out.iterdir()):
            sys.exit(f"{out} is not empty: choose a new --out, or --start a later stage")
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        commands = demo_commands(out, args, f"127.0.0.1:{free_port()}")
        todo = STAGES[STAGES.index(args.start):]
        # a rerun from a later stage: the events log appends, so an old one would count
        shutil.rmtree(out / "events", ignore_errors=True)
        rows = [run_stage(name, commands[name], logs) for name in todo]
        decisions = measure(out, min_areas)
        epochs_s = epoch_seconds(out)
    wall = sum(r["wall_s"] for r in rows)
    station = decisions["station"]
    report = {
        "command": "python benchmarks/station.py " + shlex.join(sys.argv[1:]),
        "machine": {**machine_facts(), "nice": os.nice(0)},
        "recipe": {"config": args.config, "per_class": args.per_class, "epochs": args.epochs,
                   "frame": args.frame or None, "clip_extra": args.clip_extra,
                   "stages_run": list(todo)},
        "stages": rows, "wall_s": round(wall, 1), "train_epoch_s": epochs_s,
        "cpu_s": round(sum(r["cpu_s"] for r in rows), 1),
        "target": TARGET,
        "meets_target": {"recall": station["recall"] >= TARGET["recall"],
                         "false_ng": station["false_ng"] <= TARGET["false_ng"],
                         "wall_s": wall <= TARGET["wall_s"] if todo == STAGES else None},
        "decisions": decisions,
    }
    write_results(args.results, args.stem, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
