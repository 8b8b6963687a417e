"""A CPU station end to end: `edgeas stream` of a 1280x720 clip with events on, FP32 against
INT8 (issue 16 part 5: >= 20 FPS through the INT8 `unias-edge` model on 2 cores).

    python benchmarks/cpu_station.py [--preset unias-edge] [--frames 120] [--size 1280x720]
        [--batches 1,4] [--rounds 2] [--work DIR] [--out benchmarks/results]

The model is `edgeas export --config PRESET --random-init --dynamic-batch` (random
weights cost what trained ones do), its INT8 files come from `edgeas calibrate`
(entropy) on normal images of the built-in set, and the clip is runtime_bench's (test
images of the built-in set scaled to --size, written as mp4). Each measurement is the
real command line, a fresh process: `edgeas stream --model MODEL.onnx --precision
fp32|int8 --video CLIP --events DIR --threshold T --batch B --summary-json S`, the
threshold set so that about 5% of frames are NG (events written). Reported per run: the
pipeline's FPS from the summary (frames over the streaming time) and the whole
command's frames per wall-clock second (start-up, model load and the events' PNGs
included). Runs interleave precisions and batch sizes in each round; medians over
rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import machine_facts
from publish import write_results
from runtime_bench import clip_threshold, export, make_video

from edgeas.runtime.backends import open_backend

PRECISIONS = ("fp32", "int8")
CALIBRATION_IMAGES = 48


def calibrate(fp32: Path, work: Path) -> Path:
    """model.int8.onnx and model.int8.cpu.onnx beside `fp32`, from `edgeas calibrate`."""
    from int8_bench import normal_images

    int8 = fp32.with_name(f"{fp32.stem}.int8.onnx")
    if not int8.with_name(f"{fp32.stem}.int8.cpu.onnx").is_file():
        images = normal_images(work / "normal", CALIBRATION_IMAGES, 224)
        subprocess.run([sys.executable, "-m", "edgeas", "calibrate", "--onnx", str(fp32),
                        "--images", str(images), "-o", str(int8), "--allow-drop"],
                       check=True, capture_output=True)
    return int8


def stream(model: Path, precision: str, clip: Path, threshold: float, batch: int,
           events: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgeas-cpu-station-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "edgeas", "stream", "--model", str(model),
               "--precision", precision, "--video", str(clip), "--events", str(events),
               "--threshold", repr(threshold), "--batch", str(batch), "--device", "cpu",
               "--summary-json", str(summary_path)]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        summary = json.loads(summary_path.read_text())
    frames = int(summary["frames"])
    return {"fps": float(summary["fps"]), "wall_fps": frames / wall, "frames": frames,
            "ng_frames": int(summary["ng_frames"]),
            "stages_p50_ms": {k: round(v["p50_ms"], 2)
                              for k, v in summary["stages"].items() if v}}


def run(preset: str, frames: int, size: tuple[int, int], batches: list[int], rounds: int,
        work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    fp32 = export(preset, work, dynamic_batch=True)
    calibrate(fp32, work)
    clip = make_video(work, frames, size)
    backend = open_backend(fp32, "cpu")
    threshold = clip_threshold(backend, clip, "fused")
    backend.close()
    tasks = [(p, b) for p in PRECISIONS for b in batches]
    runs: dict[str, list[dict]] = {f"{p}/batch{b}": [] for p, b in tasks}
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        for precision, batch in tasks if r % 2 == 0 else tasks[::-1]:
            events = work / "events" / f"{precision}_{batch}_{r}"
            runs[f"{precision}/batch{batch}"].append(
                stream(fp32, precision, clip, threshold, batch, events))
        load.append(os.getloadavg()[0])
    result: dict[str, Any] = {}
    for name, entries in runs.items():
        result[name] = {
            "fps_median": statistics.median(e["fps"] for e in entries),
            "wall_fps_median": statistics.median(e["wall_fps"] for e in entries),
            "fps_rounds": [round(e["fps"], 2) for e in entries],
            "ng_frames": entries[0]["ng_frames"], "frames": entries[0]["frames"],
            "stages_p50_ms": entries[len(entries) // 2]["stages_p50_ms"],
        }
    return {"preset": preset, "frame_size": f"{size[1]}x{size[0]}", "rounds": rounds,
            "threshold": threshold, "load_1m_per_round": [round(v, 2) for v in load],
            "machine": machine_facts(), "runs": result,
            "command": "python benchmarks/cpu_station.py " + " ".join(sys.argv[1:])}


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# A CPU station end to end: `edgeas stream`, FP32 against INT8 (issue 16)",
        "",
        f"`{report['command'].strip()}`: random-init `{report['preset']}`, a "
        f"{report['frame_size']} mp4 clip of the built-in set, events on (about 5% of "
        f"frames NG), {report['rounds']} interleaved rounds, medians. {m['cpu_model']}, "
        f"{m['cpu_count']} CPUs, Python {m['python']}, load (1 min) before and after each "
        f"round {report['load_1m_per_round']}.",
        "",
        "| model | batch | pipeline FPS | command FPS (wall, start-up included) | per-round "
        "FPS | NG frames | p50 ms capture / preprocess / infer / aggregate |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in report["runs"].items():
        precision, batch = name.split("/")
        st = e["stages_p50_ms"]
        cols = " / ".join(str(st.get(k, "-")) for k in ("capture", "preprocess", "infer",
                                                          "aggregate"))
        lines.append(f"| {precision} | {batch.removeprefix('batch')} | {e['fps_median']:.1f} | "
                     f"{e['wall_fps_median']:.1f} | {e['fps_rounds']} | {e['ng_frames']} / "
                     f"{e['frames']} | {cols} |")
    lines += ["", "Target (issue 16): >= 20 FPS end to end through the INT8 model at "
              "1280x720 with events on.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="unias-edge")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the clip")
    parser.add_argument("--batches", default="1,4", help="--batch values, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="keep models and clips here")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    batches = [int(b) for b in args.batches.split(",") if b]
    with tempfile.TemporaryDirectory(prefix="edgeas-cpu-station-") as tmp:
        work = args.work or Path(tmp)
        report = run(args.preset, args.frames, (h, w), batches, args.rounds, work)
    write_results(args.out, "cpu_station", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
