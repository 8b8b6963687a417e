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


# --------------------------------------------------------------------------- rewriting a file

_METADATA_PROPS = 14  # ModelProto.metadata_props; in each entry key = 1, value = 2


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _top_level_spans(buf):
    """(field number, start, end, payload start) of each top-level field of a ModelProto:
    `buf[start:end]` is the whole field, tag included, so it can be copied verbatim."""
    pos = 0
    while pos < len(buf):
        start = pos
        tag, pos = _varint(buf, pos)
        wire = tag & 7
        payload = pos
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, payload = _varint(buf, pos)
            pos = payload + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("field runs past the end of the file")
        yield tag >> 3, start, pos, payload


def _entry_key(buf, start: int, end: int) -> bytes | None:
    for number, wire, value in _fields(buf, start, end):
        if number == 1 and wire == 2:
            return bytes(buf[value[0]:value[1]])
    return None


def write_metadata_file(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Replace the edgeas record in an ONNX file's metadata_props, atomically, without the
    `onnx` package (a station has ONNX Runtime only): every other top-level field of the
    ModelProto is copied byte for byte and the new entry appended (protobuf reads fields
    in any order). The graph, its weights and other metadata are untouched."""
    from edgeas.fileio import atomic_write_bytes

    path = Path(path)
    data = path.read_bytes()
    kept = []
    try:
        for number, start, end, payload in _top_level_spans(data):
            if number == _METADATA_PROPS and _entry_key(data, payload, end) == ONNX_KEY.encode():
                continue
            kept.append(data[start:end])
    except (ValueError, IndexError) as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc})") from exc
    entry = (_length_delimited(1, ONNX_KEY.encode())
             + _length_delimited(2, json.dumps(meta, sort_keys=True).encode()))
    kept.append(_length_delimited(_METADATA_PROPS, entry))
    atomic_write_bytes(path, b"".join(kept))
