"""TensorRT 10's legacy INT8 calibration (IInt8EntropyCalibrator2) over normal images.

Still the only INT8 route the Jetson DLA takes on JetPack 6 (TensorRT 11 and RTX
have no calibrators: they take the Q/DQ ONNX of `edgeas calibrate`). The parts
that need no GPU live in plain classes: the image list and its hash, batching with
the artifact's own preprocessing, and the cache with its provenance record. The
TensorRT subclass is made by `make_entropy_calibrator` from the imported module,
with the CUDA layer (`edgeas.cuda`, opened there) holding the device buffer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from edgeas import calibcache
from edgeas.calibimages import read_bgr
from edgeas.cuda import CudaApi, open_cuda
from edgeas.errors import DataError
from edgeas.fileio import atomic_write_bytes, atomic_write_text
from edgeas.preprocess import Recipe, preprocess_bgr

METHOD = "entropy2"


class CalibrationBatches:
    """Whole batches (B, 3, H, W) float32 of preprocessed images; a last partial batch is
    left out (TensorRT's calibrator takes one fixed batch size)."""

    def __init__(self, paths: list[Path], recipe: Recipe, batch: int) -> None:
        if batch < 1:
            raise DataError(f"calibration batch must be >= 1, got {batch}")
        self.paths, self.recipe, self.batch = list(paths), recipe, batch
        self.count = len(self.paths) // batch * batch

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, *self.recipe.input_size)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def __len__(self) -> int:
        return self.count // self.batch

    def load(self, path: Path) -> np.ndarray:
        return preprocess_bgr(read_bgr(path), self.recipe)

    def __iter__(self) -> Iterator[np.ndarray]:
        for s in range(0, self.count, self.batch):
            part = self.paths[s : s + self.batch]
            yield np.ascontiguousarray(np.stack([self.load(p) for p in part]))


class CalibrationCache:
    """TensorRT's cache file plus `<cache>.json`, the record of what made it. A cache is
    reused only when that record equals `provenance` (same images, same model input,
    same method); otherwise calibration runs again and both files are replaced."""

    def __init__(self, path: str | os.PathLike, provenance: dict[str, Any]) -> None:
        self.path = Path(path)
        self.provenance = provenance
        self.reused = False
        self.stale_reason: str | None = None

    @property
    def record_path(self) -> Path:
        return calibcache.record_path(self.path)

    def read(self) -> bytes | None:
        if not self.path.is_file():
            return None
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, json.JSONDecodeError):
            record = None
        if record != self.provenance:
            old = record or {}
            differs = sorted(k for k in self.provenance if old.get(k) != self.provenance[k])
            self.stale_reason = (
                f"{self.path} has no record {self.record_path.name}" if record is None
                else f"{self.path} was made from other data ({', '.join(differs)} differ)"
            )
            return None
        self.reused = True
        return self.path.read_bytes()

    def write(self, data: bytes) -> None:
        atomic_write_bytes(self.path, bytes(data))
        atomic_write_text(self.record_path, json.dumps(self.provenance, indent=2, sort_keys=True))


class _DeviceInput:
    """One device buffer in the CUDA primary context, which TensorRT's builder uses too.

    The context stays current on this thread from here to `close()`: TensorRT calls
    `get_batch` during the build, on the thread that started it.
    """

    def __init__(self, cuda: CudaApi, nbytes: int) -> None:
        with ExitStack() as stack:  # a failed allocation pops the context again
            stack.enter_context(cuda.primary_context().active())
            self.memory = cuda.alloc(nbytes)
            self._active = stack.pop_all()

    def upload(self, array: np.ndarray) -> int:
        self.memory.copy_from_host(array)
        return self.memory.ptr

    def close(self) -> None:
        self.memory.free()
        self._active.close()  # pops the context once; a second close does nothing


def make_entropy_calibrator(trt, batches: CalibrationBatches, cache: CalibrationCache,
                            cuda: CudaApi | None = None):
    """An instance of a `trt.IInt8EntropyCalibrator2` subclass feeding `batches`.

    `cuda` is the CUDA layer (`open_cuda()` when not given: a DependencyError without
    a CUDA layer or a GPU). Call `.close()` after the build to free the device buffer.
    """
    if cuda is None:
        cuda = open_cuda()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches_fed = 0
            self._iter = iter(batches)
            self._device = _DeviceInput(cuda, batches.nbytes)

        def get_batch_size(self) -> int:
            return batches.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._iter, None)
            if batch is None:
                return None  # tells TensorRT that calibration data is exhausted
            self.batches_fed += 1
            return [self._device.upload(batch)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read()

        def write_calibration_cache(self, data) -> None:
            cache.write(bytes(memoryview(data)))

        def close(self) -> None:
            self._device.close()

    return EntropyCalibrator()
