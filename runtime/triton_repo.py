"""`edgeas export-triton`: a Triton Inference Server model repository from an edgeas model.

    REPO/NAME/config.pbtxt
    REPO/NAME/1/model.onnx      (platform onnxruntime_onnx, instances KIND_CPU)
    REPO/NAME/1/model.plan      (with --engine: platform tensorrt_plan, instances KIND_GPU)

The config is written as protobuf text by hand (no protobuf package needed on the
machine that exports); the tests parse it with Triton's own `model_config_pb2`. Names
and shapes come from the ONNX graph and its edgeas metadata; the batch dimension is left
to `max_batch_size`, so batching needs a dynamic-batch ONNX (`edgeas export
--dynamic-batch`). The whole edgeas record travels as the config parameter `edgeas`,
which is how a `triton://` station learns preprocessing, levels and thresholds.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgeas.artifacts import read_engine_metadata, read_onnx_metadata
from edgeas.errors import ArtifactError, ConfigError
from edgeas.fileio import atomic_open, atomic_write_text
from edgeas.ort import open_session
from edgeas.record import ModelRecord

PARAMETER_KEY = "edgeas"  # the config parameter the remote backend reads (interfaces.md)
DEFAULT_QUEUE_DELAY_US = 2000  # 2 ms: a 30 FPS camera waits at most this for a batch-mate
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str
    dims: tuple[int, ...]  # without the batch dimension when max_batch_size > 0


@dataclass(frozen=True)
class RepoPlan:
    name: str
    platform: str
    kind: str  # KIND_CPU | KIND_GPU
    max_batch: int
    instances: int
    queue_delay_us: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict
    model_file: str  # model.onnx | model.plan


def _quote(text: str) -> str:
    """A protobuf text-format string literal (the JSON is ASCII: json.dumps escapes the rest)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(shape: list, path: Path, what: str, batched: bool) -> tuple[int, ...]:
    rest = shape[1:] if batched else shape
    if any(not isinstance(d, int) or d < 1 for d in rest):
        raise ArtifactError(f"{path}: {what} has shape {shape}; only the batch dimension may "
                            "be dynamic for a Triton config")
    return tuple(rest)


def _graph_io(onnx: Path, record: ModelRecord, batched: bool) -> tuple[list, list]:
    """Input and outputs of the graph (`record.model.outputs`: the level maps, then a
    decision head's grid, knn_dist (N, 1, h3, w3), where the model has one), named and
    shaped from the graph itself as Triton will see them."""
    try:
        session = open_session(onnx)
    except Exception as exc:  # ONNX Runtime raises its own types for unreadable graphs
        raise ArtifactError(f"{onnx}: ONNX Runtime cannot load it ({exc})") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ArtifactError(f"{onnx}: expected one input, found {len(inputs)}")
    dim0 = inputs[0].shape[0]
    if batched and isinstance(dim0, int):
        raise ConfigError(
            f"{onnx}: the graph has a fixed batch of {dim0}; Triton's batching needs a "
            "dynamic batch dimension",
            hint="re-export with `edgeas export --dynamic-batch`, or pass --max-batch 0")
    outputs = {o.name: o for o in session.get_outputs()}
    missing = [n for n in record.model.outputs if n not in outputs]
    if missing:
        raise ArtifactError(f"{onnx}: the metadata names outputs {', '.join(missing)} that the "
                            f"graph lacks", hint="re-export the model with `edgeas export`")

    def spec(t) -> TensorSpec:
        if t.type not in _TYPES:
            raise ArtifactError(f"{onnx}: {t.name} is {t.type}; expected float32 or float16")
        shape = list(t.shape) if batched else [1 if not isinstance(d, int) else d
                                               for d in t.shape]
        return TensorSpec(t.name, _TYPES[t.type], _dims(shape, onnx, t.name, batched))

    return [spec(inputs[0])], [spec(outputs[n]) for n in record.model.outputs]


def plan_repository(onnx: Path, engine: Path | None = None, name: str = "edgeas",
                    max_batch: int = 8, instances: int = 1,
                    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> RepoPlan:
    """Check the inputs and work out the config; nothing is written yet."""
    if not _NAME.match(name):
        raise ConfigError(f"--name '{name}': a Triton model name here is letters, digits, "
                          "'_', '.' or '-'")
    if max_batch < 0 or instances < 1 or queue_delay_us < 0:
        raise ConfigError(f"--max-batch must be >= 0 (got {max_batch}), --instances >= 1 "
                          f"(got {instances}), --queue-delay-us >= 0 (got {queue_delay_us})")
    if not onnx.is_file():
        raise ConfigError(f"ONNX model not found: {onnx}", hint="edgeas export writes one")
    meta = read_onnx_metadata(onnx)
    if engine is not None:
        if not engine.is_file():
            raise ConfigError(f"engine not found: {engine}", hint="edgeas build-engine makes one")
        meta = read_engine_metadata(engine)  # what the build really did, precision included
        batch = (meta.get("build_options") or {}).get("batch")
        if max_batch > 0 and not batch:
            raise ConfigError(f"{engine}: built for a static batch; Triton's batching needs "
                              "a batch profile", hint="rebuild with `edgeas build-engine "
                              "--max-batch N` from a dynamic-batch ONNX, or pass --max-batch 0")
        if batch and max_batch > int(batch["max"]):
            raise ConfigError(f"--max-batch {max_batch}: {engine} takes at most {batch['max']}",
                              hint=f"pass --max-batch {batch['max']}")
    record = ModelRecord.from_json(meta, str(engine or onnx))
    inputs, outputs = _graph_io(onnx, record, batched=max_batch > 0)
    return RepoPlan(
        name=name,
        platform="tensorrt_plan" if engine is not None else "onnxruntime_onnx",
        kind="KIND_GPU" if engine is not None else "KIND_CPU",
        max_batch=max_batch, instances=instances, queue_delay_us=queue_delay_us,
        inputs=tuple(inputs), outputs=tuple(outputs), metadata=meta,
        model_file="model.plan" if engine is not None else "model.onnx",
    )


def config_text(plan: RepoPlan) -> str:
    """config.pbtxt: protobuf text of Triton's ModelConfig."""

    def tensors(field: str, specs: tuple[TensorSpec, ...]) -> list[str]:
        body = ",\n".join(
            f"  {{\n    name: {_quote(t.name)}\n    data_type: {t.data_type}\n"
            f"    dims: [ {', '.join(str(d) for d in t.dims)} ]\n  }}" for t in specs)
        return [f"{field} [", body, "]"]

    lines = [
        "# Written by `edgeas export-triton`; the parameter `edgeas` is the model's metadata.",
        f"name: {_quote(plan.name)}",
        f"platform: {_quote(plan.platform)}",
        f"max_batch_size: {plan.max_batch}",
        *tensors("input", plan.inputs),
        *tensors("output", plan.outputs),
        "instance_group [",
        f"  {{\n    count: {plan.instances}\n    kind: {plan.kind}\n  }}",
        "]",
    ]
    if plan.max_batch > 0:  # Triton refuses a dynamic batcher on a model that cannot batch
        lines += ["dynamic_batching {",
                  f"  max_queue_delay_microseconds: {plan.queue_delay_us}", "}"]
    meta = json.dumps(plan.metadata, sort_keys=True)
    lines += ["parameters {", f"  key: {_quote(PARAMETER_KEY)}",
              f"  value {{\n    string_value: {_quote(meta)}\n  }}", "}"]
    return "\n".join(lines) + "\n"


def write_repository(plan: RepoPlan, source: Path, repo: Path) -> Path:
    """Write the model folder; each file lands whole (a server polling the repository
    never loads half a model). Returns the config's path."""
    folder = repo / plan.name
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, atomic_open(version / plan.model_file, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    for other in ("model.onnx", "model.plan"):  # an earlier export of the other kind
        if other != plan.model_file:
            (version / other).unlink(missing_ok=True)
    config = folder / "config.pbtxt"
    atomic_write_text(config, config_text(plan))
    return config


def export_triton(onnx: Path, output: Path, engine: Path | None = None, name: str = "edgeas",
                  max_batch: int = 8, instances: int = 1,
                  queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> tuple[RepoPlan, Path]:
    plan = plan_repository(onnx, engine, name, max_batch, instances, queue_delay_us)
    return plan, write_repository(plan, engine if engine is not None else onnx, output)
