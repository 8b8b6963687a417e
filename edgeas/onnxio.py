"""An ONNX `ModelProto`'s edgeas metadata and checker, and what its weights are stored as.

Shared by export, calibration and the runtime, so it lives in the core. `onnx` is
imported inside the functions that take a ModelProto (`set_metadata`, `get_metadata`
and `check` are handed one, so the package is there already); `has_fp16_initializers`
reads the serialized bytes itself and needs no `onnx` at all, because the runtime-only
install (a station, a Jetson) has ONNX Runtime but not the onnx package.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any

from edgeas.errors import ArtifactError, require
from edgeas.record import ONNX_KEY

# Protobuf field numbers of onnx.proto3 on the path ModelProto.graph.initializer[i].data_type
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DATA_TYPE = 2
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16


def set_metadata(model, meta: dict[str, Any]) -> None:
    """Store `meta` as one JSON value under the key "edgeas" (replacing an older one)."""
    kept = [p for p in model.metadata_props if p.key != ONNX_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = ONNX_KEY
    entry.value = json.dumps(meta, sort_keys=True)


def get_metadata(model) -> dict[str, Any] | None:
    for p in model.metadata_props:
        if p.key == ONNX_KEY:
            return json.loads(p.value)
    return None


def check(model, what: str) -> None:
    """onnx.checker with full type and shape inference; errors become ArtifactError."""
    onnx = require("onnx", "onnx", "export")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ArtifactError(f"{what} fails onnx.checker: {first}") from exc


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _fields(buf, start: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited field) of
    the message in buf[start:end]; nested messages are bounds, never copies, so that the
    weights' raw_data is skipped over rather than read."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("field runs past its message")
            yield number, wire, (pos, pos + size)
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _scan_fp16(buf) -> bool:
    for number, wire, graph in _fields(buf, 0, len(buf)):
        if number != _MODEL_GRAPH or wire != 2:
            continue
        for g_number, g_wire, tensor in _fields(buf, *graph):
            if g_number != _GRAPH_INITIALIZER or g_wire != 2:
                continue
            for t_number, t_wire, value in _fields(buf, *tensor):
                if t_number == _TENSOR_DATA_TYPE and t_wire == 0 and value == _FLOAT16:
                    return True
    return False


def has_fp16_initializers(model: bytes | str | os.PathLike) -> bool:
    """Whether a serialized ONNX model (bytes or a file) holds FP16 weights, without the
    onnx package. A file is memory-mapped: only the pages of the headers are read. What
    cannot be parsed counts as False; ONNX Runtime then reports the broken file itself."""
    try:
        if isinstance(model, (bytes, bytearray, memoryview)):
            return _scan_fp16(memoryview(model))
        with open(Path(model), "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return False
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                return _scan_fp16(view)
    except (OSError, ValueError, IndexError):
        return False
