"""Read the edgeas metadata of any artifact: checkpoint, ONNX model or TensorRT engine.

`read_record` (and its per-kind variants) give the typed `ModelRecord` every stage
reads; `read_metadata` gives the file's own JSON object, validated the same way, for
`edgeas inspect` and for tools that look at the file format itself.

No heavy imports: a checkpoint needs torch (imported only for .pt files), an ONNX
file is read with a tiny protobuf field scanner (the `onnx` package may be absent on
a station), and an engine's metadata is its sidecar `<engine>.json`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

from edgeas.errors import ArtifactError, ConfigError, require
from edgeas.record import ONNX_KEY, ModelRecord

CHECKPOINT_SUFFIXES = (".pt", ".pth")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# ModelProto field numbers (onnx.proto3): metadata_props = 14; in each
# StringStringEntryProto, key = 1 and value = 2.
_METADATA_PROPS = 14


def sidecar_path(engine: str | Path) -> Path:
    """`model.engine` -> `model.engine.json`."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _varint(handle: BinaryIO) -> int | None:
    shift = value = 0
    while True:
        byte = handle.read(1)
        if not byte:
            return None if shift == 0 else _truncated()
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _truncated() -> int:
    raise ValueError("file ends inside a field")


def _fields(data: bytes) -> dict[int, bytes]:
    """Length-delimited fields of a small message (a metadata entry)."""
    import io

    out: dict[int, bytes] = {}
    handle = io.BytesIO(data)
    while (tag := _varint(handle)) is not None:
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            out[number] = handle.read(_varint(handle) or 0)
        else:
            _skip(handle, wire)
    return out


def _skip(handle: BinaryIO, wire: int) -> None:
    if wire == 0:
        _varint(handle)
    elif wire == 1:
        handle.seek(8, 1)
    elif wire == 5:
        handle.seek(4, 1)
    elif wire == 2:
        handle.seek(_varint(handle) or 0, 1)
    else:
        raise ValueError(f"unsupported protobuf wire type {wire}")


def onnx_metadata_props(path: str | Path) -> dict[str, str]:
    """All `metadata_props` of an ONNX file, without loading its graph.

    The graph and its weights are skipped by seeking over them, so this reads a few
    hundred bytes of a model of any size and needs no `onnx` package.
    """
    props: dict[str, str] = {}
    try:
        with open(path, "rb") as handle:
            while (tag := _varint(handle)) is not None:
                number, wire = tag >> 3, tag & 7
                if number == _METADATA_PROPS and wire == 2:
                    entry = _fields(handle.read(_varint(handle) or 0))
                    props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
                else:
                    _skip(handle, wire)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc})") from exc
    return props


# Each kind of artifact: its JSON object and the name errors should give, unvalidated.


def _onnx_json(path: str | Path) -> tuple[Any, str]:
    props = onnx_metadata_props(path)
    if ONNX_KEY not in props:
        raise ArtifactError(
            f"{path}: the ONNX model carries no edgeas metadata (metadata_props key "
            f"'{ONNX_KEY}')",
            hint="export it with `edgeas export`, which writes the preprocessing and "
            "thresholds into the model",
        )
    try:
        return json.loads(props[ONNX_KEY]), str(path)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: edgeas metadata is not valid JSON ({exc})") from exc


def _engine_json(path: str | Path) -> tuple[Any, str]:
    side = sidecar_path(path)
    if not side.is_file():
        raise ArtifactError(
            f"{path}: no sidecar {side.name} beside the engine",
            hint="engines built by `edgeas build-engine` have one; rebuild the engine",
        )
    try:
        return json.loads(side.read_text()), str(side)
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{side}: unreadable engine sidecar ({exc})") from exc


def _checkpoint_json(path: str | Path) -> tuple[Any, str]:
    require("torch", "torch", "train")
    from edgeas.train.checkpoint import load_checkpoint

    data = load_checkpoint(path)
    if "metadata" not in data:
        raise ArtifactError(f"{path}: the checkpoint holds no edgeas metadata")
    return data["metadata"], str(path)


def _any_json(path: str | Path) -> tuple[Any, str]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}")  # a name the user typed: exit 2
    suffix = path.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return _checkpoint_json(path)
    if suffix == ".onnx":
        return _onnx_json(path)
    if suffix in ENGINE_SUFFIXES or sidecar_path(path).is_file():
        return _engine_json(path)
    if suffix == ".json":
        try:
            return json.loads(path.read_text()), str(path)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    raise ArtifactError(
        f"{path}: unknown kind of artifact '{suffix or path.name}'",
        hint="inspect a checkpoint (.pt), an ONNX model (.onnx) or an engine (.engine "
        "with its .engine.json sidecar)",
    )


def _validated(found: tuple[Any, str]) -> dict[str, Any]:
    """The file's own JSON object, once it has been proved to parse as a record."""
    ModelRecord.from_json(*found)
    return found[0]


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata JSON of a checkpoint (.pt), ONNX model (.onnx) or engine."""
    return _validated(_any_json(path))


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    return _validated(_onnx_json(path))


def read_engine_metadata(path: str | Path) -> dict[str, Any]:
    return _validated(_engine_json(path))


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    return _validated(_checkpoint_json(path))


def read_record(path: str | Path) -> ModelRecord:
    """The typed record of a checkpoint (.pt), ONNX model (.onnx) or engine."""
    return ModelRecord.from_json(*_any_json(path))


def read_onnx_record(path: str | Path) -> ModelRecord:
    return ModelRecord.from_json(*_onnx_json(path))


def read_engine_record(path: str | Path) -> ModelRecord:
    return ModelRecord.from_json(*_engine_json(path))


def read_checkpoint_record(path: str | Path) -> ModelRecord:
    return ModelRecord.from_json(*_checkpoint_json(path))
