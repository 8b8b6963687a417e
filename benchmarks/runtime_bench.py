"""Pipeline FPS against backend-only FPS on CPU (ONNX Runtime), per preset.

    python benchmarks/runtime_bench.py [--presets tiny,unias-edge,unias-lite] [--frames 60]
        [--rounds 3] [--sizes 1280x720,1920x1080] [--modes fused] [--work DIR]
        [--out benchmarks/results]

Models: `edgeas export --config PRESET --random-init` (random weights cost the same
as trained ones). Frames: a real video file written with OpenCV from the built-in data
set (`make_dataset`), at the data set's 224x224 and, for a camera-like frame, scaled
to the other --sizes. For each preset, every round measures in turn (order alternating
between rounds, same process, same ONNX Runtime session):

- backend: `backend.infer` on one ready batch, `--frames` times (the upper bound);
- pipeline/<mode>: the real `Pipeline` (reader, infer and post threads) streaming the
  video as a station does, with the events writer (PNG frame + mask per NG frame, the
  threshold at the 95th percentile of the clip's image scores: ~5% of frames NG) and the
  live page served with one viewer reading its MJPEG stream (the overlay drawn for it
  every frame, at most 1280 px wide, JPEG-encoded in the server's thread), in each
  aggregation mode of --modes (default: fused, the station's).

The ratio pipeline / backend is computed within each round and the median over rounds
is reported, with the 1-minute load average before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from publish import write_results

from edgeas.postprocess import resolve
from edgeas.runtime.backends import open_backend
from edgeas.runtime.bench import bench_backend, machine_info
from edgeas.runtime.sources import open_source, parse_source

WARMUP = 3
NG_QUANTILE = 0.95  # the threshold: about this share of the clip's frames stays OK


def export(preset: str, work: Path, dynamic_batch: bool = False) -> Path:
    """`edgeas export --config PRESET --random-init` into `work` (kept between runs);
    `dynamic_batch`: with --dynamic-batch, so that a station may run --batch > 1."""
    # named apart: a shared --work must not hand a static model to a batched station
    out = work / f"{preset}{'_dynamic' if dynamic_batch else ''}.onnx"
    if not out.is_file():
        subprocess.run([sys.executable, "-m", "edgeas", "export", "--config", preset,
                        "--random-init", "-o", str(out),
                        *(["--dynamic-batch"] if dynamic_batch else [])],
                       check=True, capture_output=True)
    return out


def make_video(work: Path, frames: int, size: tuple[int, int]) -> Path:
    """Test images of two classes of the built-in set, cycled to `frames`, as an mp4."""
    from edgeas.train.synth import make_dataset

    data = work / "data"
    if not data.is_dir():
        make_dataset(data, classes="tissue,coffee", per_class=8, seed=0)
    images = sorted(data.glob("*/test/*/*.png"))
    h, w = size
    path = work / f"line_{w}x{h}_{frames}.mp4"
    if not path.is_file():
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
        for i in range(frames):
            img = cv2.imread(str(images[i % len(images)]))
            writer.write(img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h)))
        writer.release()
    return path


def clip_threshold(backend, video: Path, mode: str) -> float:
    """The NG_QUANTILE of the clip's image scores (random-init models have no threshold;
    a line sees a few NG frames, not none and not all)."""
    from edgeas.aggregate import aggregate, image_score
    from edgeas.runtime.preprocess import Preprocessor

    pre = Preprocessor(backend.recipe)
    scores = []
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    while ok and len(scores) < 40:
        maps = backend.infer(pre(frame)[None])
        scores.append(image_score(aggregate([m[0] for m in maps], backend.input_hw, None,
                                            mode)[0]))
        ok, frame = cap.read()
    cap.release()
    return float(np.quantile(scores, NG_QUANTILE))


class Viewer:
    """One operator watching the live page: reads its MJPEG stream until stopped."""

    def __init__(self, url: str) -> None:
        import threading

        self.url, self.bytes, self.stop = url, 0, threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        import urllib.request

        for _ in range(50):  # the server starts with the pipeline: retry briefly
            if self.stop.is_set():
                return
            try:
                with urllib.request.urlopen(self.url + "stream.mjpg", timeout=5) as r:
                    while not self.stop.is_set():
                        chunk = r.read(65536)
                        if not chunk:
                            break
                        self.bytes += len(chunk)
                return
            except OSError:
                time.sleep(0.1)

    def __enter__(self) -> Viewer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def station_run(backend, settings, video: Path, frames: int, events: Path) -> dict:
    """`frames` frames of the clip through the pipeline with events and a watched page."""
    from edgeas.runtime.events import EventLog, EventWriter
    from edgeas.runtime.pipeline import Pipeline
    from edgeas.runtime.server import LiveServer

    source = open_source(parse_source(video=str(video)))
    server = LiveServer("127.0.0.1", 0)
    sinks = [EventWriter(EventLog(events, 256, str(video))), server]
    try:
        with Viewer(server.url) as viewer:
            time.sleep(0.2)  # the viewer is connected before the first frame
            summary = Pipeline(backend, source, settings, sinks, max_frames=frames).run()
    finally:
        source.close()
    return {"frames": summary["frames"], "fps": summary["fps"], "stages": summary["stages"],
            "ng": summary["ng_frames"], "viewer_bytes": viewer.bytes}


def one_preset(preset: str, work: Path, frames: int, rounds: int,
               sizes: list[tuple[int, int]], modes: list[str]) -> dict:
    model = export(preset, work)
    backend = open_backend(model, "cpu")
    videos = {s: make_video(work, frames + 2 * WARMUP, s) for s in sizes}
    tasks = ["backend"] + [f"pipeline/{mode}/{w}x{h}" for (h, w) in sizes for mode in modes]
    taus = {mode: clip_threshold(backend, videos[sizes[0]], mode) for mode in modes}
    runs: dict[str, list[dict]] = {t: [] for t in tasks}
    loads = [os.getloadavg()[0]]
    bench_backend(backend, WARMUP, 1)
    for r in range(rounds):
        for task in tasks if r % 2 == 0 else tasks[::-1]:
            if task == "backend":
                runs[task].append(bench_backend(backend, frames, 1, warmup=1))
                continue
            _, mode, size = task.split("/")
            w, h = (int(v) for v in size.split("x"))
            settings = resolve(backend.record, taus[mode], None, mode)
            events = work / "events" / f"{preset}_{mode}_{size}_{r}"
            # a short run warms the pipeline's buffers, then `frames` are timed
            station_run(backend, settings, videos[(h, w)], WARMUP, events)
            runs[task].append(station_run(backend, settings, videos[(h, w)], frames, events))
        loads.append(os.getloadavg()[0])
    desc = backend.describe()
    backend.close()
    result = {"model": str(model), **desc, "rounds": rounds, "frames": frames,
              "thresholds": taus, "load_1m_per_round": [round(v, 2) for v in loads],
              "tasks": {}}
    backend_fps = [x["fps"] for x in runs["backend"]]
    for task in tasks:
        fps = [x["fps"] for x in runs[task]]
        entry = {"fps_median": statistics.median(fps), "fps_rounds": [round(v, 2) for v in fps]}
        if task != "backend":
            ratios = [p / b for p, b in zip(fps, backend_fps)]
            entry["ratio_median"] = statistics.median(ratios)
            entry["ratio_rounds"] = [round(v, 3) for v in ratios]
            middle = runs[task][len(runs[task]) // 2]
            stages = middle["stages"]
            entry["stages_p50_ms"] = {k: round(v["p50_ms"], 2) for k, v in stages.items() if v}
            entry["stages_p99_ms"] = {k: round(v["p99_ms"], 2) for k, v in stages.items() if v}
            entry["ng_frames"] = middle["ng"]
            entry["viewer_bytes"] = middle["viewer_bytes"]
        else:
            lat = [x["latency_per_batch"]["p50_ms"] for x in runs[task]]
            entry["latency_p50_ms_median"] = statistics.median(lat)
        result["tasks"][task] = entry
    return result


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Runtime benchmark: pipeline FPS vs backend-only FPS (CPU, ONNX Runtime)",
        "",
        f"{report['frames']} frames per measurement, {report['rounds']} interleaved rounds, "
        f"median over rounds; ratios are taken within each round. {m.get('cpu', '?')}, "
        f"{m['cpus']} CPUs, Python {m['python']}, onnxruntime {report['onnxruntime']}, "
        f"OpenCV {report['opencv']}. The machine is shared: 1-minute load average "
        f"{report['load_1m'][0]:.2f} before, {report['load_1m'][1]:.2f} after. "
        "Generated by `benchmarks/runtime_bench.py`; random-init models from "
        "`edgeas export --random-init`, frames from the built-in data set.",
        "",
        "| preset | measurement | FPS (median) | pipeline / backend | per-round ratios | "
        "NG frames | p50 ms capture / preprocess / infer / aggregate / render / latency |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in report["presets"].items():
        for task, e in res["tasks"].items():
            if task == "backend":
                lines.append(f"| {name} | backend only (input {res['input_size'][0]}) | "
                             f"{e['fps_median']:.1f} | - | - | - | infer "
                             f"{e['latency_p50_ms_median']:.1f} |")
                continue
            s = e["stages_p50_ms"]
            cols = " / ".join(f"{s.get(k, 0):.1f}" for k in
                              ("capture", "preprocess", "infer", "aggregate", "render", "latency"))
            _, mode, size = task.split("/")
            lines.append(f"| {name} | station, {mode}, frames {size} | {e['fps_median']:.1f} | "
                         f"**{e['ratio_median']:.2f}** | {e['ratio_rounds']} "
                         f"| {e['ng_frames']} | {cols} |")
    lines += [
        "",
        "Target (issue 13): station >= 0.95 x backend for every preset at 1280x720 and",
        "1920x1080 with events and the watched live page on. The pipeline overlaps capture",
        "and preprocessing (reader thread) and aggregation, decision, drawing and sinks",
        "(post thread) with inference; ONNX Runtime releases the GIL while it runs. On 2",
        "cores inference already uses both, so whatever the other stages cost in CPU time",
        "comes out of inference: the ratio approaches 1 as inference dominates. Decisions",
        "are made at the model's size; the frame-size work left is decoding the video, the",
        "overlay for the page (at most 1280 px wide) and its JPEG, and the PNGs of NG",
        "frames. `infer` in the station rows is slower than backend-only for the same",
        "reason; stage p50s include waiting for a core that ONNX Runtime's threads hold.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,unias-edge,unias-lite")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1280x720,1920x1080",
                        help="frame sizes WIDTHxHEIGHT, comma-separated")
    parser.add_argument("--modes", default="fused", help="aggregation modes, comma-separated")
    parser.add_argument("--work", type=Path, default=None, help="keep models and videos here")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    sizes = []
    for text in args.sizes.split(","):
        w, h = (int(v) for v in text.lower().split("x"))
        sizes.append((h, w))
    import onnxruntime

    work = args.work or Path(tempfile.mkdtemp(prefix="edgeas-runtime-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    presets = {p: one_preset(p, work, args.frames, args.rounds, sizes, modes)
               for p in args.presets.split(",")}
    report = {
        "frames": args.frames, "rounds": args.rounds, "presets": presets,
        "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
        "machine": dict(machine_info(), platform=platform.platform()),
        "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_results(args.out, "runtime", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
