"""Inference backends behind one small interface, chosen by the model file's suffix.

    backend = open_backend("model.onnx")    # ONNX Runtime (CPU; CUDA/TensorRT EPs if present)
    backend = open_backend("model.engine")  # TensorRT + edgeas.cuda (tensorrt_backend.py)
    maps = backend.infer(batch)  # float32 (N, 3, H, W) -> 4 x (N, h_i, w_i), res1 first

Metadata (preprocessing, levels, thresholds) always comes from the file itself:
`metadata_props["edgeas"]` of the ONNX model or the engine's `model.engine.json`.
ONNX Runtime and TensorRT are imported inside the functions that need them, so that
`import edgeas.runtime` works on an image that has neither (or no torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeas.artifacts import ENGINE_SUFFIXES, read_engine_metadata, read_onnx_record
from edgeas.errors import ArtifactError, ConfigError, StreamError, require
from edgeas.ort import DISABLED_OPTIMIZERS_KEY, open_session
from edgeas.preprocess import Recipe
from edgeas.record import ModelRecord

# URL schemes of models served elsewhere (runtime/triton_backend.py; checked before the
# path is made a Path, which would fold the '//').
REMOTE_SCHEMES = ("triton", "tritonhttp")
# Preferred first; the first available one runs each node it supports.
ORT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class NoAnswer(StreamError):
    """A remote backend got no answer for one batch; the pipeline counts its frames as
    unanswered and goes on (a local backend never raises it)."""


class Backend:
    """What the pipeline needs from an inference engine.

    Subclasses set `record`, `output_names` (res1 first), `batch` (a fixed batch
    size, or None when the model takes any) and `device`/`precision` for reports.
    """

    name = "backend"
    record: ModelRecord
    output_names: list[str]
    batch: int | None = 1
    device = "cpu"
    precision = "fp32"

    @property
    def recipe(self) -> Recipe:
        return self.record.preprocessing

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.recipe.input_size

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        h, w = self.input_hw
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w) or batch.dtype != np.float32:
            raise ConfigError(
                f"{self.name}: input batch has shape {batch.shape} {batch.dtype}; "
                f"expected float32 (N, 3, {h}, {w})"
            )
        return np.ascontiguousarray(batch)

    def pad(self, batch: np.ndarray) -> tuple[np.ndarray, int]:
        """A fixed-batch model gets its batch size; missing images repeat the last one."""
        n = batch.shape[0]
        if self.batch is None or n == self.batch:
            return batch, n
        if n > self.batch:
            raise ConfigError(
                f"{self.name}: {n} images in one batch, but the model takes {self.batch}",
                hint="export with --dynamic-batch (or --batch N) for larger batches",
            )
        filler = np.repeat(batch[-1:], self.batch - n, axis=0)
        return np.concatenate([batch, filler]), n

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """float32 (N, 3, H, W) -> one float32 (N, h_i, w_i) array per level, res1 first."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        h, w = self.input_hw
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "input_size": [h, w],
            "batch": self.batch,
            "preset": self.record.model.preset,
        }

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to free
        pass


def squeeze_level(out: np.ndarray, name: str, source: str) -> np.ndarray:
    """(N, 1, h, w) -> (N, h, w): the exported graphs keep a channel axis of one."""
    a = np.asarray(out, dtype=np.float32)
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim == 3:
        return a
    raise ArtifactError(f"{source}: output {name} has shape {a.shape}; expected (N, 1, h, w)")


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime; CPU unless `providers` names others (or "auto": the best present)."""

    def __init__(self, path: str | Path, providers: str | list[str] = "cpu",
                 threads: int | None = None) -> None:
        ort = require("onnxruntime", "onnxruntime", "runtime")
        self.path = Path(path)
        self.record = read_onnx_record(self.path)
        self.output_names = list(self.record.model.outputs)
        available = ort.get_available_providers()
        if providers == "cpu":
            chosen = ["CPUExecutionProvider"]
        elif providers == "auto":
            chosen = [p for p in ORT_PROVIDERS if p in available]
        else:
            missing = [p for p in providers if p not in available]
            if missing:
                raise ConfigError(
                    f"ONNX Runtime here lacks {', '.join(missing)} (has {', '.join(available)})"
                )
            chosen = list(providers)
        try:
            # the core's factory: an FP16 model gets the same crash guard as in export
            self.session = open_session(self.path, chosen, threads=threads, quiet=False)
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"{self.path}: ONNX Runtime cannot load it ({first})") from exc
        self._check_io()
        active = self.session.get_providers()
        self.device = "cuda" if active[0] != "CPUExecutionProvider" else "cpu"
        self.name = f"onnxruntime {ort.__version__} ({active[0]})"
        self.precision = self.record.precision
        self.session_settings = ort_session_settings(self.session)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "session": self.session_settings}

    def _check_io(self) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ArtifactError(f"{self.path}: expected one input, found {len(inputs)}")
        self.input_name = inputs[0].name
        dim0 = inputs[0].shape[0]
        self.batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None
        have = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self.output_names if n not in have]
        if missing:
            raise ArtifactError(
                f"{self.path}: the metadata names outputs {', '.join(missing)} that the graph "
                f"lacks (it has {', '.join(sorted(have))})",
                hint="re-export the model with `edgeas export`",
            )
        shape = [d if isinstance(d, int) else -1 for d in inputs[0].shape[2:]]
        if len(shape) == 2 and -1 not in shape and tuple(shape) != self.input_hw:
            raise ArtifactError(
                f"{self.path}: graph input is {shape[0]}x{shape[1]} but the metadata says "
                f"{self.input_hw[0]}x{self.input_hw[1]}"
            )

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        batch, n = self.pad(self.check_batch(batch))
        outs = self.session.run(self.output_names, {self.input_name: batch})
        return [squeeze_level(o, name, str(self.path))[:n]
                for o, name in zip(outs, self.output_names)]


def ort_session_settings(session) -> dict[str, Any]:
    """What an ONNX Runtime session runs with: providers, graph optimisation level, the
    optimizers switched off (edgeas.ort), thread counts (0 means ONNX Runtime's own choice:
    one intra-op thread per physical core) and execution mode, so that a timing says what
    it timed."""
    options = session.get_session_options()
    level = str(options.graph_optimization_level).rsplit(".", 1)[-1]
    try:
        disabled = options.get_session_config_entry(DISABLED_OPTIMIZERS_KEY)
    except RuntimeError:  # no entry: nothing switched off
        disabled = ""
    return {
        "providers": list(session.get_providers()),
        "graph_optimization": level.removeprefix("ORT_").lower(),
        "disabled_optimizers": [n for n in disabled.split(",") if n],
        "intra_op_threads": int(options.intra_op_num_threads),
        "inter_op_threads": int(options.inter_op_num_threads),
        "execution_mode": str(options.execution_mode).rsplit(".", 1)[-1]
        .removeprefix("ORT_").lower(),
    }


def open_backend(path: str | Path, device: str = "auto") -> Backend:
    """The backend for a model file: `.onnx` -> ONNX Runtime, `.engine`/`.plan`/`.trt` ->
    TensorRT; or a URL `triton://HOST:PORT/NAME` / `tritonhttp://...` -> the model on a
    Triton server (runtime/triton_backend.py). `device`: "auto" (ONNX Runtime: CPU, or
    CUDA/TensorRT providers when present), "cpu" or "gpu"; a remote model runs wherever
    its server put it."""
    if isinstance(path, str) and path.split("://", 1)[0].lower() in REMOTE_SCHEMES:
        if device != "auto":  # not silently ignored: the server decides where it runs
            raise ConfigError(f"--device {device}: {path} runs where its Triton server "
                              "placed it (the instance_group of its config)",
                              hint="leave --device out for a triton:// model")
        from edgeas.runtime.triton_backend import TritonBackend

        return TritonBackend(path)
    path = Path(path)
    if device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"device '{device}' is not one of auto, cpu, gpu")
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}",
                          hint="pass --model MODEL.onnx or MODEL.engine (or `model:` in the "
                          "station file)")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        providers = "cpu" if device == "cpu" else "auto"
        backend = OnnxRuntimeBackend(path, providers)
        if device == "gpu" and backend.device != "cuda":
            raise ConfigError(f"{path}: no GPU execution provider in this ONNX Runtime",
                              hint="install onnxruntime-gpu, or build an engine")
        return backend
    if suffix in ENGINE_SUFFIXES:
        if device == "cpu":
            raise ConfigError(f"{path}: a TensorRT engine runs only on a GPU",
                              hint="stream the .onnx model on a CPU")
        read_engine_metadata(path)  # a missing sidecar is reported before TensorRT loads
        from edgeas.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path)
    raise ConfigError(
        f"{path}: unknown model format '{suffix or path.name}'",
        hint="use an ONNX model (.onnx) from `edgeas export` or an engine (.engine) from "
        "`edgeas build-engine`",
    )
