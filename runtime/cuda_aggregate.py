"""The fused aggregation kernel (fused_aggregate.cu) compiled at run time by edgeas.cuda.

The per-level maps are a few kilobytes; the kernel writes the map and mask at the size
it is given in one pass, so only the results travel back. The pipeline asks for the
model's input size (decisions are made at model resolution, runtime/pipeline.py); any
size works, e.g. a frame-sized map for display. `pack_levels` (the flat layout of the
.cuh) is pure numpy and shared with the host-compiled tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeas.aggregate import LevelSet, Smoothing, _float32_threshold, fused_levels
from edgeas.cuda import Context, CudaApi, Kernel, Stream
from edgeas.errors import ConfigError

KERNEL_DIR = Path(__file__).resolve().parent
KERNEL_FILE = KERNEL_DIR / "fused_aggregate.cu"
HEADER_FILE = KERNEL_DIR / "fused_aggregate.cuh"
KERNEL_NAME = "edgeas_fused_aggregate"
BLOCK = (32, 8, 1)
# No fused multiply-add on the device: the kernel then rounds like the host-compiled
# arithmetic the tests check against numpy (compiled there with -ffp-contract=off), so
# GPU and CPU stations give the same maps to float rounding, not to an FMA's.
NVCC_OPTIONS = ("--fmad=false",)


def pack_levels(maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray]:
    """(data float32, offsets int32, hs int32, ws int32): the levels back to back."""
    levels = []
    for i, m in enumerate(maps):
        a = np.asarray(m, dtype=np.float32)
        while a.ndim > 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2 or a.size == 0:
            raise ConfigError(f"map of level res{i + 1} has shape {np.shape(m)}; expected (h, w)")
        levels.append(np.ascontiguousarray(a))
    if not levels:
        raise ConfigError("no level maps to aggregate")
    sizes = [a.size for a in levels]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    data = np.concatenate([a.ravel() for a in levels])
    hs = np.array([a.shape[0] for a in levels], np.int32)
    ws = np.array([a.shape[1] for a in levels], np.int32)
    return data, offsets, hs, ws


class _Staged:
    """One array's page-locked host copy and device buffer, grown only when too small."""

    def __init__(self, cuda: CudaApi, count: int, dtype: type) -> None:
        self.host = cuda.pinned_empty((count,), dtype)
        self.dev = cuda.alloc(self.host.nbytes)

    def release(self, cuda: CudaApi) -> None:
        self.dev.free()
        cuda.free_pinned(self.host)


class CudaFusedAggregator:
    """`aggregate(maps, out_hw, threshold)` in fused mode on the GPU; `out_hw` is the
    model's input size in the station (the decision's resolution).

    `cuda` and `context`: the CUDA layer and the (primary) context the caller shares,
    the TensorRT backend's; a compile failure is a DependencyError naming nvcc.

    Per frame nothing is allocated or freed (cuMemFree synchronises the whole device):
    the packed levels go through page-locked staging arrays into device buffers kept
    from frame to frame, and the copies and the launch are queued on the aggregator's
    own non-blocking stream, which never waits for inference's stream or the legacy
    default stream. Only a larger level layout or another output size reallocates.
    Host/device tolerance: `--fmad=false` makes the device round like the host
    arithmetic the tests check against numpy (1e-5 absolute on maps in [0, 1]).
    """

    def __init__(self, cuda: CudaApi, context: Context) -> None:
        self.cuda, self.context = cuda, context
        self.kernel: Kernel | None = None
        self.stream: Stream | None = None
        with context.active():
            self.kernel = cuda.load_kernel(KERNEL_FILE.read_text(), KERNEL_NAME,
                                           include_dirs=[str(KERNEL_DIR)],
                                           options=list(NVCC_OPTIONS),
                                           label=KERNEL_FILE.name)
            try:
                self.stream = cuda.stream(non_blocking=True)
            except BaseException:
                self.kernel.unload()
                raise
        self._in: list[_Staged] = []  # data, offsets, hs, ws
        self._out: tuple[tuple[int, int], _Staged, _Staged] | None = None  # (h, w), map, mask

    def _inputs(self, arrays: Sequence[np.ndarray]) -> list[_Staged]:
        if not self._in or any(a.size > s.host.size for a, s in zip(arrays, self._in)):
            if self._in:
                self.stream.synchronize()  # nothing queued may still read the old ones
            for staged in self._in:
                staged.release(self.cuda)
            self._in = [_Staged(self.cuda, a.size, a.dtype.type) for a in arrays]
        return self._in

    def _outputs(self, h: int, w: int) -> tuple[_Staged, _Staged]:
        if self._out is None or self._out[0] != (h, w):
            if self._out is not None:
                self.stream.synchronize()
                for staged in self._out[1:]:
                    staged.release(self.cuda)
            self._out = ((h, w), _Staged(self.cuda, h * w, np.float32),
                         _Staged(self.cuda, h * w, np.uint8))
        return self._out[1], self._out[2]

    def __call__(self, maps: Sequence[np.ndarray], out_hw: Sequence[int],
                 threshold: float | None, smoothing: Smoothing = None,
                 use: LevelSet = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The setting's map (and mask): levels resized to the finest size and smoothed there
        on the host (`fused_levels`, the CPU path's very function: maps of 50 KB), then the
        kernel's one pass at `out_hw`."""
        if self.kernel is None:
            raise RuntimeError("the fused aggregator was closed")
        h, w = (int(v) for v in out_hw)
        packed = pack_levels(fused_levels(maps, smoothing, use))
        tau = _float32_threshold(threshold) if threshold is not None else np.float32(0)
        with self.context.active():
            staged = self._inputs(packed)
            for array, s in zip(packed, staged):
                host = s.host[: array.size]
                np.copyto(host, array)
                s.dev.copy_from_host(host, self.stream)
            out_map, out_mask = self._outputs(h, w)
            grid = ((w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1])
            args = [*(s.dev for s in staged), np.int32(len(packed[2])), np.int32(h),
                    np.int32(w), tau, np.int32(threshold is not None), out_map.dev,
                    out_mask.dev]
            self.kernel.launch(grid, BLOCK, args, self.stream)
            out_map.dev.copy_to_host(out_map.host, self.stream)
            if threshold is not None:
                out_mask.dev.copy_to_host(out_mask.host, self.stream)
            self.stream.synchronize()
            # copies: the staging arrays are overwritten by the next frame
            amap = out_map.host.reshape(h, w).copy()
            mask = out_mask.host.reshape(h, w).copy() if threshold is not None else None
        return amap, mask

    def close(self) -> None:
        """Release buffers, staging arrays, the stream and the module, inside the shared
        context (the caller detaches it afterwards); a second call does nothing."""
        if self.kernel is None:
            return
        with self.context.active():
            if self.stream is not None:
                self.stream.synchronize()
            staged = [*self._in, *(self._out[1:] if self._out else ())]
            for s in staged:
                s.release(self.cuda)
            self._in, self._out = [], None
            if self.stream is not None:
                self.stream.close()
            self.kernel.unload()
        self.kernel = self.stream = None
