"""`make gpu-check DRY=1`: benchmarks/gpu_check.py on this CPU reaches every step, runs
what needs no device and says what it skipped, so that the one prepared command for a
lent GPU machine cannot rot; and the report renders a real run's figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402
from gpu_report import markdown  # noqa: E402

STEP_NAMES = [s[0] for s in gpu_check.STEPS]


@pytest.mark.slow
def test_the_dry_run_reaches_every_step_and_skips_only_the_device(tmp_path):
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry",
                          "--out", str(out), "--wheels", str(tmp_path / "no-wheels"),
                          "--copy-to", str(tmp_path / "copied")],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads((out / "gpu.json").read_text())
    assert data["dry"] is True and data["ok"] is True
    steps = {s["name"]: s for s in data["steps"]}
    assert list(steps) == STEP_NAMES
    assert {s["status"] for s in steps.values()} <= {"ok", "dry"}, steps
    for name in ("pycuda", "gpu-tests", "pipeline", "kernel", "train", "latency"):
        assert steps[name]["status"] == "dry", name
        assert any("dry run" in n for n in steps[name]["notes"]), name
    # what the CPU can do, it did
    assert steps["pipeline"]["figures"]["onnxruntime_cpu"]["frames"] == 10
    assert steps["train"]["figures"]["tiny"]["steps"] == 2
    assert steps["latency"]["figures"]["tiny"]["batch_1"]["ms"] > 0
    summary = steps["gpu-tests"]["figures"]["summary"]
    assert "skipped" in summary and "passed" not in summary and "failed" not in summary
    assert steps["env"]["figures"]["cuda_layers"].keys() == {"pycuda", "cuda-python"}
    text = (out / "gpu.md").read_text()
    assert "DRY RUN on a CPU" in text and "| latency |" in text
    assert sorted(p.name for p in (tmp_path / "copied").iterdir()) == [
        "gpu-dry.log", "gpu.json", "gpu.md"]


def test_the_report_renders_a_real_run():
    fused = {"end_to_end_ms": 0.4, "kernel_launch_sync_ms": 0.05, "cuda_layer": "pycuda"}
    naive = {"device": "cuda", "end_to_end_ms": 2.0, "device_ms": 0.3}
    data = {"dry": False, "started": "2026-12-01T00:00:00+00:00", "wall_s": 400.0, "ok": False,
            "steps": [
                {"name": "env", "title": "e", "status": "ok", "seconds": 1, "notes": [],
                 "checks": [], "figures": {"gpu": {"name": "NVIDIA H200", "driver": "580",
                                                   "memory": "143771 MiB",
                                                   "compute_capability": "9.0"},
                                           "libraries": {"torch": "2.11.0"}}},
                {"name": "kernel", "title": "k", "status": "ok", "seconds": 9, "notes": [],
                 "checks": [{"name": "fused", "ok": True, "detail": "1e-7"}],
                 "figures": {"1080p": {"fused": fused, "torch_naive": naive,
                                       "speedup_end_to_end": 5.0,
                                       "max_abs_diff_vs_numpy": 1e-7}}},
                {"name": "train", "title": "t", "status": "failed", "seconds": 60,
                 "notes": ["n"], "checks": [{"name": "loss", "ok": False, "detail": "3e-2"}],
                 "figures": {"unias-edge": {"first_loss_cpu_fp32": 1.0, "batch": 64,
                                            "first_loss_cuda_amp": 1.03, "steps": 300,
                                            "relative_difference": 0.03,
                                            "images_per_s": 900.0}}},
                {"name": "latency", "title": "l", "status": "ok", "seconds": 30, "notes": [],
                 "checks": [], "figures": {"unias-b4": {"batch_1": {"ms": 3.0},
                                                        "batch_8": {"ms": 9.0,
                                                                    "images_per_s": 888.0}}}},
            ]}
    text = markdown(data)
    assert "NVIDIA H200 (compute capability 9.0, 143771 MiB)" in text
    assert "| 1080p | 0.4 | 0.05 | 2 (cuda) | 0.3 | 5 | 1e-07 |" in text
    assert "| unias-edge | 1 | 1.03 | 0.03 | 64 | 300 | 900 | - |" in text
    assert "| unias-b4 | 3 | 9 | 888 |" in text
    assert "overall: **FAILED**" in text and "- **FAILED**: loss (3e-2)" in text


def test_what_is_carried_matches_what_gpu_wheels_downloads():
    pinned = re.findall(r"^([A-Za-z0-9_.-]+)==", (REPO / "benchmarks" / "gpu-wheels.txt")
                        .read_text(), re.MULTILINE)
    assert sorted(n.lower().replace("-", "_") for n in pinned) == sorted(gpu_check.CARRIED)
    assert "pycuda" in (REPO / "Makefile").read_text().split("PYCUDA ?=")[1].split("\n")[0]


def test_the_gpu_tests_step_finds_every_gpu_marked_file():
    files = gpu_check.gpu_test_files()
    assert {"tests/test_cuda_aggregate.py", "tests/test_cuda_bindings.py"} <= set(files)
    assert "tests/test_gpu_check.py" not in files


class FakeCupy:
    """A stand-in for the few CuPy calls of benchmarks/gpu_standin_tensorrt.py, over
    FakeCuda's host-kept "device" buffers (stand-ins both: they check that the stand-in
    TensorRT reads and writes the bound addresses on the caller's stream)."""

    def __init__(self, cuda) -> None:
        import numpy as np

        self.cuda, self.streams = cuda, []
        fake = self

        class UnownedMemory:
            def __init__(self, ptr, size, owner, device_id=-1) -> None:
                self.ptr, self.size = ptr, size
                assert cuda.buffer_at(ptr).nbytes >= size, "a view past the bound buffer"

        class MemoryPointer:
            def __init__(self, mem, offset) -> None:
                self.mem, self.offset = mem, offset

        class ndarray:  # noqa: N801 - CuPy's name
            def __init__(self, shape, dtype, memptr) -> None:
                self.shape, self.dtype, self.ptr = tuple(shape), np.dtype(dtype), memptr.mem.ptr
                self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize

            def get(self, stream=None):
                assert stream is fake.streams[-1]
                data = bytes(cuda.buffer_at(self.ptr).memory[: self.nbytes])
                return np.frombuffer(data, self.dtype).reshape(self.shape).copy()

            def set(self, arr, stream=None) -> None:
                assert stream is fake.streams[-1] and arr.shape == self.shape
                cuda.buffer_at(self.ptr).memory[: self.nbytes] = arr.astype(self.dtype).tobytes()

        class ExternalStream:
            def __init__(self, handle) -> None:
                self.handle = handle
                fake.streams.append(self)

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                pass

        self.float32 = np.float32
        self.ndarray = ndarray
        self.cuda = type("cuda", (), {"UnownedMemory": UnownedMemory,
                                      "MemoryPointer": MemoryPointer,
                                      "ExternalStream": ExternalStream})
        self.fake_cuda = cuda


@pytest.mark.slow
def test_the_pipeline_steps_device_path_on_stand_ins(monkeypatch):
    """benchmarks/gpu_pipeline.py's device path on this CPU, with FakeCuda as the CUDA
    layer and FakeCupy under the stand-in TensorRT; the fused kernel cannot run on a
    stand-in, so aggregation falls back to the CPU and only that check fails."""
    from fake_cuda import FakeCuda
    from gpu_pipeline import run_pipeline_check

    from edgeas.errors import DependencyError
    from edgeas.runtime import tensorrt_backend

    cuda = FakeCuda()
    cupy = FakeCupy(cuda)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(tensorrt_backend, "open_cuda", lambda: cuda)

    def no_kernel(self):
        raise DependencyError("a stand-in CUDA layer runs no kernel")

    monkeypatch.setattr(tensorrt_backend.TensorRTBackend, "gpu_aggregator", no_kernel)
    before = sys.modules.get("tensorrt")
    result = run_pipeline_check(False, 10, 4)
    assert sys.modules.get("tensorrt") is before  # the stand-in does not outlive the step
    checks = {c["name"]: c for c in result["checks"]}
    failed = [name for name, c in checks.items() if not c["ok"]]
    assert failed == ["fused aggregation ran on the GPU"], result
    assert result["figures"]["tensorrt_backend_standin"]["executions"] == 3
    assert {s.handle for s in cupy.streams} == {cuda.streams[0].handle}  # the backend's
    assert cuda.live() == {"buffers": 0, "streams": 0, "pinned": 0, "kernels": 0}


def test_the_kernel_steps_device_path_on_a_stand_in(monkeypatch):
    """gpu_steps._fused with FakeCuda (it computes nothing, so only the calls are checked):
    the timing loops reuse the aggregator's buffers and release everything at the end."""
    import numpy as np
    from fake_cuda import FakeCuda
    from gpu_steps import _fused, _maps

    from edgeas import cuda as cuda_module

    fake = FakeCuda()
    monkeypatch.setattr(cuda_module, "open_cuda", lambda: fake)
    (amap, mask), timing = _fused(_maps(), (48, 64), 0.3)
    assert amap.shape == mask.shape == (48, 64) and mask.dtype == np.uint8
    assert timing["end_to_end_ms"] > 0 and timing["kernel_launch_sync_ms"] > 0
    assert timing["cuda_layer"] == "fake"
    assert len(fake.launches) == 1 + 5 + 50 + 200  # first, warm-up, end to end, kernel
    assert fake.call_names().count("alloc") == 6  # once, not per frame
    assert fake.live() == {"buffers": 0, "streams": 0, "pinned": 0, "kernels": 0}
