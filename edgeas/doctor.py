"""`edgeas doctor`: what this machine has for training, building engines and running a
station, what a given command still needs, and the command that installs it.

The probes live in `edgeas.probes`; this module judges and renders their report.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from edgeas.errors import ConfigError
from edgeas.probes import (
    BUILD_PATHS,
    MIN_EVENTS_FREE_MB,
    TARGETS,
    Info,
    _has,
    collect,
)


# ----------------------------------------------------------------------------- requirements
def _installs(jetson: bool) -> dict[str, str]:
    """The command that installs each missing piece, on a Jetson or elsewhere."""
    base = {
        "train": "pip install 'edgeas[train]'",
        "onnxruntime": "pip install onnxruntime",
        "triton": "pip install 'edgeas[triton]'",
        "core": "pip install edgeas",
        "gpu": "run build-engine on the device that will run the engine (engines are per GPU)",
        "model": "build it on this device: edgeas build-engine --onnx model.onnx -o MODEL",
        "disk": "free disk space, or point events.dir at a writable disk",
        "rights": "add the user to the video group (sudo usermod -aG video USER), log in again",
        "runtime": "pip install 'edgeas[runtime]'",
    }
    if jetson:
        return base | {
            "tensorrt": "sudo apt-get install python3-libnvinfer, used from a venv made with "
            "--system-site-packages (sudo jetson/install.sh does both)",
            "pycuda": "sudo jetson/install.sh (builds pycuda against JetPack's CUDA), or "
            "pip install cuda-python",
            "video": "sudo apt-get install nvidia-opencv, then pip uninstall "
            "opencv-python-headless in the venv (jetson/install.sh does both)",
        }
    return base | {
        "tensorrt": "pip install tensorrt (NVIDIA GPU), or pip install tensorrt-rtx (RTX GPU)",
        "pycuda": "pip install pycuda (needs the CUDA toolkit and an NVIDIA driver), or "
        "pip install cuda-python (NVIDIA's bindings; no toolkit needed)",
        "video": "use an OpenCV built with GStreamer, e.g. the distribution's python3-opencv "
        "from a venv made with --system-site-packages",
    }


def check(target: str, report: Info, station: Info | None, events_set: bool) -> list[Info]:
    """What `target` needs and this machine lacks: [{what, why, install}]."""
    cmd, missing = _installs(report["jetson"] is not None), []

    def need(what: str, why: str, key: str, model: str = "") -> None:
        install = cmd[key].replace("MODEL", model)
        missing.append({"what": what, "why": why, "install": install})

    if target == "train":
        if report["torch"]["version"] is None:
            need("torch", f"training runs on PyTorch ({report['torch']['error']})", "train")
        for mod in ("torchvision", "timm"):
            if not _has(mod):
                need(mod, "training builds its backbones with it", "train")
    elif target == "build-engine":
        trt = report["tensorrt"]
        if report["tensorrt_rtx"]["build_path"]:
            pass  # TensorRT for RTX builds even without a GPU (deploy.md)
        elif trt["build_path"] is None:
            old = f"TensorRT {trt['version']} is older than 8.5" if trt["version"] else ""
            need("tensorrt", old or "engines are built with TensorRT", "tensorrt")
        elif report["gpu"] is None:
            need("an NVIDIA GPU", "TensorRT builds on the GPU that will run the engine", "gpu")
    else:
        _stream_needs(report, station or {}, need)
        ev = report["events"]
        if events_set and (not ev["writable"] or ev["free_mb"] < MIN_EVENTS_FREE_MB):
            why = f"{ev['dir']}: writable={ev['writable']}, {ev['free_mb']} MB free"
            need(f"{MIN_EVENTS_FREE_MB} MB for events", why, "disk")
    return missing


def _stream_needs(report: Info, station: Info, need: Callable[..., None]) -> None:
    for mod in ("numpy", "yaml", "cv2"):
        if not _has(mod):
            need(mod, "a core dependency of the station", "core")
    model = str(station.get("model") or "")
    remote = model.split("://", 1)[0].lower() in ("triton", "tritonhttp")
    if remote:
        # served by a Triton server: the station needs its client, no model file or engine
        if not _has("tritonclient"):
            need("tritonclient", f"{model} is a model on a Triton server", "triton")
        model = ""
    kind = ("remote" if remote else "engine" if model.endswith((".engine", ".plan"))
            else "onnx" if model else None)
    trt_ok = bool(report["tensorrt"]["build_path"] or report["tensorrt_rtx"]["build_path"])
    layer = report.get("cuda_layer")  # pycuda, else cuda-python (edgeas.cuda.open_cuda)
    cuda = report[layer.replace("-", "_")] if layer else {}
    cuda_ok = layer is not None and not cuda.get("error")
    onnx_ok = report["onnxruntime"]["version"] is not None
    if kind == "engine" or (kind is None and not (trt_ok and cuda_ok) and not onnx_ok):
        alt = "" if kind else " (or onnxruntime for an ONNX model)"
        if not trt_ok:
            need("tensorrt", f"engines run on TensorRT{alt}", "tensorrt")
        if layer is None:
            need("pycuda or cuda-python",
                 f"the engine runner feeds the GPU through one of them{alt}", "pycuda")
        elif not cuda_ok:
            need("access to the GPU", f"{layer} cannot use it: {cuda['error']}", "rights")
    elif kind == "onnx" and not onnx_ok:
        need("onnxruntime", f"{model} runs on ONNX Runtime", "onnxruntime")
    if model and not Path(model).is_file():
        need("the model file", f"{model} does not exist", "model", model)
    # what the station file sends off the box (interfaces.md "station integration")
    if (station.get("mqtt") or {}).get("url") and not _has("paho"):
        need("paho-mqtt", "the station file's mqtt: publishes through it", "runtime")
    if station.get("metrics") and not _has("prometheus_client"):
        need("prometheus-client", "the station file's metrics: serves through it", "runtime")
    source, cv = str(station.get("source") or ""), report["opencv"]
    wants = {"csi": ("GStreamer",), "rtsp": ("GStreamer", "FFmpeg"), "v4l2": ("V4L2", "GStreamer")}
    backends = wants.get(source.split("://")[0], ()) if "://" in source else ()
    if backends and cv["version"] and not any(cv[b] for b in backends):
        why = f"source {source} needs it; {cv['file']} was built without"
        need(f"{' or '.join(backends)} in OpenCV", why, "video")


def notes(target: str | None, report: Info, missing: list[Info]) -> list[str]:
    """Findings that do not block `target` but change what it does."""
    torch, cv, out = report["torch"], report["opencv"], []
    if target == "train" and torch["version"] and not torch.get("cuda_available"):
        out.append("torch sees no CUDA GPU: training runs on the CPU (practical for `tiny` only)")
    if target == "build-engine" and report["gpu"] is None and not report["tensorrt"]["build_path"]:
        out.append(
            "only TensorRT for RTX and no GPU: it builds in CPU-only mode, engines for RTX "
            "GPUs; a Jetson builds its own engine with JetPack's TensorRT"
        )
    said = any("OpenCV" in m["what"] for m in missing)
    if report["jetson"] and cv["version"] and not cv["GStreamer"] and not said:
        out.append(
            f"{cv['file']} has no GStreamer: csi:// cameras will not open "
            f"(fix: {_installs(True)['video']})"
        )
    return out


# ----------------------------------------------------------------------------- output
def _rows(r: Info) -> list[tuple[str, str]]:
    def pkg(info: Info, more: str = "") -> str:
        return f"{info['version']}{more}" if info["version"] else str(info.get("error"))

    torch, cv, gpu, j, ev = r["torch"], r["opencv"], r["gpu"], r["jetson"], r["events"]
    rows = [("edgeas", f"{r['edgeas']} on Python {r['python']} ({r['executable']})")]
    for extra, pkgs in (r["extras"] or {}).items():
        absent = ", ".join(p for p, ok in pkgs.items() if not ok)
        rows.append((f"extra [{extra}]", f"missing {absent}" if absent else "complete"))
    cuda = f", CUDA build {torch.get('cuda_build')}, GPU: {torch.get('gpu') or 'none'}"
    rows.append(("torch", pkg(torch, cuda)))
    for key, label in (("tensorrt", "TensorRT"), ("tensorrt_rtx", "TensorRT for RTX")):
        path = BUILD_PATHS.get(r[key]["build_path"], "unsupported version")
        rows.append((label, pkg(r[key], f", build path: {path}")))
    for key, label in (("pycuda", "pycuda"), ("cuda_python", "cuda-python")):
        err = r[key].get("error") if r[key]["version"] else None
        rows.append((label, pkg(r[key], f", cannot use a GPU: {err}" if err else "")))
    layer = r.get("cuda_layer")
    rows.append(("CUDA layer", f"{layer} (edgeas.cuda: pycuda first, else cuda-python)"
                 if layer else "none (pip install pycuda, or cuda-python)"))
    rows.append(
        ("ONNX Runtime", pkg(r["onnxruntime"], ", " + ", ".join(r["onnxruntime"]["providers"])))
    )
    io = ", ".join(f"{b} {'yes' if cv.get(b) else 'no'}" for b in ("GStreamer", "FFmpeg", "V4L2"))
    rows.append(("OpenCV", pkg(cv, f", video I/O: {io}")))
    gpu_text = "none found"
    if gpu:
        cc = gpu["compute_capability"]
        gpu_text = f"{gpu['name']}{f', compute capability {cc}' if cc else ''} ({gpu['source']})"
    rows.append(("GPU", gpu_text))
    jetson = "not a Jetson"
    if j:
        mode = j["power_mode"]
        power = f"{mode['name']} (id {mode['id']})" if mode else "unknown (no nvpmodel)"
        jetson = (
            f"{j['module']}; L4T {j['l4t']}, JetPack {j['jetpack']}; "
            f"power mode {power}; DLA cores {j['dla_cores']}"
        )
    rows.append(("Jetson", jetson))
    state = "" if ev["writable"] else ", not writable"
    rows.append(("events", f"{ev['dir']}: {ev['free_mb']} MB free{state}"))
    return rows


def render(report: Info) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = Console()
    table = Table(title="edgeas doctor", title_justify="left")
    table.add_column("component", style="bold")
    table.add_column("found")
    for name, found in _rows(report):
        table.add_row(Text(name), Text(found))  # Text: '[train]' is not rich markup
    out.print(table)
    chk = report["check"]
    if chk["for"] and chk["ok"]:
        out.print(Text(f"ready for {chk['for']}", style="green"))
    for note in chk["notes"]:
        out.print(Text(f"note: {note}", style="yellow"))
    for item in chk["missing"]:
        out.print(Text(f"missing for {chk['for']}: {item['what']} ({item['why']})", style="red"))
        out.print(Text(f"  install: {item['install']}"))


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    # --json promises only JSON on stdout: whatever a probed library prints, even C code
    # writing to fd 1, goes to stderr while the probes run.
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def read_station(path: Path) -> Info:
    import yaml

    hint = "see jetson/station.example.yaml for the fields of a station file"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read station file {path}: {exc}", hint=hint) from exc
    if not isinstance(data, dict) or not isinstance(data.get("events") or {}, dict):
        raise ConfigError(f"station file {path}: expected a mapping with an events mapping", hint)
    return data


def doctor_command(
    target: str | None, as_json: bool, config: Path | None, events_dir: Path | None
) -> int:
    """Exit code: 1 when `target` lacks something, else 0."""
    if target is not None and target not in TARGETS:
        close = difflib.get_close_matches(target, TARGETS, n=1)
        hint = f"did you mean --for {close[0]}?" if close else None
        raise ConfigError(f"unknown --for '{target}': expected {', '.join(TARGETS)}", hint)
    station = read_station(config) if config else None
    events = (station or {}).get("events") or {}
    chosen = events_dir or Path(events.get("dir") or "events")
    budget = events.get("budget_mb", 1024) if station else None
    with _stdout_to_stderr() if as_json else contextlib.nullcontext():
        report = collect(events_dir=chosen, budget_mb=budget)
        events_set = events_dir is not None or bool(events.get("dir"))
        missing = check(target, report, station, events_set) if target else []
    report["check"] = {
        "for": target,
        "ok": not missing,
        "missing": missing,
        "notes": notes(target, report, missing),
    }
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        render(report)
    return 1 if missing else 0
