"""TensorRT engines through `tensorrt` (or `tensorrt_rtx`) and edgeas.cuda (pycuda, or
cuda-python where pycuda is missing).

One deserialised engine, one execution context, page-locked host buffers, one CUDA
stream; inputs and outputs bound by tensor name; `execute_async_v3`. An engine only
runs with the TensorRT version and the GPU model it was built for, so the sidecar
`model.engine.json` is checked against this machine before TensorRT sees the plan.

Needs a GPU: on a machine without one this module imports (TensorRT is imported
inside `TensorRTBackend.__init__`, the CUDA layer by `edgeas.cuda.open_cuda`),
`check_engine_compat` runs, and opening an engine is a DependencyError that says why.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from edgeas.artifacts import read_engine_record
from edgeas.cuda import CudaApi, DeviceBuffer, open_cuda
from edgeas.errors import ArtifactError, ConfigError, DependencyError, StreamError
from edgeas.fileio import atomic_write_bytes
from edgeas.runtime.backends import Backend

log = logging.getLogger("edgeas.stream")

TRT_HINT = (
    "install the TensorRT the engine was built with (JetPack's on Jetson, in a venv made "
    "with --system-site-packages), or stream the .onnx model with ONNX Runtime"
)


# TensorRT-RTX engines built without a compute capability run on 8.0 and newer (its
# support matrix and CPU-only AOT page); Turing (7.5) needs one named at build time.
RTX_DEFAULT_MIN_CC = (8, 0)


def runtime_cache_path(engine: Path) -> Path:
    """Where a TensorRT-RTX engine's runtime (JIT) cache is kept: beside the engine."""
    return engine.with_name(engine.name + ".runtime-cache")


def _cc(value: str) -> tuple[int, int]:
    major, _, minor = str(value).partition(".")
    return int(major), int(minor or 0)


def _check_rtx_reach(sidecar: Mapping[str, Any], path: str, cc: str | None) -> None:
    """TensorRT-RTX engines are not tied to a GPU model but to compute capabilities: the
    ones named at build time (`build_options.compute_capabilities`), else its portable
    default. Compute capabilities past the default's documented list are left to
    TensorRT-RTX itself (its deserialisation refuses what it cannot run)."""
    if not cc:
        return
    targets = [str(t) for t in (sidecar.get("build_options") or {}).get(
        "compute_capabilities") or []]
    hint = (f"rebuild it for this GPU: edgeas build-engine --onnx MODEL.onnx -o MODEL.engine "
            f"--tensorrt tensorrt_rtx --compute-capability {cc}")
    if targets and str(cc) not in targets:
        raise ArtifactError(f"{path} was built for compute capability {', '.join(targets)}; "
                            f"this GPU has {cc}", hint=hint)
    if not targets and _cc(cc) < RTX_DEFAULT_MIN_CC:
        raise ArtifactError(f"{path}: TensorRT-RTX's portable default (8.0 and newer) does not "
                            f"cover this GPU's compute capability {cc}", hint=hint)


def check_engine_compat(
    sidecar: Mapping[str, Any], path: str, trt_version: str, gpu: str | None, cc: str | None
) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU model.

    `trt_version`, `gpu`, `cc`: this machine's TensorRT version, GPU name and compute
    capability. A sidecar without a GPU name is checked by compute capability when it
    records one; a TensorRT-RTX engine by the compute capabilities it was built for.
    """
    built = str(sidecar.get("tensorrt_version") or "")
    if not built:
        raise ArtifactError(f"{path}: the sidecar records no tensorrt_version",
                            hint="rebuild the engine with `edgeas build-engine`")
    label = "TensorRT-RTX" if sidecar.get("tensorrt_flavour") == "tensorrt_rtx" else "TensorRT"
    if built != trt_version:
        raise ArtifactError(
            f"{path} was built with {label} {built}; this machine has {label} {trt_version}",
            hint="engines only run on the TensorRT version that built them: rebuild it here "
            "with `edgeas build-engine --onnx MODEL.onnx -o MODEL.engine`",
        )
    if sidecar.get("tensorrt_flavour") == "tensorrt_rtx":
        _check_rtx_reach(sidecar, path, cc)
        return
    want_gpu, want_cc = sidecar.get("gpu"), sidecar.get("compute_capability")
    if want_gpu and gpu and want_gpu != gpu:
        raise ArtifactError(
            f"{path} was built for the GPU '{want_gpu}'; this machine has '{gpu}'",
            hint="engines are specific to a GPU model: rebuild it on this device with "
            "`edgeas build-engine`",
        )
    if want_cc and cc and str(want_cc) != str(cc):
        raise ArtifactError(
            f"{path} was built for compute capability {want_cc}; this GPU has {cc}",
            hint="rebuild the engine on this device with `edgeas build-engine`",
        )


def _import_tensorrt(flavour: str):
    name = "tensorrt_rtx" if flavour == "tensorrt_rtx" else "tensorrt"
    try:
        return importlib.import_module(name)
    except (ImportError, OSError) as exc:  # OSError: a library of the wheel is missing
        raise DependencyError(f"cannot import {name} to run the engine ({exc})",
                              hint=TRT_HINT) from exc


class TensorRTBackend(Backend):
    """A serialised TensorRT engine with its sidecar; one execution context.

    `cuda`: the CUDA layer (default `open_cuda()`, device 0; tests pass a stand-in).
    """

    def __init__(self, path: str | Path, cuda: CudaApi | None = None) -> None:
        self.path = Path(path)
        self.record = read_engine_record(self.path)
        self.output_names = list(self.record.model.outputs)
        built = self.record.engine or {}  # the engine stage: what the build recorded
        self.flavour = str(built.get("tensorrt_flavour") or "tensorrt")
        self.trt = _import_tensorrt(self.flavour)
        # the version first: a foreign engine is named as such even where CUDA is missing
        check_engine_compat(built, str(self.path), str(self.trt.__version__), None, None)
        self.cuda = cuda if cuda is not None else open_cuda()
        # the primary context of device 0: the one TensorRT's runtime uses too
        self.context_cuda = self.cuda.primary_context()
        gpu, cc = self.cuda.device_name(), self.cuda.compute_capability()
        check_engine_compat(built, str(self.path), str(self.trt.__version__),
                            gpu, cc)
        self.device = f"cuda:0 ({gpu})"
        self.precision = self.record.precision
        label = "TensorRT-RTX" if self.flavour == "tensorrt_rtx" else "TensorRT"
        self.name = f"{label} {self.trt.__version__}"
        self._aggregator = None
        self._runtime_cache = self._runtime_config = None
        with self.active():
            self._load()

    def active(self) -> AbstractContextManager[None]:
        """The CUDA context current on the calling thread (the pipeline calls from several)."""
        return self.context_cuda.active()

    def _load(self) -> None:
        trt, cuda = self.trt, self.cuda
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{self.path}: TensorRT could not deserialize the engine",
                                hint="rebuild it on this machine with `edgeas build-engine`")
        if self.flavour == "tensorrt_rtx" and hasattr(self.engine, "create_runtime_config"):
            self.context = self.engine.create_execution_context(self._with_runtime_cache())
        else:
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ArtifactError(f"{self.path}: expected one input tensor, found {inputs}")
        missing = [n for n in self.output_names if n not in names]
        if missing:
            raise ArtifactError(f"{self.path}: the engine lacks outputs {', '.join(missing)}")
        self.input_name = inputs[0]
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if shape[0] == -1:  # dynamic batch: buffers for the profile's maximum
            self.batch = None
            self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        else:
            self.batch = self.max_batch = int(shape[0])
        h, w = self.input_hw
        if tuple(shape[2:]) != (h, w):
            raise ArtifactError(f"{self.path}: engine input {shape} does not match the "
                                f"sidecar's input_size {h}x{w}")
        # non-blocking: no implicit wait for the legacy default stream (or the other's)
        self.stream = cuda.stream(non_blocking=True)
        self.context.set_input_shape(self.input_name, (self.max_batch, 3, h, w))
        self.host: dict[str, np.ndarray] = {}
        self.dev: dict[str, DeviceBuffer] = {}
        # Every I/O tensor gets an address, not only the ones read back: enqueueV3 fails
        # while any has neither an address nor an output allocator (an engine exported
        # --with-map also has anomaly_map and score). NVIDIA's
        # samples/python/common_runtime.py (allocate_buffers) binds all num_io_tensors
        # the same way. Only the input and the record's outputs (the level maps, and a
        # decision head's grid, knn_dist (N, 1, h3, w3)) get page-locked host copies,
        # each sized from its own engine shape.
        copied = {self.input_name, *self.output_names}
        for name in names:
            dims = tuple(int(d) for d in self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            if any(d < 0 for d in dims):
                raise ArtifactError(f"{self.path}: tensor {name} has shape {dims} at batch "
                                    f"{self.max_batch}; only the batch may be dynamic")
            if name in self.output_names and not (
                    len(dims) == 3 or (len(dims) == 4 and dims[1] == 1)):
                # infer() hands back one (h, w) grid per image: refuse what it would slice
                raise ArtifactError(f"{self.path}: output {name} has shape {dims}; expected "
                                    "(N, 1, h, w)")
            if name in copied and dtype != np.float32:
                raise ArtifactError(f"{self.path}: tensor {name} is {dtype}; the "
                                    "runtime expects float32 I/O (typed engines keep it)")
            nbytes = max(1, int(np.prod(dims, dtype=np.int64)) * dtype.itemsize)
            if name in copied:
                self.host[name] = cuda.pinned_empty(dims, np.float32)
            self.dev[name] = cuda.alloc(nbytes)
            self.context.set_tensor_address(name, self.dev[name].ptr)

    def _with_runtime_cache(self):
        """A runtime config holding the runtime (JIT) cache read from beside the engine.

        TensorRT-RTX compiles its kernels for this GPU when the execution context is made
        and for each new shape; the cache keeps them across starts (IRuntimeConfig
        create_runtime_cache / set_runtime_cache, IRuntimeCache deserialize / serialize,
        as NVIDIA's TensorRT-RTX api_usage sample uses them). Its deserialize returns
        False for a cache of another GPU, driver or version: then it starts empty.
        """
        config = self.engine.create_runtime_config()
        cache = config.create_runtime_cache()
        path = runtime_cache_path(self.path)
        if path.is_file() and not cache.deserialize(path.read_bytes()):
            log.warning("the runtime cache %s was made for another GPU, driver or "
                        "TensorRT-RTX version: "
                        "TensorRT-RTX compiles again (and replaces it on close)", path)
        if not config.set_runtime_cache(cache):
            log.warning("TensorRT-RTX refused its runtime cache: kernels are compiled at "
                        "every start")
            return config
        self._runtime_config, self._runtime_cache = config, cache
        return config

    def _save_runtime_cache(self) -> None:
        if self._runtime_cache is None:
            return
        path = runtime_cache_path(self.path)
        try:
            blob = self._runtime_cache.serialize()
            if blob is not None:
                atomic_write_bytes(path, bytes(memoryview(blob)))
        except OSError as exc:  # a read-only engine folder: next start compiles again
            log.warning("cannot write the runtime cache %s (%s)", path, exc)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = self.check_batch(batch)
        if self.batch is not None:
            batch, n = self.pad(batch)
        else:
            n = batch.shape[0]
            if n > self.max_batch:
                # A usage error (exit 2), as ONNX Runtime's backend reports it in pad().
                raise ConfigError(f"{self.path}: batch {n} exceeds the engine's maximum "
                                  f"{self.max_batch}",
                                  hint="rebuild the engine with a larger --max-batch")
        with self.active():
            if self.batch is None:
                self.context.set_input_shape(self.input_name, batch.shape)
            host_in = self.host[self.input_name][: batch.shape[0]]
            np.copyto(host_in, batch)
            self.dev[self.input_name].copy_from_host(host_in, self.stream)
            if not self.context.execute_async_v3(stream_handle=self.stream.handle):
                raise StreamError(f"{self.path}: TensorRT execute_async_v3 failed")
            outs = []
            for name in self.output_names:
                host = self.host[name][: batch.shape[0]]
                self.dev[name].copy_to_host(host, self.stream)
                outs.append(host)
            self.stream.synchronize()
        # copies: the page-locked buffers are overwritten by the next call while the
        # pipeline's aggregation thread may still read these maps
        return [np.array(o[:n, 0] if o.ndim == 4 else o[:n]) for o in outs]

    def gpu_aggregator(self):
        """The fused aggregation kernel on this GPU, or None where it cannot be compiled."""
        if self._aggregator is None:
            from edgeas.runtime.cuda_aggregate import CudaFusedAggregator

            self._aggregator = CudaFusedAggregator(self.cuda, self.context_cuda)
        return self._aggregator

    def close(self) -> None:
        """Release everything inside the context, then detach it; a second call does
        nothing. The aggregator first: its kernel's module lives in this context."""
        if self.engine is None:
            return
        if self._aggregator is not None:
            self._aggregator.close()
            self._aggregator = None
        with self.active():
            self.stream.synchronize()
            self._save_runtime_cache()  # inside the context: the cache needs a current one
            self._runtime_cache = self._runtime_config = None
            # TensorRT's objects before the memory they point into
            self.context = self.engine = self.runtime = None
            for mem in self.dev.values():
                mem.free()
            for host in self.host.values():
                self.cuda.free_pinned(host)
            self.dev.clear()
            self.host.clear()
            self.stream.close()
        self.context_cuda.release()
