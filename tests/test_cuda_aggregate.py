"""The CUDA fused aggregation: its per-pixel arithmetic compiled for the host (g++, and
nvcc for the __host__ __device__ branch) against the numpy/OpenCV path; the kernel
compiled to PTX; the aggregator's calls on the CUDA layer (a stand-in, FakeCuda); the
kernel itself on a GPU through edgeas.cuda (pycuda and cuda-python) where one exists."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fake_cuda import FakeCuda

from edgeas.aggregate import aggregate, aggregate_batch, fused_levels
from edgeas.errors import DependencyError
from edgeas.runtime.cuda_aggregate import (
    BLOCK,
    HEADER_FILE,
    KERNEL_DIR,
    KERNEL_FILE,
    KERNEL_NAME,
    NVCC_OPTIONS,
    CudaFusedAggregator,
    pack_levels,
)

SHIM = r"""
#include "fused_aggregate.cuh"
extern "C" void edgeas_fused_host(const float* data, const int* offsets, const int* hs,
                                  const int* ws, int n_levels, int out_h, int out_w,
                                  float tau, float* out_map, unsigned char* out_mask) {
    for (int y = 0; y < out_h; ++y) {
        for (int x = 0; x < out_w; ++x) {
            float v = edgeas_fused_pixel(data, offsets, hs, ws, n_levels, out_h, out_w, x, y);
            out_map[y * out_w + x] = v;
            out_mask[y * out_w + x] = edgeas_mask(v, tau);
        }
    }
}
"""
CASES = [((224, 224), 0), ((1080, 1920), 1), ((37, 53), 2), ((50, 64), 3), ((480, 640), 4)]


def _compile(tmp: Path, compiler: str) -> ctypes.CDLL:
    exe = shutil.which(compiler)
    if exe is None:
        pytest.skip(f"{compiler} not installed")
    lib = tmp / f"fused_{compiler.replace('+', 'p')}.so"
    if compiler == "nvcc":
        src = tmp / "shim.cu"
        # the runtime's options: no fused multiply-add, so host and device round alike
        cmd = [exe, "-O2", *NVCC_OPTIONS, "-shared", "-Xcompiler", "-fPIC", f"-I{KERNEL_DIR}",
               str(src), "-o", str(lib)]
    else:
        src = tmp / "shim.cpp"
        cmd = [exe, "-O2", "-ffp-contract=off", "-shared", "-fPIC", f"-I{KERNEL_DIR}", str(src),
               "-o", str(lib)]
    src.write_text(SHIM)
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="module", params=["g++", "nvcc"])
def host_lib(request, tmp_path_factory):
    return _compile(tmp_path_factory.mktemp(f"cuda_{request.param}"), request.param)


def _maps(seed: int, high: float = 1.0) -> list[np.ndarray]:
    """Per-level maps like 1 - cos of a trained model: in [0, high), res1 = 112 px."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.0, high, (s, s + seed % 3)).astype(np.float32)
            for s in (112, 56, 28, 14)]


def _host_aggregate(lib: ctypes.CDLL, maps, out_hw, tau: float, smoothing="none"):
    # what CudaFusedAggregator uploads: the levels smoothed on the host, packed
    data, offsets, hs, ws = pack_levels(fused_levels(maps, smoothing))
    h, w = out_hw
    out_map = np.empty((h, w), np.float32)
    out_mask = np.empty((h, w), np.uint8)
    ptr = np.ctypeslib.as_ctypes
    lib.edgeas_fused_host(ptr(data), ptr(offsets), ptr(hs), ptr(ws), ctypes.c_int(len(hs)),
                          ctypes.c_int(h), ctypes.c_int(w), ctypes.c_float(tau),
                          ptr(out_map.reshape(-1)), ptr(out_mask.reshape(-1)))
    return out_map, out_mask


@pytest.mark.parametrize("smoothing", ["none", "official"])
@pytest.mark.parametrize(("out_hw", "seed"), CASES)
def test_host_compiled_cuda_arithmetic_matches_numpy_fused(host_lib, out_hw, seed, smoothing):
    maps = _maps(seed)
    # the runtime's OpenCV path, and the numpy one with torch's rounding
    expected, _ = aggregate(maps, out_hw, None, "fused", smoothing)
    torch_like = aggregate_batch([m[None] for m in maps], out_hw, "fused", smoothing)[0]
    tau = float(np.quantile(expected, 0.9))
    got, mask = _host_aggregate(host_lib, maps, out_hw, tau, smoothing)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(got - torch_like).max() <= 1e-5
    # the mask is exact wherever the map is not within rounding of the threshold
    clear = np.abs(expected - tau) > 1e-5
    assert np.array_equal(mask[clear], (expected >= np.float32(tau))[clear].astype(np.uint8))
    assert 0.05 < mask.mean() < 0.15


@pytest.mark.parametrize("high", [1.5, 2.0])
def test_host_compiled_cuda_arithmetic_is_float_accurate_on_large_values(host_lib, high):
    """Products of four levels up to 2 reach ~10: float rounding, not the sampling, is then
    what differs (the OpenCV and numpy paths differ from each other by as much)."""
    maps = _maps(7, high)
    expected, _ = aggregate(maps, (1080, 1920), None, "fused", "none")
    got, _ = _host_aggregate(host_lib, maps, (1080, 1920), 1.0)
    assert np.abs(got - expected).max() <= 1e-5 * float(expected.max())


def test_kernel_compiles_to_ptx(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed: the CUDA kernel cannot be compiled here")
    ptx = tmp_path / "fused_aggregate.ptx"
    run = subprocess.run([nvcc, "-ptx", f"-I{KERNEL_DIR}", str(KERNEL_FILE), "-o", str(ptx)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    text = ptx.read_text()
    # extern "C": the unmangled name pycuda's get_function looks up
    assert ".entry edgeas_fused_aggregate(" in text
    assert HEADER_FILE.is_file()


def test_aggregator_calls_on_the_cuda_layer_stand_in():
    """Compiled once inside the shared context, a grid covering the frame, only the map
    copied back without a threshold, every push popped."""
    cuda = FakeCuda()
    context = cuda.primary_context()
    agg = CudaFusedAggregator(cuda, context)
    assert cuda.kernels == [(KERNEL_NAME, KERNEL_FILE.name, [str(KERNEL_DIR)],
                             list(NVCC_OPTIONS))]
    assert cuda.call_names() == ["primary_context", "push", "load_kernel", "stream", "pop"]
    maps = _maps(2)
    for threshold, copies in ((0.5, 2), (None, 1)):
        del cuda.calls[:]
        got, mask = agg(maps, (37, 53), threshold)
        assert got.shape == (37, 53) and got.dtype == np.float32
        assert (mask is None) == (threshold is None)
        names = cuda.call_names()
        assert names[0] == "push" and names[-1] == "pop" and cuda.depth == 0
        assert names.count("copy_to_host") == copies
        assert names.index("launch") < names.index("copy_to_host") < names.index("synchronize")
        grid, block, args = cuda.launches[-1]
        assert block == BLOCK and grid == (2, 5)  # ceil(53 / 32), ceil(37 / 8)
        assert len(args) == 11
    # the four level inputs and the map/mask stay allocated from frame to frame
    assert len(cuda.live_buffers()) == 6


def test_aggregator_reuses_its_buffers_and_copies_asynchronously_from_pinned_memory():
    """No cuMemAlloc/cuMemFree per frame (cuMemFree synchronises the device), page-locked
    host staging, and every copy and launch on the aggregator's own non-blocking stream,
    so that the post thread never waits for inference's stream (FakeCuda refuses an
    asynchronous copy from pageable memory)."""
    cuda = FakeCuda()
    context = cuda.primary_context()
    agg = CudaFusedAggregator(cuda, context)
    assert [s.non_blocking for s in cuda.streams] == [True]
    maps = _maps(2)
    agg(maps, (37, 53), 0.5)
    del cuda.calls[:]
    for _ in range(3):
        agg(maps, (37, 53), 0.5)
    names = cuda.call_names()
    assert not {"alloc", "free", "pinned_empty", "free_pinned"} & set(names)
    assert names.count("copy_from_host") == 3 * 4 and names.count("copy_to_host") == 3 * 2
    moves = [c for c in cuda.calls if c[0] in ("copy_from_host", "copy_to_host", "launch")]
    assert {c[-1] for c in moves} == {agg.stream.handle}
    live = cuda.live()
    agg(maps, (50, 64), None)  # another size: the old map and mask go, nothing piles up
    assert cuda.live() == live


def test_aggregator_close_releases_everything_inside_the_context():
    cuda = FakeCuda()
    context = cuda.primary_context()
    agg = CudaFusedAggregator(cuda, context)
    agg(_maps(2), (37, 53), 0.5)
    agg.close()
    agg.close()  # a second close does nothing
    assert cuda.live() == {"buffers": 0, "streams": 0, "pinned": 0, "kernels": 0}
    assert cuda.depth == 0 and cuda.call_names()[-1] == "pop"


def test_aggregator_compile_failure_is_a_dependency_error_and_pops_the_context():
    class NoNvcc(FakeCuda):
        def load_kernel(self, source, name, **kw):
            raise DependencyError("cannot compile fused_aggregate.cu with nvcc (not found)")

    cuda = NoNvcc()
    with pytest.raises(DependencyError, match="nvcc"):
        CudaFusedAggregator(cuda, cuda.primary_context())
    assert cuda.call_names() == ["primary_context", "push", "pop"] and cuda.depth == 0


def _gpu_or_skip(layer: str):
    from edgeas.cuda import open_cuda

    try:
        return open_cuda(layer=layer)
    except DependencyError as exc:  # no pycuda / cuda-python, no driver or no device
        pytest.skip(exc.message)


@pytest.mark.gpu
@pytest.mark.parametrize("layer", ["pycuda", "cuda-python"])
@pytest.mark.parametrize(("out_hw", "seed"), CASES)
def test_kernel_on_gpu_matches_numpy_fused(out_hw, seed, layer):
    """On each CUDA layer (pycuda: nvcc; cuda-python: NVRTC), odd sizes included."""
    cuda = _gpu_or_skip(layer)
    context = cuda.primary_context()
    agg = None
    try:
        agg = CudaFusedAggregator(cuda, context)
        maps = _maps(seed)
        expected, _ = aggregate(maps, out_hw, None, "fused", "official")
        tau = float(np.quantile(expected, 0.9))
        for _ in range(2):  # the second frame reuses the buffers of the first
            got, mask = agg(maps, out_hw, tau, "official")
            assert np.abs(got - expected).max() <= 1e-5
            clear = np.abs(expected - tau) > 1e-5
            assert np.array_equal(mask[clear],
                                  (expected >= np.float32(tau))[clear].astype(np.uint8))
    finally:
        if agg is not None:
            agg.close()
        context.release()
