"""The TensorRT steps of `edgeas build-engine`, each small and separately testable:

detect_flavour -> parse_onnx -> make_config (edgeas.export.trt_config) -> build (bytes).

Three flavours share these steps. TensorRT 10 (and 8.x): weakly typed networks,
precision from builder flags, INT8 from a calibrator or Q/DQ nodes. TensorRT 11
and TensorRT-RTX: strongly typed networks whose precision is the ONNX's own.
TensorRT is imported only here, only when called; torch never.
"""

from __future__ import annotations

import ctypes
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeas.errors import ArtifactError, ConfigError, DependencyError

FLAVOURS = ("auto", "tensorrt", "tensorrt_rtx")
INSTALL_HINT = (
    "pip install tensorrt (TensorRT 11, desktop/server GPUs), pip install tensorrt-rtx "
    "(RTX GPUs; also builds on a CPU), or on Jetson use JetPack's TensorRT in a venv made "
    "with --system-site-packages"
)
# cuDeviceGetAttribute ids (CUDA driver API): compute capability major / minor.
_CC_MAJOR, _CC_MINOR = 75, 76


@dataclass(frozen=True)
class Flavour:
    name: str  # "tensorrt" | "tensorrt_rtx"
    trt: Any  # the imported module
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def strongly_typed(self) -> bool:
        """TensorRT 11 dropped the FP16/INT8 flags; TensorRT-RTX never had them."""
        return self.name == "tensorrt_rtx" or self.major >= 11

    @property
    def label(self) -> str:
        return f"{'TensorRT-RTX' if self.name == 'tensorrt_rtx' else 'TensorRT'} {self.version}"


@dataclass(frozen=True)
class GpuInfo:
    name: str | None
    compute_capability: str | None
    reason: str | None = None  # why there is no GPU


def detect_flavour(which: str = "auto", gpu: GpuInfo | None = None) -> Flavour:
    """The TensorRT to build with. `auto` prefers NVIDIA's `tensorrt` where there is a
    GPU (it cannot build without one) and TensorRT-RTX, which builds on a CPU, where
    there is none."""
    if which not in FLAVOURS:
        raise ConfigError(f"--tensorrt {which} is not one of {', '.join(FLAVOURS)}")
    names = (which,)
    if which == "auto":
        has_gpu = gpu is not None and gpu.name is not None
        names = ("tensorrt", "tensorrt_rtx") if has_gpu else ("tensorrt_rtx", "tensorrt")
    seen = []
    for name in names:
        try:
            trt = importlib.import_module(name)
        except (ImportError, OSError) as exc:  # OSError: a library of the wheel is missing
            seen.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        return Flavour(name, trt, str(getattr(trt, "__version__", "0")))
    raise DependencyError(
        f"build-engine needs TensorRT and cannot import it ({'; '.join(seen)})", hint=INSTALL_HINT
    )


def probe_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device `device`, via the driver library only."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return GpuInfo(None, None, f"no CUDA driver ({names[0]} not found)")
    if (rc := lib.cuInit(0)) != 0:
        return GpuInfo(None, None, f"CUDA driver present but cuInit failed (CUDA error {rc})")
    count, dev = ctypes.c_int(0), ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device:
        return GpuInfo(None, None, f"no CUDA device {device} ({count.value} found)")
    lib.cuDeviceGet(ctypes.byref(dev), device)
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, 256, dev)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev)
    return GpuInfo(name.value.decode(errors="replace"), f"{major.value}.{minor.value}")


def make_logger(trt, echo=None):
    """A TensorRT logger that keeps errors (for the one-line message) and passes
    warnings and errors to `echo`."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            level = int(severity)
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
            if echo is not None and level <= int(trt.ILogger.Severity.WARNING):
                echo(str(msg))

    return _Logger()


@dataclass
class Parsed:
    builder: Any
    network: Any
    parser: Any
    logger: Any


def _describe(error) -> str:
    def call(name: str) -> Any:
        fn = getattr(error, name, None)
        return fn() if callable(fn) else None

    node = call("node_name") or (f"#{call('node')}" if call("node") not in (None, -1) else "?")
    op = call("node_operator")
    return f"node '{node}'{f' ({op})' if op else ''}: {call('desc')}"


def parse_onnx(flavour: Flavour, source: Path | bytes, logger, label: str) -> Parsed:
    """Builder, network and parser for `source` (a file, or serialized model bytes)."""
    trt = flavour.trt
    builder = trt.Builder(logger)
    if builder is None:
        raise DependencyError(
            f"{flavour.label} could not create a builder: {'; '.join(logger.errors) or 'no GPU?'}",
            hint=INSTALL_HINT,
        )
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if flavour.strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    # TensorRT 8.x needs EXPLICIT_BATCH (the default from 10 on). TensorRT-RTX versions are
    # 1.x, so `major < 10` held for it too, but there the flag is deprecated and ignored.
    if flavour.name == "tensorrt" and flavour.major < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(source)) if isinstance(source, Path) else parser.parse(source)
    if not ok:
        errors = [_describe(parser.get_error(i)) for i in range(parser.num_errors)]
        more = f" (and {len(errors) - 1} more errors above)" if len(errors) > 1 else ""
        raise ArtifactError(
            f"{label}: {flavour.label} cannot parse the ONNX: {errors[0] if errors else '?'}{more}",
            hint="re-export with `edgeas export`; if it persists, report the node and versions",
        )
    return Parsed(builder, network, parser, logger)


def _dtype(trt, dtype) -> str:
    try:
        import numpy as np

        return np.dtype(trt.nptype(dtype)).name
    except (TypeError, ValueError, AttributeError):
        return str(dtype).split(".")[-1].lower()


def network_io(trt, network) -> dict[str, list[dict[str, Any]]]:
    def one(t) -> dict[str, Any]:
        return {"name": t.name, "dtype": _dtype(trt, t.dtype), "shape": [int(d) for d in t.shape]}

    return {
        "inputs": [one(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [one(network.get_output(i)) for i in range(network.num_outputs)],
    }


def has_qdq(trt, network) -> bool:
    kinds = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def batch_profile(network, min_b, opt_b, max_b, label: str, default_max: int = 8):
    """(min, opt, max) shapes for a dynamic batch, or None for a static graph."""
    if network.num_inputs != 1:
        raise ArtifactError(f"{label}: expected one input (image), found {network.num_inputs}")
    shape = [int(d) for d in network.get_input(0).shape]
    if any(d < 0 for d in shape[1:]):
        raise ArtifactError(f"{label}: only the batch dimension may be dynamic, got {shape}")
    given = [b for b in (min_b, opt_b, max_b) if b is not None]
    if shape[0] >= 0:
        if any(b != shape[0] for b in given):
            raise ConfigError(
                f"{label} has a static batch of {shape[0]}; --min/--opt/--max-batch need a "
                "model exported with --dynamic-batch"
            )
        return None
    lo = min_b or 1
    opt = opt_b or lo
    hi = max_b or max(opt, default_max)
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"batch profile must satisfy 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")
    return tuple(tuple([b, *shape[1:]]) for b in (lo, opt, hi))


def build(flavour: Flavour, parsed: Parsed, config, label: str) -> bytes:
    blob = parsed.builder.build_serialized_network(parsed.network, config)
    data = bytes(memoryview(blob)) if blob is not None else b""
    if not data:
        last = parsed.logger.errors[-1] if parsed.logger.errors else "no message"
        raise ArtifactError(
            f"{label}: {flavour.label} failed to build the engine: {last}",
            hint="see the TensorRT messages above; --workspace-gb may be too small",
        )
    return data
