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
from edgeas.cuda import Context, CudaApi, DeviceBuffer
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


Buffers = tuple[DeviceBuffer, DeviceBuffer, np.ndarray, np.ndarray]


class CudaFusedAggregator:
    """`aggregate(maps, out_hw, threshold)` in fused mode on the GPU; `out_hw` is the
    model's input size in the station (the decision's resolution).

    `cuda` and `context`: the CUDA layer and the (primary) context the caller shares,
    the TensorRT backend's; a compile failure is a DependencyError naming nvcc.
    """

    def __init__(self, cuda: CudaApi, context: Context) -> None:
        self.cuda, self.context = cuda, context
        with context.active():
            self.kernel = cuda.load_kernel(KERNEL_FILE.read_text(), KERNEL_NAME,
                                           include_dirs=[str(KERNEL_DIR)],
                                           options=list(NVCC_OPTIONS),
                                           label=KERNEL_FILE.name)
            self.stream = cuda.stream()
        self._out: dict[tuple[int, int], Buffers] = {}

    def _buffers(self, h: int, w: int) -> Buffers:
        if (h, w) not in self._out:
            cuda = self.cuda
            host_map = cuda.pinned_empty((h, w), np.float32)
            host_mask = cuda.pinned_empty((h, w), np.uint8)
            self._out = {(h, w): (cuda.alloc(host_map.nbytes), cuda.alloc(host_mask.nbytes),
                                  host_map, host_mask)}
        return self._out[(h, w)]

    def _upload(self, array: np.ndarray) -> DeviceBuffer:
        buffer = self.cuda.alloc(array.nbytes)
        buffer.copy_from_host(array)  # synchronous, like pycuda's to_device
        return buffer

    def __call__(self, maps: Sequence[np.ndarray], out_hw: Sequence[int],
                 threshold: float | None, smoothing: Smoothing = None,
                 use: LevelSet = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The setting's map (and mask): levels smoothed at their own resolution on the
        host (`fused_levels`, the CPU path's very function: maps of a few KB), then the
        kernel's one pass at `out_hw`."""
        h, w = (int(v) for v in out_hw)
        data, offsets, hs, ws = pack_levels(fused_levels(maps, smoothing, use))
        tau = _float32_threshold(threshold) if threshold is not None else np.float32(0)
        with self.context.active():
            dev_map, dev_mask, host_map, host_mask = self._buffers(h, w)
            inputs = [self._upload(a) for a in (data, offsets, hs, ws)]
            grid = ((w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1])
            args = [*inputs, np.int32(len(hs)), np.int32(h), np.int32(w), tau,
                    np.int32(threshold is not None), dev_map, dev_mask]
            self.kernel.launch(grid, BLOCK, args, self.stream)
            dev_map.copy_to_host(host_map, self.stream)
            if threshold is not None:
                dev_mask.copy_to_host(host_mask, self.stream)
            self.stream.synchronize()
            for mem in inputs:
                mem.free()
        return host_map.copy(), (host_mask.copy() if threshold is not None else None)
