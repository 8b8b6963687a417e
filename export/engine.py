"""`edgeas build-engine`: ONNX -> `model.engine` + `model.engine.json`.

The steps (`edgeas.export.trt_build`): detect the TensorRT flavour -> make the
ONNX the builder needs (a typed FP16 graph for strongly typed builders) ->
parse -> config -> build -> save. Imports neither torch nor, until called,
TensorRT: it runs on a Jetson with the runtime-only install.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeas.artifacts import read_onnx_record, sha256_file, sidecar_path
from edgeas.errors import ConfigError, DependencyError, require
from edgeas.export import trt_build, trt_config
from edgeas.export.trt_build import Flavour, GpuInfo
from edgeas.export.trt_config import BuildOptions
from edgeas.fileio import atomic_write_bytes, atomic_write_text
from edgeas.record import ModelRecord

__all__ = ["BuildOptions", "build_engine", "build_engine_command", "prepare_onnx"]
PRECISIONS = ("fp32", "fp16", "int8")
console = Console(stderr=True, soft_wrap=True)


@dataclass
class Prepared:
    source: Path | bytes  # what the parser reads
    precision: str  # what the engine will run
    conversion: dict[str, Any] | None = None


def _typed_fp16(onnx_path: Path, record: ModelRecord) -> tuple[bytes, dict[str, Any]]:
    """The FP32 ONNX as a typed FP16 graph (float32 I/O), with its metadata updated."""
    onnx = require("onnx", "onnx", "export")
    from edgeas.export.fp16 import convert_to_fp16
    from edgeas.onnxio import set_metadata

    model16, stats = convert_to_fp16(onnx.load(str(onnx_path)))
    set_metadata(model16, record.with_stage("export", record.export, precision="fp16").to_json())
    data = model16.SerializeToString()
    info = {"from": "fp32", "to": "fp16", "tool": "edgeas.export.fp16",
            "kept_fp32": stats["kept_fp32"], "typed_onnx_sha256": hashlib.sha256(data).hexdigest()}
    return data, info


def prepare_onnx(flavour: Flavour, onnx_path: Path, record: ModelRecord, wanted: str | None):
    """Decide the engine precision and what to parse; strongly typed builders get an
    ONNX whose types already are that precision."""
    have = record.precision
    want = wanted or have
    if want not in PRECISIONS:
        raise ConfigError(f"--precision {want} is not one of {', '.join(PRECISIONS)}")
    if have != "fp32" and want != have:
        raise ConfigError(
            f"{onnx_path} is a {have} model; it cannot become a {want} engine",
            hint="build from the FP32 model.onnx that `edgeas export` wrote",
        )
    if not flavour.strongly_typed or want == have:
        return Prepared(onnx_path, want)
    if want == "fp16":
        data, info = _typed_fp16(onnx_path, record)
        return Prepared(data, want, info)
    raise ConfigError(
        f"{flavour.label} has no INT8 calibrator: it builds INT8 from a Q/DQ ONNX",
        hint=f"run `edgeas calibrate --onnx {onnx_path} --images DIR -o model.int8.onnx` and "
        "build from model.int8.onnx",
    )


def _fp32_layer_names(onnx_path: Path, precision: str = "fp16") -> set[str] | None:
    """Names of the nodes pinned to FP32 on TensorRT 10, whose FP16 flag is on for FP16
    and INT8 builds alike: for FP16 those the FP16 converter keeps in FP32; for INT8 a
    decision head's (edgeas.head_graph), which has no INT8 and would otherwise fall back
    to FP16, where its |x|^2 - 2 x.b + |b|^2 cancels to noise. None without `onnx`."""
    try:
        onnx = require("onnx", "onnx", "export")
    except DependencyError:
        return None
    model = onnx.load(str(onnx_path))
    if precision == "int8":
        from edgeas.head_graph import head_node_names

        return set(head_node_names(model))
    from edgeas.export.fp16 import fp32_node_names

    return set(fp32_node_names(model))


def _static_batch(parsed) -> int:
    return int(parsed.network.get_input(0).shape[0])


def _calibrate_cache(flavour, options, record: ModelRecord, parsed, onnx_sha):
    """(calibrator, record, cache) reading the cache `edgeas calibrate` wrote, or None when
    --calib-cache is not such a cache. TensorRT then takes the scales from the cache and
    feeds no batch, so no images are needed; a cache it would not accept is refused here,
    because without images TensorRT could not calibrate again."""
    from edgeas import calibcache
    from edgeas.export import trt_calibrator as tc

    path = options.calib_cache
    made = calibcache.read_calibrate_record(Path(path)) if path is not None else None
    if made is None:
        return None
    if not Path(path).is_file():
        raise ConfigError(f"--calib-cache {path}: file not found (only its record is there)")
    if made["onnx_sha256"] != onnx_sha:
        raise ConfigError(
            f"--calib-cache {path} was calibrated on another ONNX than this --onnx "
            f"(sha256 {made['onnx_sha256'][:12]}... vs {onnx_sha[:12]}...)",
            hint="pass the model.onnx that `edgeas calibrate --onnx` read, or calibrate again",
        )
    head = Path(path).read_text(errors="replace").split("\n", 1)[0].strip()
    wanted = calibcache.header(flavour.version)
    if head != wanted:
        raise ConfigError(
            f"--calib-cache {path} starts {head!r}; {flavour.label} reads only {wanted!r}",
            hint=f"edgeas calibrate ... --trt-version {flavour.version}",
        )
    if options.calib_images is not None:
        console.print(f"note: --calib-images unused: the scales come from {path}")
    static = _static_batch(parsed)
    recipe = record.preprocessing
    batches = tc.CalibrationBatches([], recipe, static if static > 0 else options.calib_batch)
    cache = tc.CalibrationCache(path, made)
    calibrator = tc.make_entropy_calibrator(flavour.trt, batches, cache)
    record = {k: made[k] for k in ("method", "images", "file_list_sha256", "made_by")}
    return calibrator, dict(record, cache=str(path)), cache


def _calibration(flavour, options, record: ModelRecord, parsed, output, onnx_sha, precision):
    """(calibrator, the sidecar's calibration record, the cache), each possibly None."""
    trt = flavour.trt
    if precision != "int8":
        return None, None, None
    if trt_build.has_qdq(trt, parsed.network):
        # the scales are in the graph: the calibration is the one that made the Q/DQ ONNX
        made = (record.calibration or {}).get("calibration") or {}
        return None, {"method": "qdq", **made}, None
    if flavour.strongly_typed:
        raise ConfigError(
            f"{flavour.label} builds INT8 only from a Q/DQ ONNX, and this one has no Q/DQ nodes",
            hint="use the model.int8.onnx written by `edgeas calibrate`",
        )
    made = _calibrate_cache(flavour, options, record, parsed, onnx_sha)
    if made is not None:
        return made
    if options.calib_images is None:
        raise ConfigError(
            "INT8 on TensorRT 10 needs --calib-images DIR (normal images), a --calib-cache "
            "written by `edgeas calibrate`, or a Q/DQ ONNX",
            hint="or build FP16; calibrating on anything but normal station images is wrong",
        )
    from edgeas import calibimages
    from edgeas.export import trt_calibrator as tc

    recipe = record.preprocessing
    paths = calibimages.list_images(options.calib_images, options.calib_num)
    if len(paths) < calibimages.WARN_IMAGES:
        console.print(f"[yellow]warning:[/] {len(paths)} calibration images; "
                      f">= {calibimages.WARN_IMAGES} are recommended")
    static = _static_batch(parsed)
    # a static graph calibrates at its own batch; a dynamic one at --calib-batch
    batches = tc.CalibrationBatches(paths, recipe, static if static > 0 else options.calib_batch)
    provenance = {
        "method": tc.METHOD, "images": batches.count, "batch": batches.batch,
        "file_list_sha256": calibimages.file_list_sha256(paths[: batches.count],
                                                      options.calib_images),
        "onnx_sha256": onnx_sha, "input_size": list(recipe.input_size),
    }
    cache = tc.CalibrationCache(options.calib_cache or output.with_name(output.name + ".calib"),
                                provenance)
    calibrator = tc.make_entropy_calibrator(trt, batches, cache)
    record = {k: provenance[k] for k in ("method", "images", "file_list_sha256")}
    return calibrator, dict(record, cache=str(cache.path)), cache


def build_engine(
    onnx_path: Path,
    output: Path,
    options: BuildOptions,
    flavour: Flavour | None = None,
    gpu: GpuInfo | None = None,
) -> dict[str, Any]:
    """Build and save; returns the sidecar. `flavour`/`gpu` default to what is installed."""
    onnx_path, output = Path(onnx_path), Path(output)
    if not onnx_path.is_file():
        raise ConfigError(f"--onnx {onnx_path}: file not found")
    if output.resolve() == onnx_path.resolve() or output.suffix == ".json":
        raise ConfigError(f"-o {output}: choose an engine file such as model.engine")
    record = read_onnx_record(onnx_path)
    gpu = gpu or trt_build.probe_gpu()
    flavour = flavour or trt_build.detect_flavour("auto", gpu)
    if flavour.name == "tensorrt" and gpu.name is None:
        raise DependencyError(
            f"{flavour.label} builds engines on an NVIDIA GPU and there is none here "
            f"({gpu.reason})",
            hint="build on the target machine, or install tensorrt-rtx, which builds engines "
            "for RTX GPUs on a CPU",
        )
    onnx_sha = sha256_file(onnx_path)
    prepared = prepare_onnx(flavour, onnx_path, record, options.precision)
    logger = trt_build.make_logger(flavour.trt, echo=lambda m: console.print(f"[dim]{m}[/]"))
    parsed = trt_build.parse_onnx(flavour, prepared.source, logger, str(onnx_path))
    profile = trt_build.batch_profile(parsed.network, options.min_batch, options.opt_batch,
                                      options.max_batch, str(onnx_path))
    names = None
    if prepared.precision in ("fp16", "int8") and not flavour.strongly_typed:
        names = _fp32_layer_names(onnx_path, prepared.precision)
    # before the calibrator and the config: what the DLA cannot build is a one-line error
    trt_config.check_dla(flavour, parsed, options, prepared.precision, profile, names)
    calibrator, calibration, cache = _calibration(flavour, options, record, parsed, output,
                                                  onnx_sha, prepared.precision)
    # From here the calibrator holds the CUDA primary context pushed on this thread (its
    # device input, until close()): whatever fails next, a config error included, must
    # pop it, or pycuda's context-stack check aborts the process at exit (exit 134).
    try:
        config, applied = trt_config.make_config(flavour, parsed, options, prepared.precision,
                                                 profile, calibrator, names, gpu)
        start = time.perf_counter()
        engine = trt_build.build(flavour, parsed, config, str(onnx_path))
        seconds = time.perf_counter() - start
    finally:
        if calibrator is not None:
            calibrator.close()
    if prepared.precision == "fp16" and not flavour.strongly_typed and names is None:
        applied["fp32_layers"] = "not pinned (the onnx package is missing)"
    if options.compute_capability is None and applied.get("compute_capabilities"):
        console.print(f"note: built for compute capability {gpu.compute_capability} only (this "
                      "GPU; TensorRT-RTX's portable default does not cover it)")
    timing = applied.get("timing_cache")
    if timing and timing.get("note"):
        console.print(f"note: timing cache {timing['file']}: {timing['note']}")
    if cache is not None:
        calibration["cache_reused"] = cache.reused
    engine_stage = {
        "tensorrt_version": flavour.version,
        "tensorrt_flavour": flavour.name,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "gpu_reason": gpu.reason,
        "onnx_file": onnx_path.name,
        "onnx_sha256": onnx_sha,
        "onnx_conversion": prepared.conversion,
        **trt_build.network_io(flavour.trt, parsed.network),
        "build_options": applied,
        "calibration": calibration,
        "engine_sha256": hashlib.sha256(engine).hexdigest(),
        "engine_bytes": len(engine),
        "build_seconds": round(seconds, 2),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    sidecar = record.with_stage("engine", engine_stage, precision=prepared.precision).to_json()
    save(output, engine, sidecar)
    if options.timing_cache is not None:  # the engine first: it is what the build was for
        trt_config.save_timing_cache(config, Path(options.timing_cache))
    return sidecar


def save(output: Path, engine: bytes, sidecar: dict[str, Any]) -> None:
    """Engine first, then its sidecar, each atomically. The sidecar names the engine's
    sha256, so a sidecar left from an older build cannot pass for this engine's."""
    atomic_write_bytes(output, engine)
    atomic_write_text(sidecar_path(output), json.dumps(sidecar, indent=2) + "\n")


def build_engine_command(onnx: Path, output: Path, options: BuildOptions, which: str) -> None:
    gpu = trt_build.probe_gpu()
    flavour = trt_build.detect_flavour(which, gpu)
    side = build_engine(Path(onnx), Path(output), options, flavour, gpu)
    where = side["gpu"] or f"no GPU here: {side['gpu_reason']}"
    console.print(
        f"[green]wrote[/] {output} ({side['engine_bytes'] / 2**20:.1f} MiB, "
        f"{side['precision']}, {flavour.label}, {where}) in {side['build_seconds']:.1f} s "
        f"and {sidecar_path(output)}"
    )
    if side["onnx_conversion"]:
        kept = side["onnx_conversion"]["kept_fp32"]
        console.print(f"made the typed FP16 graph first (kept in FP32: {kept})")
    if side["calibration"]:
        console.print(f"calibration: {side['calibration']}")
    console.print(
        "note: an engine runs only with the same TensorRT version and GPU model "
        f"({flavour.label}, {side['gpu'] or 'RTX GPUs'}); the runtime checks the sidecar"
    )
