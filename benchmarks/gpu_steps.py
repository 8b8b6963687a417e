"""The CUDA steps of `make gpu-check` (benchmarks/gpu_check.py runs each in its own
process): the machine's facts, the fused kernel timed against a naive PyTorch version,
and the TensorRT backend through the real 3-thread pipeline around a stand-in TensorRT.

    python benchmarks/gpu_steps.py env|kernel|pipeline --result OUT.json [--dry]

`--dry` (CI, CPU): each step runs what needs no device (versions, the numpy reference,
the ONNX export and the ONNX Runtime pipeline, the stand-in engine's I/O shapes) and
reports the rest as skipped.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
LIBRARIES = ("torch", "cupy-cuda13x", "cupy-cuda12x", "cuda-bindings", "cuda-python",
             "numba-cuda", "pycuda", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy",
             "opencv-python-headless", "edgeas", "tensorrt", "tensorrt-rtx")
SIZES = {"1080p": (1080, 1920), "2160p": (2160, 3840)}
FRAMES, BATCH = 10, 4  # batches of 4, 4, 2: the dynamic batch changes shape


def _run(cmd: list[str]) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def env(dry: bool, budget_s: float) -> dict[str, Any]:
    """GPU, driver, CUDA and library versions (what the figures were measured with)."""
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader"])
    gpu = None
    if smi:
        name, driver, memory, cc = (v.strip() for v in smi.splitlines()[0].split(","))
        gpu = {"name": name, "driver": driver, "memory": memory, "compute_capability": cc}
    nvcc = _run(["nvcc", "--version"])
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            continue
    facts: dict[str, Any] = {
        "gpu": gpu, "python": platform.python_version(), "executable": sys.executable,
        "platform": f"{platform.system()} {platform.machine()}", "cpus": _cpus(),
        "nvcc": next((ln for ln in (nvcc or "").splitlines() if "release" in ln), nvcc),
        "libraries": versions,
        "compute_sanitizer": (_run(["compute-sanitizer", "--version"]) or "").splitlines()[-1:],
    }
    try:
        import torch

        facts["torch_cuda"] = torch.version.cuda
        facts["torch_sees_gpu"] = bool(torch.cuda.is_available())
    except ImportError:
        pass
    # what edgeas.cuda would find (edgeas itself is installed by a later step)
    facts["cuda_layers"] = {name: _import_error(module) for name, module in
                            (("pycuda", "pycuda.driver"), ("cuda-python", "cuda.bindings.driver"))}
    notes = [] if gpu else ["no GPU here (nvidia-smi absent or silent)"]
    checks = [] if dry else [{"name": "nvidia-smi names a GPU", "ok": gpu is not None,
                              "detail": (gpu or {}).get("name", "none")}]
    return {"checks": checks, "figures": facts, "notes": notes}


def _import_error(module: str) -> str | None:
    try:
        __import__(module)
    except Exception as exc:  # ImportError, or a build that cannot load its libraries
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _maps() -> list[np.ndarray]:
    from aggregate_bench import make_maps

    return make_maps()


def kernel(dry: bool, budget_s: float) -> dict[str, Any]:
    """The fused kernel (edgeas.cuda, smoothing none) against a naive PyTorch CUDA version
    (upload four maps, upsample each to the frame, multiply, compare, download)."""
    from edgeas.aggregate import aggregate

    maps, tau = _maps(), 0.3
    out: dict[str, Any] = {"checks": [], "figures": {}, "notes": []}
    sizes = {"dry 48x64": (48, 64)} if dry else SIZES
    for label, hw in sizes.items():
        ref, ref_mask = aggregate(maps, hw, tau, "fused", "none")
        row: dict[str, Any] = {"torch_naive": _torch_naive(maps, hw, tau, dry)}
        if dry:
            out["notes"].append("the CUDA kernel is not run: needs the device (dry run)")
        else:
            got, timing = _fused(maps, hw, tau)
            diff = float(np.abs(got[0] - ref).max())
            row["fused"] = timing
            row["max_abs_diff_vs_numpy"] = diff
            row["speedup_end_to_end"] = (row["torch_naive"]["end_to_end_ms"]
                                         / timing["end_to_end_ms"])
            out["checks"].append({"name": f"fused kernel {label} vs numpy", "ok": diff <= 1e-5,
                                  "detail": f"max abs difference {diff:.2e} (tolerance 1e-5)"})
            same = float((got[1] == ref_mask).mean())
            out["checks"].append({"name": f"fused mask {label} vs numpy", "ok": same >= 0.9999,
                                  "detail": f"{same:.6f} of pixels equal"})
        out["figures"][label] = row
    return out


def _median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def _fused(maps, hw, tau):
    from edgeas.cuda import open_cuda
    from edgeas.runtime.cuda_aggregate import BLOCK, CudaFusedAggregator

    cuda = open_cuda()
    context = cuda.primary_context()
    agg = CudaFusedAggregator(cuda, context)
    try:
        result = agg(maps, hw, tau, "none")
        for _ in range(5):
            agg(maps, hw, tau, "none")
        end_to_end = _median_ms(lambda: agg(maps, hw, tau, "none"), 50)
        h, w = hw
        staged = agg._in  # the kernel alone: the aggregator's own buffers, already filled
        out_map, out_mask = agg._outputs(h, w)
        grid = ((w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1])
        args = [*(s.dev for s in staged), np.int32(len(maps)), np.int32(h), np.int32(w),
                np.float32(tau), np.int32(1), out_map.dev, out_mask.dev]

        def launch() -> None:
            with context.active():
                agg.kernel.launch(grid, BLOCK, args, agg.stream)
                agg.stream.synchronize()

        kernel_ms = _median_ms(launch, 200)
        return result, {"end_to_end_ms": end_to_end, "kernel_launch_sync_ms": kernel_ms,
                        "cuda_layer": cuda.name}
    finally:
        agg.close()
        context.release()


def _torch_naive(maps, hw, tau, dry: bool) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    host = [torch.from_numpy(m) for m in maps]
    if device == "cuda":
        host = [m.pin_memory() for m in host]

    def run(levels):
        ups = [F.interpolate(m[None, None], size=hw, mode="bilinear", align_corners=True)
               for m in levels]
        product = ups[0] * ups[3] * ups[2] * ups[1]
        return product, product >= tau

    def end_to_end():
        levels = [m.to(device, non_blocking=True) for m in host]
        product, mask = run(levels)
        return product.cpu(), mask.cpu()

    end_to_end()
    result = {"device": device, "end_to_end_ms": _median_ms(end_to_end, 3 if dry else 50)}
    if device == "cuda":
        levels = [m.to(device) for m in host]
        times = []
        for _ in range(50):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run(levels)
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        result["device_ms"] = float(np.median(times))
    return result


def pipeline(dry: bool, budget_s: float) -> dict[str, Any]:
    """TensorRTBackend (edgeas.cuda for real) around the stand-in TensorRT, through the
    3-thread Pipeline with the fused kernel, against the ONNX Runtime backend."""
    from gpu_pipeline import run_pipeline_check

    return run_pipeline_check(dry, FRAMES, BATCH)


STEPS = {"env": env, "kernel": kernel, "pipeline": pipeline}


def step_main(steps: dict[str, Any], description: str, budget: float) -> None:
    """The command line of a step script (this one and gpu_torch_steps.py): run one step,
    write its JSON result, exit 1 when one of its checks failed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("step", choices=sorted(steps))
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--dry", action="store_true")
    parser.add_argument("--budget", type=float, default=budget, help="seconds for the step")
    args = parser.parse_args()
    result = steps[args.step](args.dry, args.budget)
    args.result.write_text(json.dumps(result, indent=2, default=float) + "\n")
    sys.exit(1 if any(not c["ok"] for c in result["checks"]) else 0)


if __name__ == "__main__":
    step_main(STEPS, __doc__.splitlines()[0], 60.0)
