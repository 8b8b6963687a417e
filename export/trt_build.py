"""The TensorRT steps of `edgeas build-engine`, each small and separately testable:

detect_flavour -> parse_onnx -> make_config -> build (bytes).

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
    if flavour.major < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)  # the default from TensorRT 10 on
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


def pin_fp32_layers(trt, network, names: set[str]) -> int:
    """TensorRT 10 with the FP16 flag: ask for FP32 in the layers named `names` (the
    ONNX nodes `edgeas.export.fp16` keeps in FP32); the parser names a node's main
    layer after the node. Returns how many layers were pinned."""
    floats = {trt.DataType.FLOAT, trt.DataType.HALF}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in names and layer.num_outputs and layer.get_output_type(0) in floats:
            layer.precision = trt.DataType.FLOAT
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.DataType.FLOAT)
            pinned += 1
    return pinned


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


@dataclass
class BuildOptions:
    precision: str | None = None  # None: the ONNX's own precision
    workspace_gb: float = 2.0
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    timing_cache: Path | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    optimization_level: int | None = None
    calib_images: Path | None = None
    calib_cache: Path | None = None
    calib_num: int = 256
    calib_batch: int = 8


def make_config(
    flavour: Flavour,
    parsed: Parsed,
    options: BuildOptions,
    precision: str,
    profile,
    calibrator=None,
    fp32_names: set[str] | None = None,
):
    """The builder config; returns (config, what was applied) for the sidecar."""
    trt = flavour.trt
    config = parsed.builder.create_builder_config()
    if not options.workspace_gb > 0:
        raise ConfigError(f"--workspace-gb must be > 0, got {options.workspace_gb}")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    applied: dict[str, Any] = {"workspace_gb": options.workspace_gb, "flags": [],
                               "cleared_flags": [], "strongly_typed": flavour.strongly_typed}
    if options.optimization_level is not None:
        if not 0 <= options.optimization_level <= 5:
            raise ConfigError(
                f"--optimization-level must be 0..5, got {options.optimization_level}"
            )
        config.builder_optimization_level = options.optimization_level
        applied["optimization_level"] = options.optimization_level
    if profile is not None:
        opt_profile = parsed.builder.create_optimization_profile()
        opt_profile.set_shape(parsed.network.get_input(0).name, *profile)
        config.add_optimization_profile(opt_profile)
        applied["batch"] = {"min": profile[0][0], "opt": profile[1][0], "max": profile[2][0]}

    def flag(name: str) -> None:
        config.set_flag(getattr(trt.BuilderFlag, name))
        applied["flags"].append(name)

    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default (BuilderFlag.TF32, "Enabled by default" in TensorRT's API
        # docs): FP32 tensors may then multiply with 10-bit mantissas on Ampere and newer.
        # ONNX Runtime's FP32 is the accuracy reference, so an FP32 engine is FP32.
        config.clear_flag(trt.BuilderFlag.TF32)
        applied["cleared_flags"].append("TF32")
    if not flavour.strongly_typed:
        if precision in ("fp16", "int8"):
            flag("FP16")  # INT8 too: layers without INT8 fall back to FP16, not FP32
        if precision == "int8":
            flag("INT8")
            if calibrator is not None:
                config.int8_calibrator = calibrator
                if profile is not None:  # calibration runs at one fixed batch
                    batch = calibrator.get_batch_size()
                    calib = parsed.builder.create_optimization_profile()
                    shape = (batch, *profile[0][1:])
                    calib.set_shape(parsed.network.get_input(0).name, shape, shape, shape)
                    config.set_calibration_profile(calib)
        if precision == "fp16" and fp32_names:
            applied["fp32_layers"] = pin_fp32_layers(trt, parsed.network, fp32_names)
            flag("PREFER_PRECISION_CONSTRAINTS")
    check_dla(flavour, parsed, options, precision, profile, fp32_names)
    _dla(flavour, config, options, applied, flag)
    if options.timing_cache is not None:
        applied["timing_cache"] = attach_timing_cache(config, Path(options.timing_cache))
    return config, applied


def attach_timing_cache(config, path: Path) -> dict[str, Any]:
    """Read `path` into the config's timing cache, or start an empty one.

    `set_timing_cache(cache, ignore_mismatch=False)` returns False for a cache made on
    another device (IBuilderConfig.set_timing_cache in TensorRT's Python API): timings of
    another GPU would mislead the tactic choice, so the build goes on with an empty cache
    and the file is rewritten after the build. Returns the sidecar's record.
    """
    data = path.read_bytes() if path.is_file() else b""
    record: dict[str, Any] = {"file": str(path), "reused": False}
    if data:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, False):
            return dict(record, reused=True)
        record["note"] = "made by another GPU or TensorRT version: started empty"
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        record["note"] = "TensorRT refused an empty timing cache: built without one"
    return record


def check_dla(flavour: Flavour, parsed: Parsed, options: BuildOptions, precision: str,
              profile, fp32_names: set[str] | None) -> None:
    """Refuse, before any config, calibrator or build, what the DLA cannot build.

    The DLA runs FP16 and INT8 layers of static shape only (TensorRT's "DLA Supported
    Layers and Restrictions": the profile's min, opt and max must be equal). Without
    --gpu-fallback the builder would fail late with a long log instead.
    """
    if options.dla_core is None:
        if options.gpu_fallback:
            raise ConfigError("--gpu-fallback goes with --dla-core")
        return
    if flavour.strongly_typed:
        raise ConfigError(
            f"--dla-core needs TensorRT 10 (JetPack 6) with builder flags; {flavour.label} "
            "has none"
        )
    if precision == "fp32":
        raise ConfigError("the DLA runs FP16 or INT8 only", hint="add --precision fp16")
    cores = int(parsed.builder.num_DLA_cores)
    if not 0 <= options.dla_core < cores:
        raise ConfigError(f"--dla-core {options.dla_core}: this device has {cores} DLA cores")
    if options.gpu_fallback:
        return
    core = f"--dla-core {options.dla_core}"
    if profile is not None and profile[0] != profile[2]:
        lo, hi = profile[0][0], profile[2][0]
        raise ConfigError(
            f"{core}: the DLA builds static shapes only, and this is a dynamic batch "
            f"{lo}..{hi}",
            hint=f"pin the batch (--min-batch {hi} --opt-batch {hi} --max-batch {hi}) or "
            "add --gpu-fallback",
        )
    if precision == "fp16" and fp32_names:
        raise ConfigError(
            f"{core}: {len(fp32_names)} layers are kept in FP32 for accuracy, and the DLA "
            "runs FP16/INT8 only",
            hint="add --gpu-fallback to run those layers on the GPU",
        )


def _dla(flavour, config, options, applied, flag) -> None:
    """Apply the DLA settings `check_dla` accepted."""
    if options.dla_core is None:
        return
    config.default_device_type = flavour.trt.DeviceType.DLA
    config.DLA_core = options.dla_core
    applied["dla_core"] = options.dla_core
    if options.gpu_fallback:
        flag("GPU_FALLBACK")


def save_timing_cache(config, path: Path) -> bool:
    """Write the config's timing cache (after the engine is saved: a failure here must not
    lose the engine). False when the config holds none."""
    from edgeas.fileio import atomic_write_bytes

    cache = config.get_timing_cache()
    if cache is None:
        return False
    atomic_write_bytes(path, bytes(memoryview(cache.serialize())))
    return True
