"""`FakeCuda`: a stand-in for edgeas.cuda's `CudaApi`, for tests on machines without a GPU.

It runs nothing on a device. It records every call in `calls`, keeps the bytes copied
to a "device buffer" in host memory (so an upload then a download round-trips), and
fails with an AssertionError where the real driver would misbehave: a buffer, stream,
pinned array or kernel used or released with no context current, a buffer used after
`free`, a pop with nothing pushed, an asynchronous copy from pageable host memory (CUDA
would make it synchronous). It checks call sequences only: kernels compute nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

FAKE_BASE_PTR = 0x7F0000


class FakeContext:
    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self.released = False

    @contextmanager
    def active(self) -> Iterator[None]:
        assert not self.released, "push of a released context"
        self.cuda.record("push")
        self.cuda.depth += 1
        try:
            yield
        finally:
            assert self.cuda.depth > 0, "pop with no context pushed"
            self.cuda.depth -= 1
            self.cuda.record("pop")

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.cuda.record("release")


class FakeStream:
    def __init__(self, cuda: FakeCuda, handle: int, non_blocking: bool) -> None:
        self.cuda, self.handle, self.non_blocking = cuda, handle, non_blocking
        self.closed = False

    def synchronize(self) -> None:
        self.cuda.need_context("synchronize")
        assert not self.closed, "synchronize of a closed stream"
        self.cuda.record("synchronize", self.handle)

    def close(self) -> None:
        if not self.closed:
            self.cuda.need_context("stream close")
            self.closed = True
            self.cuda.record("stream_close", self.handle)


class FakeBuffer:
    def __init__(self, cuda: FakeCuda, nbytes: int, ptr: int) -> None:
        self.cuda, self.nbytes, self._ptr = cuda, int(nbytes), ptr
        self.memory: bytearray | None = bytearray(self.nbytes)

    @property
    def ptr(self) -> int:
        assert self.memory is not None, "use of a freed device buffer"
        return self._ptr

    def _check(self, what: str, host: np.ndarray, stream: FakeStream | None) -> bytearray:
        self.cuda.need_context(what)
        assert self.memory is not None, f"{what} on a freed device buffer"
        assert host.nbytes <= self.nbytes and host.flags.c_contiguous, (what, host.shape)
        if stream is not None:
            assert not stream.closed, f"{what} on a closed stream"
            assert self.cuda.is_pinned(host), f"asynchronous {what} from pageable memory"
        return self.memory

    def copy_from_host(self, host: np.ndarray, stream: FakeStream | None = None) -> None:
        memory = self._check("copy_from_host", host, stream)
        memory[: host.nbytes] = host.tobytes()
        self.cuda.uploads.append(host.copy())
        self.cuda.record("copy_from_host", self._ptr, host.nbytes, getattr(stream, "handle", None))

    def copy_to_host(self, host: np.ndarray, stream: FakeStream | None = None) -> None:
        memory = self._check("copy_to_host", host, stream)
        host.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(memory[: host.nbytes]), np.uint8)
        self.cuda.record("copy_to_host", self._ptr, host.nbytes, getattr(stream, "handle", None))

    def free(self) -> None:
        if self.memory is not None:
            self.cuda.need_context("free")
            self.memory = None
            self.cuda.record("free", self._ptr)


class FakeKernel:
    def __init__(self, cuda: FakeCuda, name: str) -> None:
        self.cuda, self.name = cuda, name
        self.loaded = True

    def unload(self) -> None:
        if self.loaded:
            self.cuda.need_context("unload")
            self.loaded = False
            self.cuda.record("unload", self.name)

    def launch(self, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any],
               stream: FakeStream | None = None) -> None:
        self.cuda.need_context("launch")
        assert self.loaded, "launch of an unloaded kernel"
        assert stream is None or not stream.closed, "launch on a closed stream"
        for a in args:
            assert not isinstance(a, FakeBuffer) or a.memory is not None, "freed buffer passed"
        self.cuda.launches.append((tuple(grid), tuple(block), list(args)))
        self.cuda.record("launch", self.name, tuple(grid), tuple(block),
                         getattr(stream, "handle", None))


class FakeCuda:
    """A stand-in `CudaApi` (edgeas.cuda): records calls, needs no GPU."""

    name = "fake"

    def __init__(self, gpu: str = "Fake GPU (stand-in)", cc: str = "8.7") -> None:
        self.gpu, self.cc = gpu, cc
        self.calls: list[tuple[Any, ...]] = []
        self.uploads: list[np.ndarray] = []
        self.launches: list[tuple[tuple[int, ...], tuple[int, ...], list[Any]]] = []
        self.buffers: list[FakeBuffer] = []
        self.streams: list[FakeStream] = []
        self.pinned: list[np.ndarray] = []  # live page-locked arrays
        self.modules: list[FakeKernel] = []
        self.contexts: list[FakeContext] = []
        self.kernels: list[tuple[str, str, list[str], list[str]]] = []
        self.depth = 0

    def record(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))

    def call_names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def need_context(self, what: str) -> None:
        assert self.depth > 0, f"{what} with no CUDA context current"

    def live_buffers(self) -> list[FakeBuffer]:
        return [b for b in self.buffers if b.memory is not None]

    def live(self) -> dict[str, int]:
        """What is still held on the 'device': buffers, streams, pinned arrays, kernels."""
        return {"buffers": len(self.live_buffers()),
                "streams": sum(not s.closed for s in self.streams),
                "pinned": len(self.pinned), "kernels": sum(k.loaded for k in self.modules)}

    def is_pinned(self, host: np.ndarray) -> bool:
        return any(np.shares_memory(host, p) for p in self.pinned)

    def buffer_at(self, ptr: int) -> FakeBuffer:
        """The live buffer at a device address (how a stand-in TensorRT reads its I/O)."""
        found = [b for b in self.live_buffers() if b.ptr == ptr]
        assert found, f"no live device buffer at {ptr:#x}"
        return found[0]

    def device_name(self) -> str:
        return self.gpu

    def compute_capability(self) -> str:
        return self.cc

    def primary_context(self) -> FakeContext:
        self.record("primary_context")
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]

    def stream(self, non_blocking: bool = True) -> FakeStream:
        self.need_context("stream")
        self.record("stream")
        self.streams.append(FakeStream(self, 0x5000 + len(self.calls), non_blocking))
        return self.streams[-1]

    def alloc(self, nbytes: int) -> FakeBuffer:
        self.need_context("alloc")
        buffer = FakeBuffer(self, nbytes, FAKE_BASE_PTR + 0x1000 * len(self.buffers))
        self.buffers.append(buffer)
        self.record("alloc", int(nbytes))
        return buffer

    def pinned_empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        self.need_context("pinned_empty")
        self.record("pinned_empty", tuple(shape), np.dtype(dtype).name)
        self.pinned.append(np.empty(tuple(shape), dtype))
        return self.pinned[-1]

    def free_pinned(self, array: np.ndarray) -> None:
        self.need_context("free_pinned")
        kept = [p for p in self.pinned if not np.shares_memory(p, array)]
        assert len(kept) < len(self.pinned), "free_pinned of memory that is not pinned"
        self.pinned = kept
        self.record("free_pinned", array.shape)

    def load_kernel(self, source: str, name: str, *, include_dirs: Sequence[str] = (),
                    options: Sequence[str] = (), label: str = "the kernel") -> FakeKernel:
        self.need_context("load_kernel")
        assert name in source, f"{name} is not in the source of {label}"
        self.kernels.append((name, label, list(include_dirs), list(options)))
        self.record("load_kernel", name)
        self.modules.append(FakeKernel(self, name))
        return self.modules[-1]
