"""`edgeas bench MODEL`: the backend alone, then the whole pipeline, per stage.

Backend only: `infer` on one ready batch, again and again (the upper bound).
Pipeline: the real `Pipeline` (reader, infer and post threads) on a video file or on
synthetic frames held in memory, rendering every frame, no sinks. The ratio of the two
FPS says how well capture, preprocessing and aggregation hide behind inference.
Recorded beside the numbers: device, precision, input size, batch, the machine's load
average (other people share it) and, on Jetson, the power mode.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console

from edgeas.errors import ConfigError
from edgeas.fileio import atomic_write_text
from edgeas.postprocess import Settings, resolve
from edgeas.runtime.backends import Backend, open_backend
from edgeas.runtime.pipeline import Pipeline
from edgeas.runtime.sources import Source, SourceSpec, open_source, parse_source
from edgeas.runtime.stats import Ring, format_stages

console = Console(stderr=True, soft_wrap=True)
TIMING_THRESHOLD = 0.5  # when the model has none: decisions do not matter for timing


class MemorySource(Source):
    """`count` frames cycled from a few synthetic ones: capture costs nothing, no decode."""

    def __init__(self, frames: list[np.ndarray], count: int) -> None:
        super().__init__(SourceSpec("file", "memory", f"memory://{count}-frames"))
        self.frames, self.count, self.position = frames, count, 0

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        if self.position >= self.count:
            self.ended = True
            return None
        self.position += 1
        return self.frames[(self.position - 1) % len(self.frames)]


def synthetic_frames(hw: tuple[int, int], n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Textured BGR frames (smooth noise), different from each other."""
    rng = np.random.default_rng(seed)
    h, w = hw
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
        out.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    return out


def parse_size(text: str) -> tuple[int, int]:
    """"WxH" -> (H, W)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ConfigError(f"--frame-size {text}: expected WIDTHxHEIGHT, e.g. 1280x720") from exc
    if w < 8 or h < 8:
        raise ConfigError(f"--frame-size {text}: too small")
    return h, w


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if shutil.which("nvpmodel"):
        try:
            run = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
            info["jetson_power_mode"] = run.stdout.strip().splitlines()[0] if run.stdout else None
        except (OSError, subprocess.SubprocessError):
            info["jetson_power_mode"] = "unknown (nvpmodel -q failed)"
    return info


def bench_backend(backend: Backend, frames: int, batch: int, warmup: int = 3) -> dict[str, Any]:
    h, w = backend.input_hw
    rng = np.random.default_rng(0)
    data = rng.standard_normal((batch, 3, h, w)).astype(np.float32)
    for _ in range(warmup):
        backend.infer(data)
    calls = max(1, -(-frames // batch))
    ring = Ring()
    start = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        backend.infer(data)
        ring.add(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return {"calls": calls, "frames": calls * batch, "fps": calls * batch / total,
            "latency_per_batch": ring.percentiles()}


def bench_pipeline(backend: Backend, settings: Settings, source: Source, frames: int,
                   batch: int) -> dict[str, Any]:
    pipeline = Pipeline(backend, source, settings, render=True, max_frames=frames,
                        batch=batch)
    summary = pipeline.run()
    return {"frames": summary["frames"], "fps": summary["fps"], "stages": summary["stages"],
            "aggregation": summary["aggregation"], "source": summary["source"]}


def run_bench(model: str | Path, frames: int = 100, batch: int = 1, video: str | None = None,
              frame_hw: tuple[int, int] | None = None, threshold: float | None = None,
              device: str = "auto", warmup: int = 3) -> dict[str, Any]:
    if frames < 1 or batch < 1:
        raise ConfigError(f"--frames and --batch must be >= 1 (got {frames}, {batch})")
    load_before = os.getloadavg()
    backend = open_backend(model, device)
    try:
        if threshold is None and not backend.record.threshold.is_set:
            threshold = TIMING_THRESHOLD
        settings = resolve(backend.record, threshold, None, None, str(model))
        only = bench_backend(backend, frames, batch, warmup)
        if video is not None:
            source = open_source(parse_source(video=video))
        else:
            hw = frame_hw or (480, 640)
            source = MemorySource(synthetic_frames(hw), frames + warmup * batch)
        try:
            # warm the pipeline's own buffers (scratch maps, JPEG tables) before timing
            Pipeline(backend, source, settings, render=True, max_frames=warmup * batch,
                     batch=batch).run()
            pipe = bench_pipeline(backend, settings, source, frames, batch)
        finally:
            source.close()
        desc = backend.describe()
    finally:
        backend.close()
    ratio = pipe["fps"] / only["fps"] if pipe["fps"] and only["fps"] else None
    return {
        "model": str(model), **desc, "batch": batch,
        "frame_size": list(frame_hw or (480, 640)) if video is None else "from video",
        "threshold": settings.threshold, "backend_only": only, "pipeline": pipe,
        "pipeline_over_backend": ratio,
        "machine": dict(machine_info(), load_before=list(load_before),
                        load_after=list(os.getloadavg())),
    }


def bench_command(model: str | Path, frames: int, batch: int, json_out: Path | None,
                  video: str | None, frame_size: str | None, threshold: float | None,
                  device: str) -> dict[str, Any]:
    hw = parse_size(frame_size) if frame_size else None
    result = run_bench(model, frames, batch, video, hw, threshold, device)
    only, pipe = result["backend_only"], result["pipeline"]
    lat = only["latency_per_batch"]
    console.print(f"{result['backend']} on {result['device']}, {result['precision']}, input "
                  f"{result['input_size'][0]}x{result['input_size'][1]}, batch {batch}")
    if "session" in result:
        console.print(f"ONNX Runtime session: {session_line(result['session'])}")
    console.print(f"backend only: {only['fps']:.1f} FPS, per batch p50 {lat['p50_ms']:.1f} ms, "
                  f"p99 {lat['p99_ms']:.1f} ms")
    console.print(f"pipeline:     {pipe['fps']:.1f} FPS ({pipe['source']}); "
                  f"{format_stages(pipe['stages'])}")
    if result["pipeline_over_backend"]:
        console.print(f"pipeline / backend: {result['pipeline_over_backend']:.2f}")
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_out}")
    return result


def session_line(session: dict[str, Any]) -> str:
    """'providers CPUExecutionProvider; graph optimisation enable_all without
    SkipLayerNormFusion; threads intra-op 2, inter-op ORT default; sequential' (0 threads:
    ONNX Runtime's own choice)."""
    def threads(n: int) -> str:
        return str(n) if n else "ORT default"

    return (f"providers {', '.join(session['providers'])}; graph optimisation "
            f"{session['graph_optimization']}"
            + (f" without {', '.join(session['disabled_optimizers'])}"
               if session.get("disabled_optimizers") else "")
            + "; threads intra-op "
            f"{threads(session['intra_op_threads'])}, inter-op "
            f"{threads(session['inter_op_threads'])}; {session['execution_mode']}")
