"""The CUDA calls of edgeas behind one small interface, so that nothing else holds pycuda.

The TensorRT backend, the fused aggregation kernel and TensorRT 10's INT8 calibrator
need the same few things: the device's primary context (the one TensorRT uses) made
current on the calling thread, a stream, device buffers with copies, page-locked host
arrays and one kernel compiled from CUDA source. `CudaApi` is that interface, with two
implementations: `PycudaApi` (pycuda, the product's named dependency) and
`CudaBindingsApi` (edgeas.cuda_bindings: NVIDIA's cuda-python, whose wheels need no
toolkit to install, for where pycuda cannot be built). `open_cuda` is the one place that
chooses (pycuda first) and decides "no CUDA layer" or "no usable GPU" (a
DependencyError saying which); `cuda_layers()` says what is installed, for doctor.

Importing this module imports neither pycuda, cuda-python nor numpy: a station without
a GPU reads it (the runtime imports it at start-up) and only `open_cuda` needs a driver.

Every call except `primary_context` acts in the CUDA context current on the calling
thread: callers wrap their work in `with context.active():`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from edgeas.errors import DependencyError, require

if TYPE_CHECKING:
    import numpy as np

HINT = "on the GPU machine: pip install pycuda (needs the CUDA toolkit and driver)"
NVCC_HINT = "put the CUDA toolkit's nvcc on PATH (/usr/local/cuda/bin on Jetson)"
NVRTC_HINT = "pip install nvidia-cuda-nvrtc (NVRTC, which cuda-python compiles kernels with)"
# open_cuda's order: pycuda is the product's dependency; cuda-python stands in for it
LAYERS = {"pycuda": "pycuda.driver", "cuda-python": "cuda.bindings.driver"}


class Stream(Protocol):
    """A CUDA stream: `handle` is what TensorRT's `execute_async_v3` takes."""

    @property
    def handle(self) -> int: ...

    def synchronize(self) -> None: ...

    def close(self) -> None:
        """Destroy the stream now (in its context); a second call does nothing."""


class DeviceBuffer(Protocol):
    """Device memory of `nbytes`; copies move `host.nbytes` from or to its start."""

    @property
    def nbytes(self) -> int: ...

    @property
    def ptr(self) -> int: ...

    def copy_from_host(self, host: np.ndarray, stream: Stream | None = None) -> None: ...

    def copy_to_host(self, host: np.ndarray, stream: Stream | None = None) -> None: ...

    def free(self) -> None: ...


class Kernel(Protocol):
    """A compiled `extern "C"` kernel; `args` are numpy scalars and DeviceBuffers."""

    def launch(self, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any],
               stream: Stream | None = None) -> None: ...

    def unload(self) -> None:
        """Unload its module now (in its context); a second call does nothing."""


class Context(Protocol):
    """A retained primary context: `active()` pushes it and pops it exactly once."""

    def active(self) -> AbstractContextManager[None]: ...

    def release(self) -> None: ...


class CudaApi(Protocol):
    """What edgeas needs from CUDA (one device)."""

    name: str

    def device_name(self) -> str: ...

    def compute_capability(self) -> str: ...

    def primary_context(self) -> Context: ...

    def stream(self, non_blocking: bool = True) -> Stream:
        """A new stream; non-blocking (CU_STREAM_NON_BLOCKING) unless asked otherwise, so
        that it never waits for work on the legacy default stream."""

    def alloc(self, nbytes: int) -> DeviceBuffer: ...

    def pinned_empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """A page-locked host array: what asynchronous copies need to be asynchronous."""

    def free_pinned(self, array: np.ndarray) -> None:
        """Release a `pinned_empty` array now; it must not be used afterwards."""

    def load_kernel(self, source: str, name: str, *, include_dirs: Sequence[str] = (),
                    options: Sequence[str] = (), label: str = "the kernel") -> Kernel: ...


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_size(host: np.ndarray, nbytes: int, what: str) -> None:
    # a larger host array would write past the allocation: refuse before the driver
    if host.nbytes > nbytes:
        raise ValueError(f"{what}: {host.nbytes} bytes do not fit a {nbytes}-byte device buffer")
    if not host.flags.c_contiguous:
        raise ValueError(f"{what}: the host array must be C-contiguous")


class _PycudaContext:
    def __init__(self, context: Any) -> None:
        self._context = context
        self._released = False

    @contextmanager
    def active(self) -> Iterator[None]:
        self._context.push()  # a failed push pushed nothing, so nothing to pop
        try:
            yield
        finally:
            # pop on the instance: pycuda's Context.pop is static (pops this thread's top)
            self._context.pop()

    def release(self) -> None:
        """Detach (release) the retained primary context; a second call does nothing."""
        if not self._released:
            self._released = True
            self._context.detach()


# CU_STREAM_NON_BLOCKING of the driver API's CUstream_flags; pycuda's Stream(flags=0)
# passes its flags to cuStreamCreate unchanged and names no constant for it.
CU_STREAM_NON_BLOCKING = 1


class _PycudaStream:
    def __init__(self, stream: Any) -> None:
        self.raw = stream

    def _live(self) -> Any:
        if self.raw is None:
            raise RuntimeError("this stream was closed")
        return self.raw

    @property
    def handle(self) -> int:
        return int(self._live().handle)

    def synchronize(self) -> None:
        self._live().synchronize()

    def close(self) -> None:
        # pycuda has no explicit destroy: the last reference going runs cuStreamDestroy,
        # here, while the caller's context is current, not later from the GC
        self.raw = None


def _raw_stream(stream: Stream | None) -> Any:
    if stream is None or isinstance(stream, _PycudaStream):
        return None if stream is None else stream._live()
    # another implementation's stream would silently run on the default stream
    raise TypeError(f"not a stream of PycudaApi: {stream!r}")


class BufferBase:
    """What every layer's device buffer shares: its size, its raw allocation (None once
    freed) and the device pointer; the copies and the free are the layer's own."""

    _nbytes: int
    raw: Any

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def _live(self) -> Any:
        if self.raw is None:
            raise RuntimeError("this device buffer was freed")
        return self.raw

    @property
    def ptr(self) -> int:
        return int(self._live())


class _PycudaBuffer(BufferBase):
    def __init__(self, driver: Any, nbytes: int) -> None:
        self._driver = driver
        self._nbytes = int(nbytes)
        self.raw = driver.mem_alloc(self._nbytes)

    def copy_from_host(self, host: np.ndarray, stream: Stream | None = None) -> None:
        _check_size(host, self._nbytes, "copy to the device")
        if stream is None:
            self._driver.memcpy_htod(self._live(), host)
        else:
            self._driver.memcpy_htod_async(self._live(), host, _raw_stream(stream))

    def copy_to_host(self, host: np.ndarray, stream: Stream | None = None) -> None:
        _check_size(host, self._nbytes, "copy to the host")
        if stream is None:
            self._driver.memcpy_dtoh(host, self._live())
        else:
            self._driver.memcpy_dtoh_async(host, self._live(), _raw_stream(stream))

    def free(self) -> None:
        """Release the memory now (cuMemFree); a second call does nothing."""
        if self.raw is not None:
            raw, self.raw = self.raw, None
            raw.free()


class _PycudaKernel:
    def __init__(self, module: Any, function: Any) -> None:
        self._module = module  # the function is only valid while its module is loaded
        self._function = function

    def launch(self, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any],
               stream: Stream | None = None) -> None:
        if self._function is None:
            raise RuntimeError("this kernel's module was unloaded")
        raw = [a._live() if isinstance(a, _PycudaBuffer) else a for a in args]
        self._function(*raw, grid=tuple(grid), block=tuple(block), stream=_raw_stream(stream))

    def unload(self) -> None:
        # as for streams: dropping the last references runs cuModuleUnload now
        self._function = self._module = None


class PycudaApi:
    """`CudaApi` on pycuda (`pycuda.driver`, `pycuda.compiler.SourceModule`)."""

    name = "pycuda"

    def __init__(self, device: int = 0) -> None:
        self._driver = require("pycuda.driver", "pycuda")
        try:
            self._driver.init()
            self._device = self._driver.Device(device)
        except Exception as exc:  # pycuda raises driver.Error subclasses (no driver, no GPU)
            raise DependencyError(f"no usable CUDA device ({_first_line(exc)})",
                                  hint=HINT) from exc

    def device_name(self) -> str:
        return str(self._device.name())

    def compute_capability(self) -> str:
        major, minor = self._device.compute_capability()
        return f"{major}.{minor}"

    def primary_context(self) -> _PycudaContext:
        try:
            return _PycudaContext(self._device.retain_primary_context())
        except Exception as exc:  # e.g. compute mode "prohibited", a driver/GPU mismatch
            raise DependencyError(f"no usable CUDA device ({_first_line(exc)})",
                                  hint=HINT) from exc

    def stream(self, non_blocking: bool = True) -> _PycudaStream:
        return _PycudaStream(self._driver.Stream(CU_STREAM_NON_BLOCKING if non_blocking else 0))

    def alloc(self, nbytes: int) -> _PycudaBuffer:
        return _PycudaBuffer(self._driver, nbytes)

    def pinned_empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        return self._driver.pagelocked_empty(tuple(shape), dtype)

    def free_pinned(self, array: np.ndarray) -> None:
        # pagelocked_empty's array has a PagelockedHostAllocation as its base (through any
        # views); its free() runs cuMemFreeHost now and raises when called twice
        import numpy as np

        base = array
        while isinstance(base.base, np.ndarray):
            base = base.base
        if not hasattr(base.base, "free"):
            raise ValueError("free_pinned: not an array from pinned_empty")
        base.base.free()

    def load_kernel(self, source: str, name: str, *, include_dirs: Sequence[str] = (),
                    options: Sequence[str] = (), label: str = "the kernel") -> _PycudaKernel:
        compiler = require("pycuda.compiler", "pycuda")
        try:
            # no_extern_c: the source declares its own extern "C" entry points, as it
            # would for nvrtc, so one .cu serves every implementation
            module = compiler.SourceModule(source, options=list(options) or None,
                                           include_dirs=list(include_dirs), no_extern_c=True)
        except Exception as exc:  # CompileError, or nvcc missing from PATH
            raise DependencyError(f"cannot compile {label} with nvcc ({_first_line(exc)})",
                                  hint=NVCC_HINT) from exc
        return _PycudaKernel(module, module.get_function(name))


def _importable(module: str) -> str | None:
    """None when `module` imports, else why not (one line)."""
    import importlib

    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken build (OSError, ABI mismatch)
        return _first_line(exc)
    return None


def cuda_layers() -> dict[str, str | None]:
    """Each implementation's name -> None when its package imports, else why not."""
    return {name: _importable(module) for name, module in LAYERS.items()}


def open_cuda(device: int = 0, layer: str | None = None) -> CudaApi:
    """The CUDA layer for `device`: `layer` ("pycuda" or "cuda-python"), else the first
    whose package imports. A DependencyError when none imports (naming both installs),
    or when the chosen one finds no usable GPU."""
    if layer is not None and layer not in LAYERS:
        raise ValueError(f"unknown CUDA layer {layer!r}: expected one of {', '.join(LAYERS)}")
    why = {name: _importable(LAYERS[name]) for name in ([layer] if layer else LAYERS)}
    chosen = next((name for name, reason in why.items() if reason is None), None)
    if chosen is None:
        seen = "; ".join(f"{name}: {reason}" for name, reason in why.items())
        what = (f"the CUDA layer {layer} does not import here" if layer else
                "the GPU path needs pycuda or cuda-python, and neither imports here")
        raise DependencyError(f"{what} ({seen})",
                              hint=f"{HINT}; or: pip install cuda-python (no toolkit needed)")
    if chosen == "pycuda":
        return PycudaApi(device)
    from edgeas.cuda_bindings import CudaBindingsApi

    return CudaBindingsApi(device)
