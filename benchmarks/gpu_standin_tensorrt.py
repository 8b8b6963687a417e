"""A STAND-IN for the `tensorrt` module (not TensorRT): runs an ONNX model with ONNX
Runtime on the host, but reads its input from and writes its outputs to the raw device
addresses the caller bound, on the caller's CUDA stream.

For `make gpu-check` on a lent GPU machine that has no TensorRT: edgeas's
`TensorRTBackend` then runs for real around it (its CUDA layer, page-locked buffers,
asynchronous copies on a non-blocking stream, the context pushed and popped by the
pipeline's threads, a dynamic batch, close()), and only the network itself is computed
elsewhere. Like TensorRT's enqueueV3, `execute_async_v3` refuses to run while any I/O
tensor has no address.

The "plan" this runtime deserialises is the ONNX file's bytes. Device memory is read
and written with CuPy (`cupy.cuda.UnownedMemory` over the bound address, on
`cupy.cuda.ExternalStream(stream_handle)`); CuPy uses the device's primary context,
the one edgeas.cuda makes current.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

VERSION = "0.0.0-standin"


class StandInError(RuntimeError):
    pass


class _Engine:
    def __init__(self, plan: bytes, max_batch: int) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(plan, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.names = [*self.inputs, *self.outputs]
        self.shapes = {t.name: tuple(d if isinstance(d, int) else -1 for d in t.shape)
                       for t in (*self.session.get_inputs(), *self.session.get_outputs())}
        self.max_batch = max_batch
        self.num_io_tensors = len(self.names)
        self.executions = 0

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name in self.inputs else "OUTPUT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def get_tensor_profile_shape(self, name: str, profile: int):
        rest = self.shapes[name][1:]
        return [(1, *rest), (1, *rest), (self.max_batch, *rest)]

    def get_tensor_dtype(self, name: str) -> str:
        return "FLOAT"

    def create_execution_context(self) -> _ExecutionContext:
        return _ExecutionContext(self)


class _ExecutionContext:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.batch = 0
        self._keep: list[Any] = []  # host arrays until the next call (copies may be queued)

    def set_input_shape(self, name: str, shape) -> bool:
        if not 1 <= int(shape[0]) <= self.engine.max_batch:
            raise StandInError(f"batch {shape[0]} outside the profile 1..{self.engine.max_batch}")
        self.batch = int(shape[0])
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.batch, *self.engine.shapes[name][1:])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def _view(self, cp, name: str):
        shape = self.get_tensor_shape(name)
        nbytes = max(1, int(np.prod(shape)) * 4)
        memory = cp.cuda.UnownedMemory(self.addresses[name], nbytes, self)
        return cp.ndarray(shape, cp.float32, cp.cuda.MemoryPointer(memory, 0))

    def execute_async_v3(self, stream_handle: int) -> bool:
        import cupy as cp

        missing = [n for n in self.engine.names if n not in self.addresses]
        if missing:  # TensorRT's enqueueV3 refuses to run in this case too
            raise StandInError(f"Neither address or allocator is set for tensor {missing[0]}")
        stream = cp.cuda.ExternalStream(int(stream_handle))
        with stream:
            images = {n: self._view(cp, n).get(stream=stream) for n in self.engine.inputs}
            outputs = self.engine.session.run(self.engine.outputs, images)
            self._keep = [np.ascontiguousarray(o, np.float32) for o in outputs]
            for name, host in zip(self.engine.outputs, self._keep):
                self._view(cp, name).set(host.reshape(self.get_tensor_shape(name)),
                                         stream=stream)
        self.engine.executions += 1
        return True


def make_module(max_batch: int = 8) -> SimpleNamespace:
    """A module-like object to put in sys.modules["tensorrt"]."""

    class Logger:
        WARNING = 2

        def __init__(self, level: int = 2) -> None:
            pass

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> _Engine:
            module.engines.append(_Engine(bytes(plan), max_batch))
            return module.engines[-1]

    module = SimpleNamespace(
        __name__="tensorrt", __version__=VERSION, Logger=Logger, Runtime=Runtime, engines=[],
        TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        nptype=lambda dtype: np.float32,
    )
    return module
