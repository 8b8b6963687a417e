"""`CudaApi` (edgeas.cuda) on NVIDIA's cuda-python: `cuda.bindings.driver` and `nvrtc`.

The stand-in where pycuda cannot be built (no CUDA toolkit to compile it against): the
cuda-python wheels on PyPI carry their own bindings and load the driver and NVRTC at run
time. The calls follow cuda-python's documented workflow (cuda_bindings overview: each
call returns (CUresult, value...); NVRTC compiles, cuModuleLoadData loads;
cuLaunchKernel takes `kernelParams` as the address of an array of pointers, one to each
argument's bytes, and copies the values at launch). Kernels are compiled by NVRTC for
the device's own architecture (sm_XY, a CUBIN: no PTX JIT in the driver) with the
caller's options; `--fmad=false` and `--include-path` mean the same as for nvcc.

Importing this module imports neither cuda-python nor numpy.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from edgeas.cuda import NVRTC_HINT, BufferBase, _check_size, _first_line
from edgeas.errors import DependencyError, require

if TYPE_CHECKING:
    import numpy as np

HINT = "pip install cuda-python (NVIDIA's CUDA bindings; needs an NVIDIA driver)"


class CudaCallError(RuntimeError):
    """A driver or NVRTC call that returned an error code."""


def _modules() -> tuple[Any, Any]:
    require("cuda.bindings", "cuda-python")
    return (importlib.import_module("cuda.bindings.driver"),
            importlib.import_module("cuda.bindings.nvrtc"))


class _Calls:
    """Calls a cuda-python function and unwraps its (status, values...) tuple."""

    def __init__(self, driver: Any, nvrtc: Any) -> None:
        self.driver, self.nvrtc = driver, nvrtc

    def __call__(self, fn: Any, *args: Any) -> Any:
        result = fn(*args)
        status, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if int(status) != 0:  # CUDA_SUCCESS and NVRTC_SUCCESS are 0
            raise CudaCallError(f"{getattr(fn, '__name__', 'CUDA call')}: {self._name(status)}")
        return None if not values else values[0] if len(values) == 1 else values

    def _name(self, status: Any) -> str:
        for module, getter in ((self.driver, "cuGetErrorName"),
                               (self.nvrtc, "nvrtcGetErrorString")):
            fn = getattr(module, getter, None)
            try:
                found = fn(status) if fn is not None else None
            except Exception:  # the status is of the other module's type
                continue
            if found and int(found[0]) == 0:
                text = found[1]
                return text.decode() if isinstance(text, bytes) else str(text)
        return str(status)


def compile_cubin(nvrtc: Any, source: str, name: str, arch: str, *,
                  include_dirs: Sequence[str] = (), options: Sequence[str] = (),
                  label: str = "the kernel") -> bytes:
    """NVRTC: `source` -> a CUBIN for `arch` ("sm_90"); a DependencyError with the first
    line of NVRTC's log when it does not compile. Needs no GPU and no driver."""
    calls = _Calls(None, nvrtc)
    program = calls(nvrtc.nvrtcCreateProgram, source.encode(), f"{name}.cu".encode(), 0, [], [])
    try:
        flags = [f"--gpu-architecture={arch}", *options,
                 *(f"--include-path={d}" for d in include_dirs)]
        encoded = [f.encode() for f in flags]
        status = nvrtc.nvrtcCompileProgram(program, len(encoded), encoded)[0]
        if int(status) != 0:
            size = calls(nvrtc.nvrtcGetProgramLogSize, program)
            log = b" " * size
            calls(nvrtc.nvrtcGetProgramLog, program, log)
            text = log.decode(errors="replace").strip("\x00 \n")
            errors = [line for line in text.splitlines() if "error" in line] or [text]
            raise DependencyError(f"cannot compile {label} with NVRTC ({_first_line(errors[0])})",
                                  hint=NVRTC_HINT)
        size = calls(nvrtc.nvrtcGetCUBINSize, program)
        cubin = b" " * size
        calls(nvrtc.nvrtcGetCUBIN, program, cubin)
        return cubin
    finally:
        calls(nvrtc.nvrtcDestroyProgram, program)


class _Context:
    def __init__(self, api: CudaBindingsApi, raw: Any) -> None:
        self._api, self._raw = api, raw
        self._released = False

    @contextmanager
    def active(self) -> Iterator[None]:
        call, driver = self._api.call, self._api.driver
        call(driver.cuCtxPushCurrent, self._raw)  # a failed push pushed nothing
        try:
            yield
        finally:
            call(driver.cuCtxPopCurrent)

    def release(self) -> None:
        """cuDevicePrimaryCtxRelease, once."""
        if not self._released:
            self._released = True
            self._api.call(self._api.driver.cuDevicePrimaryCtxRelease, self._api.device)


class _Stream:
    def __init__(self, api: CudaBindingsApi, raw: Any) -> None:
        self._api, self.raw = api, raw

    def _live(self) -> Any:
        if self.raw is None:
            raise RuntimeError("this stream was closed")
        return self.raw

    @property
    def handle(self) -> int:
        return int(self._live())

    def synchronize(self) -> None:
        self._api.call(self._api.driver.cuStreamSynchronize, self._live())

    def close(self) -> None:
        if self.raw is not None:
            raw, self.raw = self.raw, None
            self._api.call(self._api.driver.cuStreamDestroy, raw)


def _raw_stream(api: CudaBindingsApi, stream: Any) -> Any:
    if stream is None:
        return api.driver.CUstream(0)
    if not isinstance(stream, _Stream):
        raise TypeError(f"not a stream of CudaBindingsApi: {stream!r}")
    return stream._live()


class _Buffer(BufferBase):
    def __init__(self, api: CudaBindingsApi, nbytes: int) -> None:
        self._api, self._nbytes = api, int(nbytes)
        self.raw = api.call(api.driver.cuMemAlloc, max(1, self._nbytes))

    def copy_from_host(self, host: np.ndarray, stream: Any = None) -> None:
        _check_size(host, self._nbytes, "copy to the device")
        d, call = self._api.driver, self._api.call
        if stream is None:
            call(d.cuMemcpyHtoD, self._live(), host.ctypes.data, host.nbytes)
        else:
            call(d.cuMemcpyHtoDAsync, self._live(), host.ctypes.data, host.nbytes,
                 _raw_stream(self._api, stream))

    def copy_to_host(self, host: np.ndarray, stream: Any = None) -> None:
        _check_size(host, self._nbytes, "copy to the host")
        d, call = self._api.driver, self._api.call
        if stream is None:
            call(d.cuMemcpyDtoH, host.ctypes.data, self._live(), host.nbytes)
        else:
            call(d.cuMemcpyDtoHAsync, host.ctypes.data, self._live(), host.nbytes,
                 _raw_stream(self._api, stream))

    def free(self) -> None:
        if self.raw is not None:
            raw, self.raw = self.raw, None
            self._api.call(self._api.driver.cuMemFree, raw)


class _Kernel:
    def __init__(self, api: CudaBindingsApi, module: Any, function: Any) -> None:
        self._api, self._module, self._function = api, module, function

    def launch(self, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any],
               stream: Any = None) -> None:
        import numpy as np

        if self._function is None:
            raise RuntimeError("this kernel's module was unloaded")
        values = []
        for a in args:  # each argument's bytes; pointers as 64-bit addresses
            if isinstance(a, _Buffer):
                values.append(np.array([a.ptr], dtype=np.uint64))
            elif isinstance(a, np.generic):
                values.append(np.array([a], dtype=a.dtype))
            else:
                raise TypeError(f"kernel argument {a!r}: pass numpy scalars or device buffers")
        params = np.array([v.ctypes.data for v in values], dtype=np.uint64)
        gx, gy, gz = (*grid, 1, 1)[:3]
        bx, by, bz = (*block, 1, 1)[:3]
        self._api.call(self._api.driver.cuLaunchKernel, self._function, gx, gy, gz, bx, by, bz,
                       0, _raw_stream(self._api, stream), params.ctypes.data, 0)

    def unload(self) -> None:
        if self._module is not None:
            module, self._module, self._function = self._module, None, None
            self._api.call(self._api.driver.cuModuleUnload, module)


class CudaBindingsApi:
    """`CudaApi` on cuda-python (`cuda.bindings.driver` + `cuda.bindings.nvrtc`)."""

    name = "cuda-python"

    def __init__(self, device: int = 0, modules: tuple[Any, Any] | None = None) -> None:
        self.driver, self.nvrtc = modules if modules is not None else _modules()
        self.call = _Calls(self.driver, self.nvrtc)
        self._pinned: dict[int, int] = {}  # host address -> bytes, of cuMemHostAlloc
        try:
            self.call(self.driver.cuInit, 0)
            self.device = self.call(self.driver.cuDeviceGet, device)
        except Exception as exc:  # no driver library (cuda.pathfinder raises), no device
            raise DependencyError(f"no usable CUDA device ({_first_line(exc)})",
                                  hint=HINT) from exc

    def _attribute(self, name: str) -> int:
        attribute = getattr(self.driver.CUdevice_attribute, name)
        return int(self.call(self.driver.cuDeviceGetAttribute, attribute, self.device))

    def device_name(self) -> str:
        raw = self.call(self.driver.cuDeviceGetName, 256, self.device)
        return bytes(raw).split(b"\x00", 1)[0].decode(errors="replace").strip()

    def compute_capability(self) -> str:
        return (f"{self._attribute('CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR')}."
                f"{self._attribute('CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR')}")

    def primary_context(self) -> _Context:
        try:
            return _Context(self, self.call(self.driver.cuDevicePrimaryCtxRetain, self.device))
        except CudaCallError as exc:
            raise DependencyError(f"no usable CUDA device ({_first_line(exc)})",
                                  hint=HINT) from exc

    def stream(self, non_blocking: bool = True) -> _Stream:
        flags = self.driver.CUstream_flags.CU_STREAM_NON_BLOCKING if non_blocking else 0
        return _Stream(self, self.call(self.driver.cuStreamCreate, int(flags)))

    def alloc(self, nbytes: int) -> _Buffer:
        return _Buffer(self, nbytes)

    def pinned_empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        import numpy as np

        dt = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dt.itemsize)
        address = int(self.call(self.driver.cuMemHostAlloc, nbytes, 0))
        self._pinned[address] = nbytes
        raw = (ctypes.c_ubyte * nbytes).from_address(address)
        return np.frombuffer(raw, dtype=dt, count=int(np.prod(shape, dtype=np.int64))
                             ).reshape(tuple(shape))

    def free_pinned(self, array: np.ndarray) -> None:
        address = int(array.ctypes.data)
        owner = next((a for a, n in self._pinned.items() if a <= address < a + n), None)
        if owner is None:
            raise ValueError("free_pinned: not an array from pinned_empty")
        del self._pinned[owner]
        self.call(self.driver.cuMemFreeHost, owner)

    def load_kernel(self, source: str, name: str, *, include_dirs: Sequence[str] = (),
                    options: Sequence[str] = (), label: str = "the kernel") -> _Kernel:
        import numpy as np

        arch = "sm_" + self.compute_capability().replace(".", "")
        cubin = compile_cubin(self.nvrtc, source, name, arch, include_dirs=include_dirs,
                              options=options, label=label)
        image = np.frombuffer(cubin, dtype=np.uint8)
        module = self.call(self.driver.cuModuleLoadData, image.ctypes.data)
        try:
            function = self.call(self.driver.cuModuleGetFunction, module, name.encode())
        except CudaCallError:
            self.call(self.driver.cuModuleUnload, module)
            raise
        return _Kernel(self, module, function)
