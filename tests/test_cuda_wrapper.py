"""edgeas.cuda, the one CUDA layer: lazy import, the "no pycuda / no GPU" errors, the
context popped exactly once, the device-buffer lifecycle and kernel load/launch of
`PycudaApi` against a stand-in of pycuda's documented API; and the TensorRT backend's
calls on the layer with `FakeCuda` and a stand-in TensorRT module (no GPU here)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
from blocked_python import run_without
from fake_cuda import FakeCuda
from sample_records import write_engine

from edgeas.cuda import PycudaApi, open_cuda
from edgeas.errors import DependencyError, StreamError


class StandInPycuda:
    """A stand-in for `pycuda.driver` + `pycuda.compiler` with pycuda's signatures
    (memcpy_htod(dest, src), memcpy_dtoh(dest, src), Context.pop static): it keeps the
    context stack and device bytes on the host and records calls."""

    def __init__(self, fail_init: bool = False) -> None:
        self.calls: list[tuple] = []
        self.stack: list[object] = []
        self.memory: dict[int, bytearray] = {}
        self.fail_init = fail_init
        driver = self

        class Context:
            def __init__(self) -> None:
                self.detached = 0

            def push(self) -> None:
                driver.stack.append(self)
                driver.calls.append(("push",))

            @staticmethod
            def pop() -> None:
                assert driver.stack, "pop of an empty context stack"
                driver.stack.pop()
                driver.calls.append(("pop",))

            def detach(self) -> None:
                self.detached += 1

        class Allocation:
            def __init__(self, nbytes: int) -> None:
                self.address = 0x1000 * (len(driver.memory) + 1)
                driver.memory[self.address] = bytearray(nbytes)

            def __int__(self) -> int:
                return self.address

            def free(self) -> None:
                assert self.address in driver.memory, "double free"
                del driver.memory[self.address]
                driver.calls.append(("free", self.address))

        class Stream:
            def __init__(self, flags: int = 0) -> None:
                self.handle = 0xABC
                driver.calls.append(("Stream", flags))

            def synchronize(self) -> None:
                driver.calls.append(("synchronize",))

            def __del__(self) -> None:  # pycuda's ~stream: cuStreamDestroy
                driver.calls.append(("cuStreamDestroy", bool(driver.stack)))

        class Pinned(bytearray):  # pycuda's PagelockedHostAllocation (a buffer with free)
            def free(self) -> None:
                assert driver.stack, "cuMemFreeHost with no current context"
                driver.calls.append(("cuMemFreeHost", len(self)))

        class Module:
            def get_function(self, name: str):
                return driver._function(name)

            def __del__(self) -> None:  # pycuda's ~module: cuModuleUnload
                driver.calls.append(("cuModuleUnload", bool(driver.stack)))

        self.Context, self.Allocation, self.Stream = Context, Allocation, Stream
        self.Pinned, self.Module = Pinned, Module
        self.context = Context()
        self.device = SimpleNamespace(name=lambda: "Stand-in GPU",
                                      compute_capability=lambda: (8, 9),
                                      retain_primary_context=lambda: self.context)

    # pycuda.driver
    def init(self, flags: int = 0) -> None:
        if self.fail_init:
            raise RuntimeError("cuInit failed: no CUDA-capable device is detected")

    def Device(self, number: int):  # noqa: N802 - pycuda's class name
        return self.device

    def mem_alloc(self, nbytes: int):
        assert self.stack, "mem_alloc with no current context"
        return self.Allocation(nbytes)

    def memcpy_htod(self, dest, src: np.ndarray) -> None:
        self.memory[int(dest)][: src.nbytes] = src.tobytes()
        self.calls.append(("memcpy_htod", int(dest), src.nbytes))

    def memcpy_htod_async(self, dest, src: np.ndarray, stream=None) -> None:
        self.memory[int(dest)][: src.nbytes] = src.tobytes()
        self.calls.append(("memcpy_htod_async", int(dest), src.nbytes, stream.handle))

    def memcpy_dtoh(self, dest: np.ndarray, src) -> None:
        dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(
            bytes(self.memory[int(src)][: dest.nbytes]), np.uint8)
        self.calls.append(("memcpy_dtoh", int(src), dest.nbytes))

    def memcpy_dtoh_async(self, dest: np.ndarray, src, stream=None) -> None:
        self.memcpy_dtoh(dest, src)
        self.calls[-1] = ("memcpy_dtoh_async", int(src), dest.nbytes, stream.handle)

    def pagelocked_empty(self, shape, dtype, order="C", mem_flags=0) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        # the allocation object is the array's base, as pycuda makes it
        return np.ndarray(shape, dtype, buffer=self.Pinned(nbytes), order=order)

    # pycuda.compiler
    def SourceModule(self, source, nvcc="nvcc", options=None, keep=False,  # noqa: N802
                     no_extern_c=False, arch=None, code=None, cache_dir=None,
                     include_dirs=()):
        if "#error" in source:
            raise RuntimeError("compile failed\n[command: nvcc --cubin ...]")
        self.calls.append(("SourceModule", options, list(include_dirs), no_extern_c))
        return self.Module()

    def _function(self, name: str):
        def launch(*args, block, grid, stream=None, shared=0):
            self.calls.append(("launch", name, args, block, grid, stream))
        return launch


@pytest.fixture
def pycuda(monkeypatch) -> StandInPycuda:
    stand_in = StandInPycuda()
    monkeypatch.setitem(sys.modules, "pycuda", SimpleNamespace(driver=stand_in,
                                                               compiler=stand_in))
    monkeypatch.setitem(sys.modules, "pycuda.driver", stand_in)
    monkeypatch.setitem(sys.modules, "pycuda.compiler", stand_in)
    return stand_in


def test_import_needs_no_pycuda_and_open_cuda_names_the_package():
    run = run_without(("pycuda", "cuda"), """
        import edgeas.cuda
        assert sys.modules.get("pycuda") is None
        from edgeas.errors import DependencyError
        try:
            edgeas.cuda.open_cuda()
        except DependencyError as exc:
            print("ERR", exc.message, "|", exc.hint)
    """)
    assert run.returncode == 0, run.stderr
    assert "ERR the GPU path needs pycuda or cuda-python, and neither imports" in run.stdout
    assert "(pycuda: No module named 'pycuda.driver'" in run.stdout
    assert "pip install pycuda" in run.stdout
    bare = run_without(("pycuda", "cuda", "numpy"), "import edgeas.cuda, edgeas.cuda_bindings\n")
    assert bare.returncode == 0, bare.stderr  # nothing heavy at import time


def test_no_usable_device_is_one_dependency_error(monkeypatch):
    stand_in = StandInPycuda(fail_init=True)
    monkeypatch.setitem(sys.modules, "pycuda", SimpleNamespace(driver=stand_in))
    monkeypatch.setitem(sys.modules, "pycuda.driver", stand_in)
    with pytest.raises(DependencyError, match="no usable CUDA device") as info:
        open_cuda()
    assert "pycuda" in info.value.hint and "\n" not in info.value.message


def test_context_is_popped_exactly_once_even_when_the_body_raises(pycuda):
    api = open_cuda()
    assert isinstance(api, PycudaApi)
    assert (api.device_name(), api.compute_capability()) == ("Stand-in GPU", "8.9")
    context = api.primary_context()
    with pytest.raises(ValueError, match="inside"), context.active():
        with context.active():  # nested: the backend's load inside its own __init__
            assert len(pycuda.stack) == 2
        raise ValueError("raised inside")
    assert pycuda.stack == [] and [c[0] for c in pycuda.calls] == ["push", "push", "pop", "pop"]
    context.release()
    context.release()
    assert pycuda.context.detached == 1


def test_device_buffer_lifecycle(pycuda):
    api = open_cuda()
    stream = api.stream()
    with api.primary_context().active():
        buffer = api.alloc(64)
        assert buffer.nbytes == 64 and buffer.ptr in pycuda.memory
        host = api.pinned_empty((4, 4), np.float32)
        host[:] = np.arange(16, dtype=np.float32).reshape(4, 4)
        buffer.copy_from_host(host)  # synchronous
        buffer.copy_from_host(host[:2], stream)  # a leading slice: its own bytes only
        back = np.zeros((4, 4), np.float32)
        buffer.copy_to_host(back, stream)
        stream.synchronize()
        assert np.array_equal(back, host) and stream.handle == 0xABC
        with pytest.raises(ValueError, match="do not fit"):
            buffer.copy_from_host(np.zeros(17, np.float32))
        with pytest.raises(ValueError, match="C-contiguous"):
            buffer.copy_to_host(back[:, :2])
        with pytest.raises(TypeError, match="not a stream"):
            buffer.copy_from_host(host, SimpleNamespace(handle=1))
        ptr = buffer.ptr
        buffer.free()
        buffer.free()  # a second free does nothing
        with pytest.raises(RuntimeError, match="freed"):
            _ = buffer.ptr
    calls = [c for c in pycuda.calls if c[0] != "Stream"]
    assert [c[0] for c in calls] == ["push", "memcpy_htod", "memcpy_htod_async",
                                     "memcpy_dtoh_async", "synchronize", "free", "pop"]
    assert calls[2][1:] == (ptr, 32, 0xABC) and pycuda.memory == {}


def test_kernel_load_and_launch(pycuda):
    api = open_cuda()
    with api.primary_context().active():
        kernel = api.load_kernel('extern "C" __global__ void k(float* x) {}', "k",
                                 include_dirs=["/inc"], options=["--fmad=false"])
        buffer = api.alloc(16)
        stream = api.stream()
        kernel.launch((2, 3), (32, 8, 1), [buffer, np.int32(4)], stream)
        with pytest.raises(DependencyError, match=r"cannot compile x.cu with nvcc \(compile "
                           r"failed\)") as info:
            api.load_kernel("#error no", "k", label="x.cu")
        assert "nvcc on PATH" in info.value.hint
    load = next(c for c in pycuda.calls if c[0] == "SourceModule")
    assert load[1:] == (["--fmad=false"], ["/inc"], True)  # the source declares extern "C"
    launch = next(c for c in pycuda.calls if c[0] == "launch")
    assert launch[1] == "k" and int(launch[2][0]) == buffer.ptr and launch[2][1] == 4
    assert launch[3:5] == ((32, 8, 1), (2, 3)) and launch[5].handle == 0xABC


def test_non_blocking_streams_and_releases_inside_the_context(pycuda):
    """Streams are CU_STREAM_NON_BLOCKING (1) unless asked otherwise; close(), unload() and
    free_pinned() release now, while the caller's context is current (pycuda destroys a
    stream or module when its last reference goes: here, not later from the GC)."""
    api = open_cuda()
    with api.primary_context().active():
        stream = api.stream()
        api.stream(non_blocking=False).close()
        host = api.pinned_empty((4, 4), np.float32)
        api.free_pinned(host[1:])  # a view releases the allocation it views
        with pytest.raises(ValueError, match="not an array from pinned_empty"):
            api.free_pinned(np.zeros(3))
        kernel = api.load_kernel('extern "C" __global__ void k() {}', "k")
        kernel.unload()
        kernel.unload()
        with pytest.raises(RuntimeError, match="unloaded"):
            kernel.launch((1,), (1,), [], stream)
        stream.close()
        stream.close()
        with pytest.raises(RuntimeError, match="closed"):
            stream.synchronize()
    calls = [c for c in pycuda.calls if c[0] not in ("push", "pop", "SourceModule")]
    assert calls == [("Stream", 1), ("Stream", 0), ("cuStreamDestroy", True),
                     ("cuMemFreeHost", 64), ("cuModuleUnload", True), ("cuStreamDestroy", True)]


# ------------------------------------------------------------- the TensorRT backend


class StandInTensorRT:
    """A stand-in for the `tensorrt` module (an engine with one dynamic-batch input and
    the four level outputs): `execute_async_v3` needs an address for every I/O tensor
    and writes each output as the mean of its batch item, read from the device."""

    __version__ = "10.3.0"
    TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    OUTPUTS = {"dist_res1": 112, "dist_res2": 56, "dist_res3": 28, "dist_res4": 14}

    def __init__(self, cuda: FakeCuda, ok: bool = True, with_map: bool = False) -> None:
        self.cuda, self.ok = cuda, ok
        # an engine built from an ONNX exported --with-map: two more outputs after the levels
        self.extra = {"anomaly_map": (1, 224, 224), "score": ()} if with_map else {}
        trt = self

        class Logger:
            WARNING = 2

            def __init__(self, level) -> None:
                pass

        class Runtime:
            def __init__(self, logger) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes):
                return trt

        self.Logger, self.Runtime = Logger, Runtime
        self.names = ["image", *self.OUTPUTS, *self.extra]
        self.num_io_tensors = len(self.names)

    @staticmethod
    def nptype(dtype):
        return np.float32

    # the engine
    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "image" else "OUTPUT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.extra:
            return (-1, *self.extra[name])
        side = self.OUTPUTS.get(name)
        return (-1, 3, 224, 224) if side is None else (-1, 1, side, side)

    def get_tensor_profile_shape(self, name: str, profile: int):
        return [(1, 3, 224, 224), (1, 3, 224, 224), (4, 3, 224, 224)]

    def get_tensor_dtype(self, name: str) -> str:
        return "FLOAT"

    def create_execution_context(self):
        return _StandInExecutionContext(self)


class _StandInExecutionContext:
    def __init__(self, trt: StandInTensorRT) -> None:
        self.trt = trt
        self.addresses: dict[str, int] = {}
        self.batch = 0

    def set_input_shape(self, name: str, shape) -> None:
        self.batch = int(shape[0])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.batch, *self.trt.get_tensor_shape(name)[1:])

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr

    def execute_async_v3(self, stream_handle: int) -> bool:
        trt, n = self.trt, self.batch
        assert set(self.addresses) == set(trt.names), "an I/O tensor has no address"
        image = np.frombuffer(bytes(trt.cuda.buffer_at(self.addresses["image"]).memory),
                              np.float32)[: n * 3 * 224 * 224].reshape(n, -1)
        for name, side in trt.OUTPUTS.items():
            out = trt.cuda.buffer_at(self.addresses[name]).memory
            values = np.repeat(image.mean(axis=1), side * side).astype(np.float32)
            out[: values.nbytes] = values.tobytes()
        for name, dims in trt.extra.items():  # the whole buffer must be there for max batch
            size = n * int(np.prod(dims, dtype=np.int64)) * 4
            assert trt.cuda.buffer_at(self.addresses[name]).nbytes >= size, name
        trt.cuda.record("execute_async_v3", stream_handle)
        return trt.ok


def _engine(tmp_path):
    return write_engine(tmp_path, b"stand-in plan", tensorrt_version="10.3.0",
                        gpu="Fake GPU (stand-in)", compute_capability="8.7")


def test_tensorrt_backend_on_the_cuda_layer(tmp_path, monkeypatch):
    from edgeas.runtime.tensorrt_backend import TensorRTBackend

    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", StandInTensorRT(cuda))
    backend = TensorRTBackend(_engine(tmp_path), cuda=cuda)
    assert backend.device == "cuda:0 (Fake GPU (stand-in))" and backend.max_batch == 4
    assert cuda.depth == 0 and len(cuda.live_buffers()) == 5
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    del cuda.calls[:]
    maps = backend.infer(x)
    assert [m.shape for m in maps] == [(2, 112, 112), (2, 56, 56), (2, 28, 28), (2, 14, 14)]
    for m in maps:  # the outputs came back from the bound device buffers
        np.testing.assert_allclose(m.mean(axis=(1, 2)), x.reshape(2, -1).mean(axis=1),
                                   rtol=1e-5)
    names = cuda.call_names()
    assert names == ["push", "copy_from_host", "execute_async_v3", *["copy_to_host"] * 4,
                     "synchronize", "pop"]
    stream = backend.stream.handle
    assert cuda.calls[1][2:] == (x.nbytes, stream) and cuda.calls[2][1] == stream
    backend.close()
    assert cuda.live_buffers() == [] and cuda.call_names()[-2:] == ["pop", "release"]


def test_tensorrt_backend_binds_every_io_tensor_of_an_engine_with_the_map(tmp_path, monkeypatch):
    """An engine from `edgeas export --with-map` also has `anomaly_map` and `score`;
    enqueueV3 refuses to run while any I/O tensor has no address, so all are bound and
    only the level maps travel back."""
    from edgeas.runtime.tensorrt_backend import TensorRTBackend

    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", StandInTensorRT(cuda, with_map=True))
    backend = TensorRTBackend(_engine(tmp_path), cuda=cuda)
    x = np.ones((3, 3, 224, 224), np.float32)
    del cuda.calls[:]
    maps = backend.infer(x)
    assert len(cuda.live_buffers()) == 7
    assert [m.shape for m in maps] == [(3, 112, 112), (3, 56, 56), (3, 28, 28), (3, 14, 14)]
    assert cuda.call_names().count("copy_to_host") == 4  # the extra outputs stay on the GPU
    backend.close()
    assert cuda.live_buffers() == []


def test_tensorrt_backend_close_releases_everything_before_detaching(tmp_path, monkeypatch):
    """close(): the aggregator's and the backend's buffers, pinned arrays, streams and
    the kernel's module are released inside the context, then the context is detached;
    both streams are non-blocking (no implicit sync with the legacy default stream)."""
    from edgeas.runtime.tensorrt_backend import TensorRTBackend

    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", StandInTensorRT(cuda))
    backend = TensorRTBackend(_engine(tmp_path), cuda=cuda)
    maps = backend.infer(np.ones((1, 3, 224, 224), np.float32))
    backend.gpu_aggregator()([m[0] for m in maps], (224, 224), 0.5)
    assert [s.non_blocking for s in cuda.streams] == [True, True]
    backend.close()
    backend.close()  # a second close does nothing
    assert cuda.live() == {"buffers": 0, "streams": 0, "pinned": 0, "kernels": 0}
    names = cuda.call_names()
    assert names.count("release") == 1 and names[-1] == "release" and cuda.depth == 0


def test_tensorrt_backend_pops_the_context_when_tensorrt_fails(tmp_path, monkeypatch):
    from edgeas.runtime.tensorrt_backend import TensorRTBackend

    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", StandInTensorRT(cuda, ok=False))
    backend = TensorRTBackend(_engine(tmp_path), cuda=cuda)
    with pytest.raises(StreamError, match="execute_async_v3 failed"):
        backend.infer(np.zeros((1, 3, 224, 224), np.float32))
    assert cuda.depth == 0 and cuda.call_names()[-1] == "pop"
    backend.close()
