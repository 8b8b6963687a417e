"""Many cameras on one CPU: N file sources through one batched station against N separate
one-source stations (issue 17 part 5).

    python benchmarks/scale.py [--preset unias-edge] [--counts 1,2,4,8] [--frames 40]
        [--frame 1280x720] [--work DIR] [--out benchmarks/results]

The model: `edgeas export --config PRESET --random-init --dynamic-batch` (random weights
cost what trained ones do), its threshold set so that a few frames are NG. The sources:
N copies of one clip (`edgeas synth-clip` of the built-in data, --frames frames), read as
files (no frame dropped), events on. For each N, in turn:
- batched: one `edgeas stream --model M CLIP_1 ... CLIP_N` (each round's frames of all
  sources in one ONNX Runtime call);
- separate: N `edgeas stream --model M CLIP_i` processes started together (what N
  stations on one box would do; their ONNX Runtime threads compete for the cores).
Throughput = all frames / wall time of the whole measurement (process start to the last
exit, model loading included, the same for both); per-source latency p50/p99 from the
stations' summaries (frame read to decision). The machine is shared: the 1-minute load
average before and after each measurement is recorded. Results: scale.json and scale.md.
With --triton: the same batched station with its model served by Triton Inference
Server (`edgeas export-triton --max-batch 8`, dynamic batching; the tests' server:
PyTriton's tritonserver running the ONNX model with ONNX Runtime in its Python backend,
`make triton-server`, on this same CPU) through `triton://` (gRPC), against the direct
batched station.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import loadavg, machine_facts  # noqa: E402
from publish import write_results  # noqa: E402

EDGEAS = [sys.executable, "-m", "edgeas"]


def _run(args: list[str], cwd: Path) -> None:
    done = subprocess.run(EDGEAS + args, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"edgeas {shlex.join(args)} failed:\n{done.stderr[-2000:]}")


def prepare(work: Path, preset: str, frames: int, frame: str) -> tuple[Path, Path]:
    """(model, clip) in `work`, made once."""
    model, clip = work / f"{preset}.onnx", work / f"clip_{frame}_{frames}.mp4"
    if not model.exists():
        _run(["export", "--config", preset, "--random-init", "--dynamic-batch",
              "-o", str(model)], work)
    if not clip.exists():
        data = work / "data"
        if not data.exists():
            _run(["synth", str(data), "--per-class", "8", "--seed", "0"], work)
        _run(["synth-clip", str(data), "-o", str(clip), "--frame", frame, "--hold", "1",
              "--limit", str(frames)], work)
    return model, clip


def threshold_for(model: Path, clip: Path, work: Path) -> float:
    """The 90th percentile of the clip's frame scores (every frame NG at threshold 0, each
    event line holds its score): some events are written, as on a line, not a flood."""
    events = work / "probe_events"
    _run(["stream", "--model", str(model), str(clip), "--threshold", "0", "--events",
          str(events), "--device", "cpu"], work)
    lines = (events / "events.jsonl").read_text().splitlines()
    scores = sorted(json.loads(line)["score"] for line in lines if line.strip())
    return float(scores[int(0.9 * (len(scores) - 1))])


def clips(clip: Path, count: int, work: Path) -> list[Path]:
    """`count` names for the same clip (links): a source is named after its file, and two
    sources of one station must not share a name."""
    out = []
    for i in range(count):
        link = work / f"cam{i}{clip.suffix}"
        if not link.exists():
            link.symlink_to(clip)
        out.append(link)
    return out


def _latency(summary: dict[str, Any]) -> list[dict[str, float]]:
    if summary.get("sources"):
        return [s.get("latency") or {} for s in summary["sources"]]
    lat = (summary.get("stages") or {}).get("latency") or {}
    return [{"p50_ms": lat.get("p50_ms"), "p99_ms": lat.get("p99_ms")}] if lat else []


def measure(model: Path | str, clip: Path, count: int, threshold: float, work: Path,
            batched: bool) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{'b' if batched else 's'}{count}-", dir=work))
    common = ["--model", str(model), "--threshold", f"{threshold:.6g}"]
    if "://" not in str(model):  # a served model runs where the server is
        common += ["--device", "cpu"]
    before = loadavg()
    start = time.perf_counter()
    if batched:
        procs = [subprocess.Popen(
            EDGEAS + ["stream", *common, *[str(c) for c in clips(clip, count, work)],
                      "--events", str(run_dir / "events"),
                      "--summary-json", str(run_dir / "summary.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    else:
        procs = [subprocess.Popen(
            EDGEAS + ["stream", *common, str(clip), "--events", str(run_dir / f"events{i}"),
                      "--summary-json", str(run_dir / f"summary{i}.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i in range(count)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - start
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise SystemExit(f"a station failed ({p.returncode}):\n{err[-2000:]}")
    summaries = [json.loads(f.read_text()) for f in sorted(run_dir.glob("summary*.json"))]
    frames = sum(s["frames"] for s in summaries)
    lat = [x for s in summaries for x in _latency(s) if x.get("p50_ms") is not None]
    return {
        "sources": count, "frames": frames, "wall_s": round(wall, 2),
        "fps": round(frames / wall, 2),
        "latency_p50_ms": round(statistics.median(x["p50_ms"] for x in lat), 1) if lat else None,
        "latency_p99_ms": round(max(x["p99_ms"] for x in lat), 1) if lat else None,
        "ng_frames": sum(s.get("ng_frames", 0) for s in summaries),
        "load_before": before, "load_after": loadavg(),
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Many cameras on one CPU: one batched station vs separate stations (issue 17)", "",
        f"`{report['command']}` on {m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} "
        f"CPUs (shared: load columns). Model: `{report['preset']}` random-init, "
        f"dynamic batch; each source the same {report['frames_per_source']}-frame "
        f"{report['frame']} clip read as a file (no drops), events on, threshold "
        f"{report['threshold']:.4g}. Throughput: all frames / wall time of the whole run "
        "(start-up included); latency: per-source p50 (median over sources) and the worst "
        "p99, frame read to decision.", "",
        "| sources | batched FPS | separate FPS | batched / separate | batched p50 / p99 ms "
        "| separate p50 / p99 ms | load before -> after |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        b, s = row["batched"], row["separate"]
        lines.append(
            f"| {row['sources']} | {b['fps']:.1f} | {s['fps']:.1f} | "
            f"{b['fps'] / s['fps']:.2f} | {b['latency_p50_ms']} / {b['latency_p99_ms']} | "
            f"{s['latency_p50_ms']} / {s['latency_p99_ms']} | "
            f"{b['load_before'][0]} -> {s['load_after'][0]} |")
    lines += ["", "With one source both ways run the same command: that row's ratio is the "
              "noise of this shared machine, not an effect."]
    triton = [r for r in report["rows"] if "triton" in r]
    if triton:
        lines += ["", f"Through Triton ({report['triton']}), the same batched station with "
                  "`--model triton://...` against the direct one (the server on the same "
                  "CPU, so both compete for its cores):", "",
                  "| sources | direct FPS | Triton FPS | Triton / direct | Triton p50 / p99 ms |",
                  "|---|---|---|---|---|"]
        for row in triton:
            b, t = row["batched"], row["triton"]
            lines.append(f"| {row['sources']} | {b['fps']:.1f} | {t['fps']:.1f} | "
                         f"{t['fps'] / b['fps']:.2f} | {t['latency_p50_ms']} / "
                         f"{t['latency_p99_ms']} |")
    else:
        lines += ["", "Not measured: Triton with dynamic batching against direct calls "
                  "(`--triton`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="unias-edge")
    p.add_argument("--counts", default="1,2,4,8")
    p.add_argument("--frames", type=int, default=40, help="frames per source")
    p.add_argument("--frame", default="1280x720")
    p.add_argument("--triton", action="store_true", help="also through a Triton server")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="edgeas-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    model, clip = prepare(work, a.preset, a.frames, a.frame)
    threshold = threshold_for(model, clip, work)
    with contextlib.ExitStack() as stack:
        served = stack.enter_context(serve(model, work)) if a.triton else None
        rows = []
        for count in (int(c) for c in a.counts.split(",")):
            row: dict[str, Any] = {"sources": count}
            for batched in (True, False):  # alternated per count: load changes hit both
                row["batched" if batched else "separate"] = measure(
                    model, clip, count, threshold, work, batched)
            if served:
                row["triton"] = measure(served, clip, count, threshold, work, True)
            print(f"{count} sources: batched {row['batched']['fps']} FPS, separate "
                  f"{row['separate']['fps']} FPS"
                  + (f", Triton {row['triton']['fps']} FPS" if served else ""), flush=True)
            rows.append(row)
    report = {"preset": a.preset, "frame": a.frame, "frames_per_source": a.frames,
              "threshold": threshold, "rows": rows, "machine": machine_facts(),
              "triton": TRITON_SETUP if a.triton else None,
              "command": "python benchmarks/scale.py " + shlex.join(sys.argv[1:])}
    write_results(a.out, "scale", report, markdown(report))


TRITON_SETUP = ("export-triton --max-batch 8, 1 instance, dynamic batching; PyTriton 0.7's "
                "tritonserver 2.51, ONNX Runtime in its Python backend, gRPC")


@contextlib.contextmanager
def serve(model: Path, work: Path) -> Iterator[str]:
    """The model served by the tests' Triton server; yields its triton:// URL."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from triton_support import server_python, triton_server

    if server_python() is None:
        raise SystemExit("--triton needs the tests' Triton server venv: make triton-server")
    repo = work / "triton_repo"
    if not repo.exists():
        _run(["export-triton", "--onnx", str(model), "-o", str(repo), "--max-batch", "8"],
             work)
    with triton_server(repo, "edgeas", nice=0) as server:
        yield f"triton://{server.grpc}/edgeas"


if __name__ == "__main__":
    main()
