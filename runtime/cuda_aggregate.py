"""The fused aggregation kernel (fused_aggregate.cu) compiled at run time with pycuda.

The per-level maps are a few kilobytes; the kernel writes the frame-sized map and mask
in one pass, so only the results travel back. `pack_levels` (the flat layout of the
.cuh) is pure numpy and shared with the host-compiled tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeas.aggregate import _float32_threshold
from edgeas.errors import ConfigError, DependencyError

KERNEL_DIR = Path(__file__).resolve().parent
KERNEL_FILE = KERNEL_DIR / "fused_aggregate.cu"
HEADER_FILE = KERNEL_DIR / "fused_aggregate.cuh"
KERNEL_NAME = "edgeas_fused_aggregate"
BLOCK = (32, 8, 1)


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


class CudaFusedAggregator:
    """`aggregate(maps, out_hw, threshold)` in fused mode on the GPU (pycuda context given)."""

    def __init__(self, cuda: Any, context: Any) -> None:
        self.cuda, self.context = cuda, context
        try:
            from pycuda.compiler import SourceModule
        except ImportError as exc:
            raise DependencyError(f"pycuda.compiler is unavailable ({exc})",
                                  hint="pip install pycuda on the GPU machine") from exc
        context.push()
        try:
            try:
                module = SourceModule(KERNEL_FILE.read_text(), include_dirs=[str(KERNEL_DIR)],
                                      no_extern_c=True)
            except Exception as exc:  # CompileError, or nvcc missing from PATH
                raise DependencyError(
                    f"cannot compile {KERNEL_FILE.name} with nvcc ({str(exc).splitlines()[0]})",
                    hint="put the CUDA toolkit's nvcc on PATH (/usr/local/cuda/bin on Jetson)",
                ) from exc
            self.kernel = module.get_function(KERNEL_NAME)
            self.stream = cuda.Stream()
        finally:
            cuda.Context.pop()
        self._out: dict[tuple[int, int], tuple[Any, Any, np.ndarray, np.ndarray]] = {}

    def _buffers(self, h: int, w: int):
        if (h, w) not in self._out:
            cuda = self.cuda
            host_map = cuda.pagelocked_empty((h, w), np.float32)
            host_mask = cuda.pagelocked_empty((h, w), np.uint8)
            self._out = {(h, w): (cuda.mem_alloc(host_map.nbytes), cuda.mem_alloc(host_mask.nbytes),
                                  host_map, host_mask)}
        return self._out[(h, w)]

    def __call__(self, maps: Sequence[np.ndarray], out_hw: Sequence[int],
                 threshold: float | None) -> tuple[np.ndarray, np.ndarray | None]:
        cuda = self.cuda
        h, w = (int(v) for v in out_hw)
        data, offsets, hs, ws = pack_levels(maps)
        tau = _float32_threshold(threshold) if threshold is not None else np.float32(0)
        self.context.push()
        try:
            dev_map, dev_mask, host_map, host_mask = self._buffers(h, w)
            inputs = [cuda.to_device(a) for a in (data, offsets, hs, ws)]
            grid = ((w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1])
            self.kernel(*inputs, np.int32(len(hs)), np.int32(h), np.int32(w), tau,
                        np.int32(threshold is not None), dev_map, dev_mask,
                        block=BLOCK, grid=grid, stream=self.stream)
            cuda.memcpy_dtoh_async(host_map, dev_map, self.stream)
            if threshold is not None:
                cuda.memcpy_dtoh_async(host_mask, dev_mask, self.stream)
            self.stream.synchronize()
            for mem in inputs:
                mem.free()
        finally:
            cuda.Context.pop()
        return host_map.copy(), (host_mask.copy() if threshold is not None else None)
