"""Probes of `edgeas doctor`: what this machine has, as one JSON-ready dict.

Every probe is guarded: a missing or broken optional package is a finding, never a
crash, and torch/TensorRT are imported only inside the probes. Jetson facts come from
files under a root (`EDGEAS_DOCTOR_ROOT`, default /) and from commands run through a
runner, so tests feed sample files and canned command output for any module.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import edgeas

Runner = Callable[[Sequence[str]], "str | None"]
Loader = Callable[[str], "tuple[ModuleType | None, str | None]"]
Info = dict[str, Any]

TARGETS = ("train", "build-engine", "stream")
MIN_EVENTS_FREE_MB = 100  # below this a station soon cannot write NG frames
# L4T release -> JetPack release, from NVIDIA's JetPack archive (mirrors
# jetson/l4t_version.sh); other releases print as "<major>.x".
JETPACK = {
    **{"35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3"},
    **{"35.6.0": "5.1.4", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1"},
    **{"38.2.0": "7.0", "38.2.1": "7.0", "38.4.0": "7.1"},
}
JETPACK_MAJOR = {35: 5, 36: 6, 38: 7, 39: 7}
BUILD_PATHS = {"flags": "10.x builder flags", "strongly-typed": "11.x strongly typed", "rtx": "RTX"}


def run_command(cmd: Sequence[str]) -> str | None:
    """stdout of a command, or None when it is absent, fails or hangs."""
    exe = shutil.which(cmd[0]) or shutil.which(cmd[0], path="/usr/sbin:/sbin")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _has(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a blocked module
        return False


def load_module(name: str) -> tuple[ModuleType | None, str | None]:
    """(module, None) or (None, why); find_spec first so an absent package costs nothing."""
    if not _has(name):
        return None, "not installed"
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # a broken install (no libcuda, ABI mismatch) is a finding
        return None, f"import failed: {type(exc).__name__}: {exc}"


def _version(mod: ModuleType) -> str:
    return str(getattr(mod, "__version__", None) or getattr(mod, "VERSION_TEXT", "unknown"))


# ----------------------------------------------------------------------------- probes
def probe_extras() -> dict[str, dict[str, bool]] | None:
    """Per extra in edgeas's metadata: is each of its packages importable here?"""
    from importlib import metadata

    try:
        requires = metadata.requires("edgeas") or []
    except metadata.PackageNotFoundError:
        return None

    def norm(dist: str) -> str:
        return re.sub(r"[-_.]+", "-", dist).lower()

    modules: dict[str, list[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            modules.setdefault(norm(dist), []).append(module)
    out: dict[str, dict[str, bool]] = {}
    for req in requires:
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if extra and name and _marker_applies(req, extra.group(1)):
            mods = [m for m in modules.get(norm(name.group(1)), []) if m.isidentifier()]
            out.setdefault(extra.group(1), {})[name.group(1)] = any(map(_has, mods))
    return out


def _marker_applies(req: str, extra: str) -> bool:
    # packaging evaluates platform markers (onnxruntime is not in `jetson` on aarch64);
    # without it every requirement of the extra is listed.
    try:
        from packaging.requirements import Requirement

        marker = Requirement(req).marker
        return marker is None or marker.evaluate({"extra": extra})
    except Exception:
        return True


def probe_torch(load: Loader) -> Info:
    torch, err = load("torch")
    if torch is None:
        return {"version": None, "error": err}
    info: Info = {"version": _version(torch), "cuda_build": torch.version.cuda}
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["compute_capability"] = "{}.{}".format(*torch.cuda.get_device_capability(0))
    except Exception as exc:
        info["cuda_available"], info["error"] = False, str(exc)
    return info


def build_path(module: str, version: str) -> str | None:
    """The engine-build route of a TensorRT flavour (deploy.md); None when unusable."""
    if module == "tensorrt_rtx":
        return "rtx"
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None or (int(m.group(1)), int(m.group(2))) < (8, 5):
        return None  # 8.4 and older lack the tensor I/O API (execute_async_v3)
    return "strongly-typed" if int(m.group(1)) >= 11 else "flags"


def probe_tensorrt(load: Loader, module: str = "tensorrt") -> Info:
    trt, err = load(module)
    if trt is None:
        return {"version": None, "build_path": None, "error": err}
    return {"version": _version(trt), "build_path": build_path(module, _version(trt))}


def probe_pycuda(load: Loader) -> Info:
    driver, err = load("pycuda.driver")
    if driver is None:
        return {"version": None, "error": err}
    info: Info = {"version": _version(sys.modules.get("pycuda", driver))}
    try:
        driver.init()
        if driver.Device.count():
            dev = driver.Device(0)
            info["gpu"] = dev.name()
            info["compute_capability"] = "{}.{}".format(*dev.compute_capability())
    except Exception as exc:  # no driver or no device: pycuda imports but cannot run
        info["error"] = str(exc)
    return info


def probe_cuda_python(load: Loader) -> Info:
    """NVIDIA's cuda-python (cuda.bindings): edgeas's CUDA layer where pycuda is missing."""
    driver, err = load("cuda.bindings.driver")
    if driver is None:
        return {"version": None, "error": err}
    info: Info = {"version": _version(sys.modules.get("cuda.bindings", driver))}
    try:  # each call returns (status, value...); status 0 is CUDA_SUCCESS
        status = driver.cuInit(0)[0]
        if int(status):
            raise RuntimeError(f"cuInit: {status}")
        status, count = driver.cuDeviceGetCount()
        if int(status) == 0 and count:
            _, dev = driver.cuDeviceGet(0)
            _, name = driver.cuDeviceGetName(256, dev)
            info["gpu"] = bytes(name).split(b"\x00", 1)[0].decode(errors="replace").strip()
    except Exception as exc:  # no driver library (cuda.pathfinder raises) or no device
        info["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    return info


def cuda_layer(report: Info) -> str | None:
    """What edgeas.cuda.open_cuda would use: pycuda first, else cuda-python, else None."""
    for key, name in (("pycuda", "pycuda"), ("cuda_python", "cuda-python")):
        if report[key]["version"] is not None:
            return name
    return None


def probe_onnxruntime(load: Loader) -> Info:
    ort, err = load("onnxruntime")
    if ort is None:
        return {"version": None, "providers": [], "error": err}
    return {"version": _version(ort), "providers": list(ort.get_available_providers())}


def video_io(build_info: str) -> dict[str, str]:
    """The 'Video I/O:' entries of cv2.getBuildInformation(): {'GStreamer': 'NO', ...}."""
    out: dict[str, str] = {}
    _, found, section = build_info.partition("Video I/O:")
    for line in section.splitlines()[1:] if found else []:
        if not line.startswith("    "):
            break  # a blank line or the next 2-space heading ends the section
        m = re.match(r" {4}(\S[^:]*):\s+(.*)$", line)  # exactly 4 spaces: not avcodec & co
        if m:
            out[m.group(1).strip()] = m.group(2).strip()
    return out


def probe_opencv(load: Loader) -> Info:
    cv2, err = load("cv2")
    if cv2 is None:
        return {"version": None, "error": err}
    raw = video_io(cv2.getBuildInformation())
    yes = {k.lower(): v.upper().startswith("YES") for k, v in raw.items()}
    return {
        "version": _version(cv2),
        "file": getattr(cv2, "__file__", None),
        "GStreamer": yes.get("gstreamer", False),
        "FFmpeg": yes.get("ffmpeg", False),
        "V4L2": yes.get("v4l/v4l2", False) or yes.get("v4l2", False),
        "video_io": raw,
    }


def _read(path: Path) -> str | None:
    try:  # device-tree strings end in NUL
        return path.read_bytes().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def parse_l4t(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, ...' -> '36.4.3' (the rule of jetson/l4t_version.sh)."""
    m = re.match(r"# R(\d+) \(release\), REVISION: (\d+)(?:\.(\d+))?", text)
    return f"{m.group(1)}.{m.group(2)}.{m.group(3) or 0}" if m else None


def jetpack_for_l4t(l4t: str) -> str | None:
    major = JETPACK_MAJOR.get(int(l4t.split(".")[0]))
    return JETPACK.get(l4t) or (f"{major}.x" if major else None)


def parse_power_mode(text: str) -> Info | None:
    """`nvpmodel -q` prints 'NV Power Mode: MAXN' and the mode id on the next line."""
    m = re.search(r"NV Power Mode:\s*(\S+)[ \t]*(?:\r?\n\s*(\d+))?", text)
    return {"name": m.group(1), "id": int(m.group(2)) if m.group(2) else None} if m else None


def count_dla(root: Path) -> int | None:
    """DLA cores from their device nodes (15880000.nvdla0 in sysfs, /dev/nvhost-nvdla1);
    None when neither folder is readable. Not TensorRT's count: a Builder would open a CUDA
    context, too heavy for a health check beside a running station."""
    seen, looked = set(), False
    for folder in (root / "sys/bus/platform/devices", root / "dev"):
        with contextlib.suppress(OSError):
            names = os.listdir(folder)
            looked = True
            seen.update(int(m.group(1)) for n in names if (m := re.search(r"nvdla(\d+)$", n)))
    return len(seen) if looked else None


def probe_jetson(root: Path, run: Runner) -> Info | None:
    release = _read(root / "etc/nv_tegra_release")
    model = _read(root / "proc/device-tree/model")
    model = model or _read(root / "sys/firmware/devicetree/base/model")
    if release is None and "jetson" not in (model or "").lower():
        return None
    l4t = parse_l4t(release) if release else None
    power = run(["nvpmodel", "-q"])
    dla = count_dla(root)
    return {
        "module": model,
        "l4t": l4t,
        "jetpack": jetpack_for_l4t(l4t) if l4t else None,
        "power_mode": parse_power_mode(power) if power else None,
        "dla_cores": dla,
    }


def probe_gpu(run: Runner, report: Info) -> Info | None:
    out = run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"])
    if out and out.strip():
        name, _, cc = out.strip().splitlines()[0].rpartition(",")
        return {"name": name.strip(), "compute_capability": cc.strip(), "source": "nvidia-smi"}
    for key in ("torch", "pycuda", "cuda_python"):
        if report[key].get("gpu"):
            cc = report[key].get("compute_capability")
            return {"name": report[key]["gpu"], "compute_capability": cc, "source": key}
    if report["jetson"]:  # integrated GPU; torch or pycuda would name it
        return {"name": "Jetson integrated GPU", "compute_capability": None, "source": "jetson"}
    return None


def probe_events(events_dir: Path, budget_mb: int | None) -> Info:
    existing = events_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # not created yet: the disk it will be created on
    return {
        "dir": str(events_dir),
        "exists": events_dir.is_dir(),
        "writable": os.access(existing, os.W_OK),
        "free_mb": shutil.disk_usage(existing).free // 2**20,
        "budget_mb": budget_mb,
    }


def collect(
    root: Path | None = None,
    run: Runner = run_command,
    load: Loader = load_module,
    events_dir: Path = Path("events"),
    budget_mb: int | None = None,
) -> Info:
    """Everything doctor reports, as one JSON-ready dict."""
    root = Path(root or os.environ.get("EDGEAS_DOCTOR_ROOT") or "/")
    report: Info = {
        "edgeas": edgeas.__version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": f"{platform.system()} {platform.machine()}",
        "extras": probe_extras(),
        "torch": probe_torch(load),
        "tensorrt": probe_tensorrt(load, "tensorrt"),
        "tensorrt_rtx": probe_tensorrt(load, "tensorrt_rtx"),
        "pycuda": probe_pycuda(load),
        "cuda_python": probe_cuda_python(load),
        "onnxruntime": probe_onnxruntime(load),
        "opencv": probe_opencv(load),
        "jetson": probe_jetson(root, run),
    }
    report["cuda_layer"] = cuda_layer(report)
    report["gpu"] = probe_gpu(run, report)
    report["events"] = probe_events(events_dir, budget_mb)
    return report
