"""The builder-config step of `edgeas build-engine` (edgeas.export.trt_build holds the
others): precision flags, batch profile, DLA, timing cache, and for TensorRT-RTX the
compute capabilities. Each returns what it applied, for the engine's sidecar.

TensorRT itself is only reached through the `trt` module of a `Flavour`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeas.errors import ConfigError
from edgeas.export.trt_build import Flavour, GpuInfo, Parsed

# TensorRT-RTX engines run on these by default when no compute capability is set at build
# time (TensorRT-RTX support matrix: "portable across devices with compute capabilities
# 8.6, 8.9, and 12.0"; its CPU-only AOT page adds 8.0 "and later"); Turing (7.5) is not
# covered and must be named at build time (TensorRT-RTX samples/apiUsage).
RTX_DEFAULT_MIN_CC = (8, 0)


def pin_fp32_layers(trt, network, names: set[str]) -> int:
    """TensorRT 10 with the FP16 flag: ask for FP32 in the layers named `names` (the
    ONNX nodes `edgeas.export.fp16` keeps in FP32; in an INT8 build a decision head's);
    the parser names a node's main layer after the node. Returns how many layers were
    pinned."""
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
    compute_capability: str | None = None  # TensorRT-RTX: "7.5" or "8.6,8.9"; None: default


def cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def rtx_targets(flavour: Flavour, options: BuildOptions, gpu: GpuInfo | None) -> list[str] | None:
    """The compute capabilities a TensorRT-RTX engine is built for: --compute-capability,
    else this GPU's when the portable default does not cover it (Turing), else None (the
    default set)."""
    wanted = options.compute_capability
    if flavour.name != "tensorrt_rtx":
        if wanted is not None:
            raise ConfigError(
                f"--compute-capability {wanted}: TensorRT-RTX only; {flavour.label} builds for "
                "the GPU it runs on",
                hint="drop --compute-capability, or build with --tensorrt tensorrt_rtx",
            )
        return None
    if wanted is None:
        cc = gpu.compute_capability if gpu is not None else None
        return [cc] if cc and cc_tuple(cc) < RTX_DEFAULT_MIN_CC else None
    targets = [v.strip() for v in wanted.split(",") if v.strip()]
    for value in targets:
        major, dot, minor = value.partition(".")
        if not (dot and major.isdigit() and minor.isdigit()):
            raise ConfigError(f"--compute-capability {wanted}: expected MAJOR.MINOR values "
                              "such as 7.5 or 8.6,8.9")
    return targets or None


def set_rtx_targets(trt, config, targets: list[str]) -> None:
    """IBuilderConfig.num_compute_capabilities, then set_compute_capability(kSMxy, i) per
    target, as NVIDIA's TensorRT-RTX api_usage sample does."""
    enum = trt.ComputeCapability
    members = [getattr(enum, f"SM{t.replace('.', '')}", None) for t in targets]
    missing = [t for t, m in zip(targets, members) if m is None]
    if missing:
        known = [m for m in (getattr(enum, "__members__", None) or vars(enum)) if m[:2] == "SM"]
        names = ", ".join(f"{m[2:-1]}.{m[-1]}" for m in known) or "none"
        raise ConfigError(f"TensorRT-RTX has no compute capability {missing[0]} "
                          f"(it knows {names})", hint="pass one of those to --compute-capability")
    config.num_compute_capabilities = len(members)
    for index, member in enumerate(members):
        config.set_compute_capability(member, index)


def make_config(
    flavour: Flavour,
    parsed: Parsed,
    options: BuildOptions,
    precision: str,
    profile,
    calibrator=None,
    fp32_names: set[str] | None = None,
    gpu: GpuInfo | None = None,
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
        if precision in ("fp16", "int8") and fp32_names:
            applied["fp32_layers"] = pin_fp32_layers(trt, parsed.network, fp32_names)
            flag("PREFER_PRECISION_CONSTRAINTS")
    check_dla(flavour, parsed, options, precision, profile, fp32_names)
    _dla(flavour, config, options, applied, flag)
    targets = rtx_targets(flavour, options, gpu)
    if flavour.name == "tensorrt_rtx":
        # None: TensorRT-RTX's portable default; the runtime reads this to accept a GPU
        applied["compute_capabilities"] = targets
        if targets:
            set_rtx_targets(trt, config, targets)
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
    if precision in ("fp16", "int8") and fp32_names:
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
