"""`make gpu-check`: one command that proves edgeas's CUDA side on a lent GPU machine.

    python3 benchmarks/gpu_check.py [--dry] [--wheels .gpu-wheels] [--out benchmarks/results]
                                    [--deadline 470] [--copy-to DIR]

Written for a machine with a GPU, CUDA's toolkit, PyTorch, CuPy, cuda-python and ONNX
Runtime for CPU but no TensorRT, no pycuda and no network (the lent H100/H200 machines):
what it needs from elsewhere comes in the folder `make gpu-wheels` fills here. Steps, in
this order, each in its own process with a time limit, all within `--deadline` seconds:

  env        GPU, driver, CUDA and library versions
  pycuda     pycuda built from its sdist (Python.h checked) and installed with its wheels
  install    edgeas (and the carried wheels) installed without dependencies, over the
             machine's own PyTorch
  gpu-tests  every `gpu`-marked test, under compute-sanitizer --tool memcheck
  pipeline   TensorRTBackend through the 3-thread pipeline around a stand-in TensorRT
  kernel     the fused kernel at 1080p and 2160p against a naive PyTorch CUDA version
  train      CUDA mixed precision: first-step loss vs the CPU's, then images/s
  latency    each preset in PyTorch FP16 with CUDA graphs at batch 1 and 8 (a proxy)

Results go to OUT/gpu.json and OUT/gpu.md after every step (a crash or a timeout later
keeps what was measured). Exit status 1 when a step failed or a check did not hold.
`--dry` (CI, CPU): every step runs what needs no device and says what it skipped;
results go to build/gpu-check-dry unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from gpu_report import markdown  # noqa: E402

# What `make gpu-wheels` puts beside the pycuda sdist (pip names, for the dry-run check).
CARRIED = ("pytools", "platformdirs", "mako", "siphash24", "onnx_graphsurgeon")
SANITIZER_PATHS = ("{cuda}/bin/compute-sanitizer", "{cuda}/compute-sanitizer/compute-sanitizer",
                   "/usr/local/cuda/bin/compute-sanitizer")


@dataclass
class Step:
    name: str
    title: str
    cap_s: float  # the most this step may take
    status: str = "not run"  # ok | failed | skipped | not run
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "title", "status", "seconds", "notes",
                                               "checks", "figures")}


STEPS = (
    ("env", "GPU, driver, CUDA and library versions", 30),
    ("pycuda", "pycuda built from its sdist and installed with its carried wheels", 200),
    ("install", "edgeas and the carried wheels installed over the machine's PyTorch", 90),
    ("gpu-tests", "every gpu-marked test, under compute-sanitizer memcheck", 180),
    ("pipeline", "TensorRTBackend in the 3-thread pipeline around a stand-in TensorRT", 120),
    ("kernel", "fused kernel vs naive PyTorch CUDA at 1920x1080 and 3840x2160", 60),
    ("train", "CUDA mixed-precision training: first-step loss vs CPU, images/s", 150),
    ("latency", "each preset in PyTorch FP16 + CUDA graphs at batch 1 and 8 (proxy)", 100),
)


class Check:
    """Runs the steps; holds what every step needs (paths, the deadline, the log)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry, self.wheels = args.dry, Path(args.wheels).resolve()
        self.driver_dir = args.driver_lib_dir
        default = REPO / ("build/gpu-check-dry" if args.dry else "benchmarks/results")
        self.out = Path(args.out or default).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="edgeas-gpu-check-"))
        self.site = self.work / "site"  # pycuda, its wheels and edgeas, on PYTHONPATH
        self.start = time.monotonic()
        self.deadline = self.start + args.deadline
        self.log = self.out / ("gpu-dry.log" if args.dry else "gpu.log")
        self.lock = threading.Lock()  # the dry run runs one step beside the others
        self.steps = [Step(*s) for s in STEPS if not args.only or s[0] in args.only]
        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    # ------------------------------------------------------------------ running
    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.site.is_dir():
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.site),
                                                              env.get("PYTHONPATH")]))
        return env

    def step_log(self, step: Step) -> Path:
        return self.work / f"{step.name}.log"

    def run(self, step: Step, cmd: list[str], timeout: float) -> int | None:
        """`cmd` in its own process group, output appended to the step's log; None on
        timeout."""
        with self.step_log(step).open("a") as log:
            log.write(f"\n===== {step.name}: {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env(), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                return proc.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group: sanitizer, pytest, ...
                proc.wait()
                log.write(f"\n===== {step.name}: killed after {timeout:.0f} s\n")
                return None

    def tail(self, step: Step, lines: int = 12) -> str:
        path = self.step_log(step)
        text = path.read_text(errors="replace") if path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def script_step(self, step: Step, script: str, timeout: float) -> None:
        """A step of gpu_steps.py / gpu_torch_steps.py: its JSON result is merged in."""
        result = self.work / f"{step.name}.json"
        cmd = [sys.executable, str(HERE / script), step.name, "--result", str(result),
               "--budget", str(max(10.0, timeout - 20.0))]
        code = self.run(step, cmd + (["--dry"] if self.dry else []), timeout)
        if result.is_file():
            data = json.loads(result.read_text())
            step.checks += data["checks"]
            step.figures.update(data["figures"])
            step.notes += data["notes"]
        if code is None:
            step.status = "failed"
            step.notes.append(f"timed out after {timeout:.0f} s")
        elif not result.is_file() or (code != 0 and not step.checks):
            step.status = "failed"
            step.notes.append(f"exit {code}: {self.tail(step)}")
        else:
            step.status = "ok" if all(c["ok"] for c in step.checks) else "failed"
        if self.dry and step.status == "ok" and any("skipped" in n or "not run" in n
                                                    for n in step.notes):
            step.status = "dry"

    def run_all(self) -> int:
        beside = None
        for step in self.steps:
            if self.dry and step.name == "pipeline":
                # on a CPU the longest step (an ONNX export) runs beside the others; on the
                # device every step runs alone, so that the timings are its own
                beside = threading.Thread(target=self.run_step, args=(step,))
                beside.start()
            else:
                self.run_step(step)
        if beside is not None:
            beside.join()
        self.write()
        return 1 if any(s.status == "failed" for s in self.steps) else 0

    def run_step(self, step: Step) -> None:
        left = self.deadline - time.monotonic()
        if left < 20:
            step.status = "skipped"
            step.notes.append("not run: the time budget was spent by the steps before it")
            return
        began = time.monotonic()
        try:
            getattr(self, "step_" + step.name.replace("-", "_"))(step, min(step.cap_s,
                                                                          left - 10))
        except Exception as exc:  # a bug here must not lose the other steps' results
            step.status = "failed"
            step.notes.append(f"{type(exc).__name__}: {exc}")
        step.seconds = round(time.monotonic() - began, 1)
        self.write()
        print(f"[gpu-check] {step.name}: {step.status} ({step.seconds:.0f} s)", flush=True)

    # ------------------------------------------------------------------ steps
    def step_env(self, step: Step, timeout: float) -> None:
        self.script_step(step, "gpu_steps.py", timeout)

    def step_pipeline(self, step: Step, timeout: float) -> None:
        self.script_step(step, "gpu_steps.py", timeout)

    def step_kernel(self, step: Step, timeout: float) -> None:
        self.script_step(step, "gpu_steps.py", timeout)

    def step_train(self, step: Step, timeout: float) -> None:
        self.script_step(step, "gpu_torch_steps.py", timeout)

    def step_latency(self, step: Step, timeout: float) -> None:
        self.script_step(step, "gpu_torch_steps.py", timeout)

    def step_pycuda(self, step: Step, timeout: float) -> None:
        header = Path(sysconfig.get_paths()["include"]) / "Python.h"
        sdists = sorted(self.wheels.glob("pycuda-*.tar.gz"))
        wheels = sorted(self.wheels.glob("*.whl"))
        have = {w.name.split("-")[0].lower() for w in wheels}
        step.figures.update(python_h=str(header) if header.is_file() else None,
                            sdist=sdists[-1].name if sdists else None,
                            wheels=[w.name for w in wheels])
        missing = [c for c in CARRIED if c not in have]
        step.checks.append({"name": f"Python.h for {sys.executable}", "ok": header.is_file(),
                            "detail": str(header)})
        step.checks.append({"name": f"carried in {self.wheels.name}: the pycuda sdist and "
                            "the wheels it needs", "ok": bool(sdists) and not missing,
                            "detail": f"missing: {', '.join(missing) or 'none'}"
                            + ("" if sdists else "; no pycuda-*.tar.gz")})
        if self.dry:
            code = self.run(step, [sys.executable, str(HERE / "gpu_pycuda_build.py"), "--help"],
                            30)
            step.checks = [c for c in step.checks if c["name"].startswith("Python.h")]
            step.checks.append({"name": "gpu_pycuda_build.py runs", "ok": code == 0,
                                "detail": f"exit {code}"})
            step.notes.append("the build is not run: needs the device's toolkit and driver "
                              f"(dry run; carried wheels: {len(wheels)}, missing: "
                              f"{', '.join(missing) or 'none'})")
            step.status = "dry" if all(c["ok"] for c in step.checks) else "failed"
            return
        if not all(c["ok"] for c in step.checks):
            step.status = "failed"
            step.notes.append("pycuda not built: the CUDA layer falls back to cuda-python")
            return
        built = self.work / "pycuda-wheel"
        extra = ["--driver-lib-dir", self.driver_dir] if self.driver_dir else []
        code = self.run(step, [sys.executable, str(HERE / "gpu_pycuda_build.py"), "--sdist",
                               str(sdists[-1]), "--out", str(built), *extra], timeout - 30)
        found = sorted(built.glob("pycuda-*.whl"))
        if code != 0 or not found:
            step.status = "failed"
            step.notes.append(f"build failed (exit {code}): {self.tail(step)}")
            return
        code = self.run(step, [sys.executable, "-m", "pip", "install", "-q", "--no-index",
                               "--no-deps", "--target", str(self.site), str(found[-1]),
                               *map(str, wheels)], 60)
        probe = ("import pycuda.driver as d; d.init(); "
                 "print(d.VERSION, d.Device(0).name())")
        ok = code == 0 and self.run(step, [sys.executable, "-c", probe], 30) == 0
        step.checks.append({"name": "pycuda imports and sees the GPU", "ok": ok,
                            "detail": self.tail(step, 1)})
        step.status = "ok" if ok else "failed"

    def step_install(self, step: Step, timeout: float) -> None:
        """edgeas (and the carried wheels: onnx-graphsurgeon for the export) into the
        folder on PYTHONPATH; the machine's torch, numpy, ONNX Runtime... stay theirs."""
        target = self.work / "dry-site" if self.dry else self.site
        carried = [str(w) for w in sorted(self.wheels.glob("*.whl"))]
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
               "--no-build-isolation", "--target", str(target), str(REPO),
               *([] if self.dry else carried)]
        code = self.run(step, cmd, timeout)
        ok = code == 0 and (target / "edgeas" / "runtime" / "fused_aggregate.cu").is_file()
        step.checks.append({"name": "edgeas installs without dependencies", "ok": ok,
                            "detail": f"exit {code} into {target}"})
        if not self.dry and ok:
            code = self.run(step, [sys.executable, "-P", "-c", "import edgeas.runtime, torch; "
                                   "print(edgeas.__file__, torch.__version__)"], 60)
            step.checks.append({"name": "edgeas imports from there beside the machine's torch",
                                "ok": code == 0, "detail": self.tail(step, 1)})
        if self.dry:
            step.notes.append("installed into a scratch folder, not used (dry run)")
        step.status = "ok" if all(c["ok"] for c in step.checks) else "failed"

    def step_gpu_tests(self, step: Step, timeout: float) -> None:
        # -P: the repo's own edgeas/ folder must not shadow the installed package
        pytest = [sys.executable, "-P", "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p",
                  "no:cacheprovider", *gpu_test_files()]
        sanitizer = None if self.dry else find_sanitizer()
        cmd = ([sanitizer, "--tool", "memcheck", "--error-exitcode", "97", *pytest]
               if sanitizer else pytest)
        if not self.dry and sanitizer is None:
            step.checks.append({"name": "compute-sanitizer found", "ok": False,
                                "detail": "not on PATH nor in the toolkit: ran without it"})
        code = self.run(step, cmd, timeout)
        summary = next((ln for ln in reversed(self.tail(step, 60).splitlines())
                        if " passed" in ln or " skipped" in ln or " failed" in ln), "")
        step.figures.update(sanitizer=sanitizer, summary=summary.strip("= "))
        skips = [ln for ln in self.tail(step, 60).splitlines() if ln.startswith("SKIPPED")]
        step.notes += skips
        if code is None:
            step.checks.append({"name": "gpu tests finished", "ok": False,
                                "detail": f"timed out after {timeout:.0f} s"})
        else:
            detail = {97: "compute-sanitizer reported errors"}.get(code, f"exit {code}")
            step.checks.append({"name": "gpu tests" + (" under memcheck" if sanitizer else ""),
                                "ok": code == 0, "detail": f"{detail}: {summary}"})
        if self.dry:
            step.notes.append("no device: the gpu tests skip (dry run, no sanitizer)")
        ok = all(c["ok"] for c in step.checks)
        step.status = "failed" if not ok else "dry" if self.dry else "ok"

    # ------------------------------------------------------------------ output
    def write(self) -> None:
        """gpu.json, gpu.md and the log, as they stand (after every step)."""
        with self.lock:
            data = {"dry": self.dry, "started": self.started,
                    "wall_s": round(time.monotonic() - self.start, 1),
                    "ok": all(s.status in ("ok", "dry") for s in self.steps),
                    "steps": [s.report() for s in self.steps]}
            (self.out / "gpu.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
            (self.out / "gpu.md").write_text(markdown(data))
            logs = [self.step_log(s) for s in self.steps]
            self.log.write_text("".join(p.read_text(errors="replace") for p in logs
                                        if p.is_file()))


def gpu_test_files() -> list[str]:
    """The test files that hold a `gpu` mark (collecting only those saves the import of
    every other test module; a new gpu test is found the same way)."""
    return [str(p.relative_to(REPO)) for p in sorted((REPO / "tests").glob("test_*.py"))
            if "mark.gpu" in p.read_text(errors="replace")]


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    cuda = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    for pattern in SANITIZER_PATHS:
        path = Path(pattern.format(cuda=cuda))
        if path.is_file():
            return str(path)
    nvcc = shutil.which("nvcc")
    if nvcc:
        path = Path(nvcc).resolve().parent / "compute-sanitizer"
        if path.is_file():
            return str(path)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CI on a CPU: skip the device parts")
    parser.add_argument("--wheels", default=str(REPO / ".gpu-wheels"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--deadline", type=float, default=470.0, help="seconds in all")
    parser.add_argument("--only", nargs="*", default=None, help="run only these steps")
    parser.add_argument("--copy-to", default=None, help="also copy the results there")
    parser.add_argument("--driver-lib-dir", default=None,
                        help="a folder with libcuda.so for linking pycuda, where none is found")
    args = parser.parse_args()
    check = Check(args)
    code = check.run_all()
    if args.copy_to:
        Path(args.copy_to).mkdir(parents=True, exist_ok=True)
        for path in (check.out / "gpu.json", check.out / "gpu.md", check.log):
            shutil.copy(path, args.copy_to)
    print(f"[gpu-check] {'ok' if code == 0 else 'FAILED'}: {check.out / 'gpu.md'}")
    shutil.rmtree(check.work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
