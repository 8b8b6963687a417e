"""edgeas.cuda_bindings, the cuda-python implementation of the CUDA layer: chosen where
pycuda is missing, its errors without a driver, the fused kernel compiled by the real
NVRTC (no GPU needed), and its driver calls against `StandInDriver`, a stand-in for
`cuda.bindings.driver` that keeps device memory on the host and checks call sequences
and the kernel-argument packing (it computes nothing)."""

from __future__ import annotations

import ctypes
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from blocked_python import run_without

from edgeas.errors import DependencyError


class _Status(int):
    """A CUresult-like status: an int with a name."""


SUCCESS = _Status(0)


class StandInDriver:
    """cuda.bindings.driver's calls as edgeas uses them, each returning (status, value)."""

    CUdevice_attribute = SimpleNamespace(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR="major",
                                         CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR="minor")
    CUstream_flags = SimpleNamespace(CU_STREAM_NON_BLOCKING=1)

    class CUstream(int):
        pass

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.stack: list[str] = []
        self.memory: dict[int, bytearray] = {}
        self.host: dict[int, ctypes.Array] = {}
        self.modules: dict[int, bytes] = {}
        self.launches: list[list] = []

    def _need_context(self, what: str) -> None:
        assert self.stack, f"{what} with no current context"

    def cuGetErrorName(self, status):  # noqa: N802 - the driver API's names
        return SUCCESS, b"CUDA_ERROR_STAND_IN"

    def cuInit(self, flags):  # noqa: N802
        return (SUCCESS,)

    def cuDeviceGet(self, index):  # noqa: N802
        return SUCCESS, 0

    def cuDeviceGetName(self, length, dev):  # noqa: N802
        return SUCCESS, b"Stand-in GPU\x00\x00\x00"

    def cuDeviceGetAttribute(self, attribute, dev):  # noqa: N802
        return SUCCESS, {"major": 8, "minor": 9}[attribute]

    def cuDevicePrimaryCtxRetain(self, dev):  # noqa: N802
        self.calls.append(("retain",))
        return SUCCESS, "primary"

    def cuDevicePrimaryCtxRelease(self, dev):  # noqa: N802
        self.calls.append(("release",))
        return (SUCCESS,)

    def cuCtxPushCurrent(self, ctx):  # noqa: N802
        self.stack.append(ctx)
        return (SUCCESS,)

    def cuCtxPopCurrent(self):  # noqa: N802
        assert self.stack, "pop of an empty context stack"
        return SUCCESS, self.stack.pop()

    def cuStreamCreate(self, flags):  # noqa: N802
        self._need_context("cuStreamCreate")
        self.calls.append(("cuStreamCreate", flags))
        return SUCCESS, self.CUstream(0x5000 + len(self.calls))

    def cuStreamSynchronize(self, stream):  # noqa: N802
        self.calls.append(("cuStreamSynchronize", int(stream)))
        return (SUCCESS,)

    def cuStreamDestroy(self, stream):  # noqa: N802
        self._need_context("cuStreamDestroy")
        self.calls.append(("cuStreamDestroy", int(stream)))
        return (SUCCESS,)

    def cuMemAlloc(self, nbytes):  # noqa: N802
        self._need_context("cuMemAlloc")
        address = 0x10000 * (len(self.memory) + 1)
        self.memory[address] = bytearray(nbytes)
        return SUCCESS, address

    def cuMemFree(self, address):  # noqa: N802
        self._need_context("cuMemFree")
        del self.memory[int(address)]
        self.calls.append(("cuMemFree", int(address)))
        return (SUCCESS,)

    def cuMemcpyHtoDAsync(self, dst, src, nbytes, stream):  # noqa: N802
        self.memory[int(dst)][:nbytes] = ctypes.string_at(src, nbytes)
        self.calls.append(("cuMemcpyHtoDAsync", int(dst), nbytes, int(stream)))
        return (SUCCESS,)

    def cuMemcpyDtoHAsync(self, dst, src, nbytes, stream):  # noqa: N802
        ctypes.memmove(dst, bytes(self.memory[int(src)][:nbytes]), nbytes)
        self.calls.append(("cuMemcpyDtoHAsync", int(src), nbytes, int(stream)))
        return (SUCCESS,)

    def cuMemHostAlloc(self, nbytes, flags):  # noqa: N802
        self._need_context("cuMemHostAlloc")
        buffer = (ctypes.c_ubyte * nbytes)()
        self.host[ctypes.addressof(buffer)] = buffer
        return SUCCESS, ctypes.addressof(buffer)

    def cuMemFreeHost(self, address):  # noqa: N802
        self._need_context("cuMemFreeHost")
        del self.host[int(address)]
        self.calls.append(("cuMemFreeHost",))
        return (SUCCESS,)

    def cuModuleLoadData(self, image):  # noqa: N802
        self._need_context("cuModuleLoadData")
        self.modules[0xB00] = ctypes.string_at(image, 4)
        return SUCCESS, 0xB00

    def cuModuleGetFunction(self, module, name):  # noqa: N802
        return SUCCESS, (module, name)

    def cuModuleUnload(self, module):  # noqa: N802
        self._need_context("cuModuleUnload")
        del self.modules[module]
        self.calls.append(("cuModuleUnload",))
        return (SUCCESS,)

    def cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):  # noqa: N802
        """Reads the arguments back as the fused kernel declares them: 4 pointers, 3 ints,
        a float, an int, 2 pointers (what a mispacked kernelParams would garble)."""
        self._need_context("cuLaunchKernel")
        kinds = "PPPPiiifiPP"
        pointers = struct.unpack(f"{len(kinds)}Q", ctypes.string_at(params, 8 * len(kinds)))
        fmt = {"P": "Q", "i": "i", "f": "f"}
        size = {"P": 8, "i": 4, "f": 4}
        args = [struct.unpack(fmt[k], ctypes.string_at(p, size[k]))[0]
                for k, p in zip(kinds, pointers)]
        self.launches.append([f[1], (gx, gy, gz), (bx, by, bz), int(stream), args])
        return (SUCCESS,)


def _nvrtc():
    try:
        from cuda.bindings import nvrtc

        nvrtc.nvrtcVersion()
    except Exception as exc:  # no cuda-python, or no NVRTC library for it to load
        pytest.skip(f"cuda-python's NVRTC is not usable here: {exc}")
    return nvrtc


def test_open_cuda_falls_back_to_cuda_python_where_pycuda_is_missing():
    pytest.importorskip("cuda.bindings", reason="pip install cuda-python")
    run = run_without(("pycuda",), """
        import edgeas.cuda
        assert "cuda.bindings" not in sys.modules  # nothing imported before it is asked for
        print("LAYERS", edgeas.cuda.cuda_layers())
        from edgeas.errors import DependencyError
        try:
            api = edgeas.cuda.open_cuda()
        except DependencyError as exc:  # no driver here
            print("ERR", exc.message, "|", exc.hint)
        else:
            print("OPENED", api.name)
    """)
    assert run.returncode == 0, run.stderr
    assert "'cuda-python': None" in run.stdout
    assert ("OPENED cuda-python" in run.stdout
            or ("ERR no usable CUDA device" in run.stdout and "cuda-python" in run.stdout))


def test_without_either_package_the_error_names_both_installs():
    run = run_without(("pycuda", "cuda"), """
        import edgeas.cuda
        from edgeas.errors import DependencyError
        try:
            edgeas.cuda.open_cuda()
        except DependencyError as exc:
            print("ERR", exc.message, "|", exc.hint)
    """)
    assert run.returncode == 0, run.stderr
    assert "needs pycuda or cuda-python, and neither imports" in run.stdout
    assert "pip install pycuda" in run.stdout and "pip install cuda-python" in run.stdout


def test_nvrtc_compiles_the_fused_kernel_without_a_gpu():
    from edgeas.cuda_bindings import compile_cubin
    from edgeas.runtime.cuda_aggregate import KERNEL_DIR, KERNEL_FILE, KERNEL_NAME, NVCC_OPTIONS

    nvrtc = _nvrtc()
    cubin = compile_cubin(nvrtc, KERNEL_FILE.read_text(), KERNEL_NAME, "sm_90",
                          include_dirs=[str(KERNEL_DIR)], options=list(NVCC_OPTIONS))
    assert cubin[:4] == b"\x7fELF" and KERNEL_NAME.encode() in cubin
    with pytest.raises(DependencyError, match=r"cannot compile odd.cu with NVRTC \(.*error") as e:
        compile_cubin(nvrtc, 'extern "C" __global__ void k() { undeclared(); }', "k", "sm_90",
                      label="odd.cu")
    assert "\n" not in e.value.message


def test_cuda_bindings_api_call_sequence_and_kernel_arguments():
    """The aggregator on CudaBindingsApi with the real NVRTC and a stand-in driver: the
    context pushed around every call, streams non-blocking, copies asynchronous on the
    aggregator's stream, the launch's arguments readable back as the kernel declares
    them, and close() releasing everything inside the context."""
    from edgeas.aggregate import fused_levels
    from edgeas.cuda_bindings import CudaBindingsApi
    from edgeas.runtime.cuda_aggregate import BLOCK, KERNEL_NAME, CudaFusedAggregator, pack_levels

    driver = StandInDriver()
    api = CudaBindingsApi(0, modules=(driver, _nvrtc()))
    assert (api.device_name(), api.compute_capability()) == ("Stand-in GPU", "8.9")
    context = api.primary_context()
    agg = CudaFusedAggregator(api, context)
    assert driver.modules[0xB00] == b"\x7fELF"  # a CUBIN for sm_89 from the real NVRTC
    rng = np.random.default_rng(0)
    maps = [rng.uniform(0, 1, (s, s)).astype(np.float32) for s in (20, 10, 5, 3)]
    agg(maps, (37, 53), 0.25)
    name, grid, block, stream, args = driver.launches[-1]
    assert name == KERNEL_NAME.encode() and block == BLOCK and grid == (2, 5, 1)
    assert args[4:9] == [4, 37, 53, pytest.approx(0.25), 1]
    packed = pack_levels(fused_levels(maps, None))[0]  # what the host smoothed and packed
    assert np.array_equal(np.frombuffer(bytes(driver.memory[args[0]]), np.float32), packed)
    # every level reaches the kernel at the finest size (resized and smoothed on the host)
    assert np.frombuffer(bytes(driver.memory[args[2]]), np.int32).tolist() == [20, 20, 20, 20]
    assert ("cuStreamCreate", 1) in driver.calls
    copies = [c for c in driver.calls if c[0].startswith("cuMemcpy")]
    assert copies and {c[3] for c in copies} == {stream}
    agg.close()
    context.release()
    assert driver.memory == {} and driver.host == {} and driver.modules == {}
    assert driver.stack == [] and driver.calls[-1] == ("release",)


@pytest.mark.gpu
@pytest.mark.parametrize("layer", ["pycuda", "cuda-python"])
def test_cuda_layer_round_trip_on_a_gpu(layer):
    """Each CUDA layer on a real device: pinned arrays, asynchronous copies both ways on a
    non-blocking stream, a kernel launch, and every release inside the context (run
    under compute-sanitizer memcheck by `make gpu-check`)."""
    from edgeas.cuda import open_cuda

    try:
        cuda = open_cuda(layer=layer)
    except DependencyError as exc:  # this layer is not installed, or no usable device
        pytest.skip(exc.message)
    context = cuda.primary_context()
    try:
        with context.active():
            stream = cuda.stream()
            host = cuda.pinned_empty((3, 37), np.float32)
            host[:] = np.arange(host.size, dtype=np.float32).reshape(host.shape)
            back = cuda.pinned_empty((3, 37), np.float32)
            device = cuda.alloc(host.nbytes)
            device.copy_from_host(host, stream)
            kernel = cuda.load_kernel(
                'extern "C" __global__ void twice(float* x, int n) {'
                " int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] *= 2.0f; }",
                "twice", label="twice.cu")
            kernel.launch((1,), (128,), [device, np.int32(host.size)], stream)
            device.copy_to_host(back, stream)
            stream.synchronize()
            assert np.array_equal(back, host * 2)
            kernel.unload()
            device.free()
            cuda.free_pinned(host)
            cuda.free_pinned(back)
            stream.close()
    finally:
        context.release()
