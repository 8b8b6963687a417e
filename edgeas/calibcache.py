"""TensorRT's legacy INT8 calibration cache (text), for the TensorRT 10 implicit-INT8
route (Jetson DLA on JetPack 6, `trtexec --int8 --calib=FILE`).

The format TensorRT writes and reads back: a first line `TRT-<version>-<algorithm>`,
then one line per tensor `<name>: <hex>`, where hex is the big-endian bit pattern of the
float32 scale = amax / 127. <version> is TensorRT's integer version
(10.3.0 -> 100300; before 10: 8.6.1 -> 8601); TensorRT refuses a cache whose header
names another version or another calibrator and calibrates again.

In the core because both INT8 routes read or write it: `edgeas calibrate` writes the
cache and its record, `edgeas build-engine --calib-cache` (edgeas.export) reuses them.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeas.errors import ArtifactError, ConfigError

# JetPack 6.1 / 6.2, whose DLA still needs the legacy calibrator (deploy.md).
DEFAULT_VERSION = "10.3.0"
# The calibrator edgeas builds with (export/trt_calibrator.py) and trtexec uses is an
# IInt8EntropyCalibrator2: TensorRT only reads a cache under that calibrator's name,
# whatever method chose the ranges (recorded in the metadata and the report instead).
ALGORITHM = "EntropyCalibration2"
# The record beside a cache says who made it; `build-engine --calib-cache` reuses a cache
# of `edgeas calibrate` without images when the record names the very ONNX being built.
MADE_BY = "edgeas calibrate"


def version_number(version: str) -> int:
    """"10.3.0" -> 100300, "8.6.1" -> 8601 (NV_TENSORRT_VERSION)."""
    try:
        parts = [int(p) for p in version.split(".")[:3]]
    except ValueError:
        parts = []
    if len(parts) < 2:
        raise ConfigError(f"--trt-version {version!r}: expected MAJOR.MINOR[.PATCH], e.g. 10.3.0")
    major, minor, patch = (parts + [0])[:3]
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    return major * 1000 + minor * 100 + patch


def header(version: str = DEFAULT_VERSION) -> str:
    return f"TRT-{version_number(version)}-{ALGORITHM}"


def scale_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def render(amax: Mapping[str, float], version: str = DEFAULT_VERSION) -> tuple[str, list[str]]:
    """(cache text, names left out). A tensor with amax 0 (always zero) or non-finite has
    no usable scale: it is left out, and TensorRT runs its layers in higher precision."""
    lines, skipped = [header(version)], []
    for name, value in amax.items():
        if not (math.isfinite(value) and value > 0):
            skipped.append(name)
            continue
        lines.append(f"{name}: {scale_hex(value / 127.0)}")
    return "\n".join(lines) + "\n", skipped


def parse(text: str) -> tuple[str, dict[str, float]]:
    """(header, {tensor: scale}) of a cache file's text."""
    rows = text.splitlines()
    if not rows or not rows[0].startswith("TRT-"):
        raise ArtifactError("not a TensorRT calibration cache (first line is not TRT-...)")
    scales = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row.strip():
            continue
        # tensor names may contain ': ' themselves; the scale is after the last one
        name, sep, value = row.rpartition(": ")
        try:
            if not sep or len(value.strip()) != 8:
                raise ValueError(value)
            scales[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
        except ValueError as exc:
            raise ArtifactError(
                f"calibration cache line {number} is not 'name: hex': {row!r}"
            ) from exc
    return rows[0], scales


def record_path(cache: Path) -> Path:
    """`<cache>.json`, the record of what made `cache`."""
    return cache.with_name(cache.name + ".json")


def calibrate_record(onnx_sha256: str, input_size: Sequence[int], calibration: Mapping[str, Any],
                     version: str) -> dict[str, Any]:
    """What `edgeas calibrate` writes beside its cache: the FP32 ONNX whose tensor names
    the cache uses, the images and method behind the ranges, and the cache's header."""
    return {
        "made_by": MADE_BY, "onnx_sha256": onnx_sha256, "input_size": list(input_size),
        "header": header(version),
        **{k: calibration[k] for k in ("method", "images", "file_list_sha256")},
    }


def read_calibrate_record(cache: Path) -> dict[str, Any] | None:
    """The record `edgeas calibrate` left beside `cache`; None when there is none or it
    was made otherwise (TensorRT's own calibrator writes a record without `made_by`)."""
    try:
        record = json.loads(record_path(cache).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("made_by") == MADE_BY else None
