"""The runtime side of TensorRT-RTX engines (no GPU here): which GPUs an engine's sidecar
admits, and the runtime (JIT) cache kept beside the engine, with `FakeCuda` and a stand-in
`tensorrt_rtx` module that checks call sequences only."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from fake_cuda import FakeCuda
from sample_records import write_engine
from test_cuda_wrapper import StandInTensorRT

from edgeas.errors import ArtifactError
from edgeas.runtime.tensorrt_backend import check_engine_compat

RTX = {"tensorrt_version": "1.7.1", "tensorrt_flavour": "tensorrt_rtx",
       "gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9",
       "build_options": {"compute_capabilities": None}}


def test_an_rtx_engine_runs_on_another_gpu_its_portability_covers():
    """Built on an RTX 4090 with the portable default: an RTX 3080 (8.6) runs it too."""
    check_engine_compat(RTX, "m.engine", "1.7.1", "NVIDIA GeForce RTX 3080", "8.6")
    check_engine_compat(RTX, "m.engine", "1.7.1", "NVIDIA RTX PRO 6000", "12.0")
    turing = dict(RTX, build_options={"compute_capabilities": ["7.5"]})
    check_engine_compat(turing, "m.engine", "1.7.1", "NVIDIA GeForce RTX 2080", "7.5")


@pytest.mark.parametrize(("side", "cc", "message"), [
    (RTX, "7.5", "TensorRT-RTX's portable default (8.0 and newer) does not cover"),
    (dict(RTX, build_options={"compute_capabilities": ["7.5"]}), "8.9",
     "built for compute capability 7.5; this GPU has 8.9"),
])
def test_an_rtx_engine_is_refused_where_its_portability_does_not_reach(side, cc, message):
    with pytest.raises(ArtifactError, match=re.escape(message)) as info:
        check_engine_compat(side, "m.engine", "1.7.1", "some GPU", cc)
    assert f"--compute-capability {cc}" in info.value.hint and "\n" not in info.value.message


class StandInTensorRTRTX(StandInTensorRT):
    """A stand-in for `tensorrt_rtx`: the engine makes a runtime config whose runtime cache
    (de)serialises fixed bytes; a blob it did not make is refused (False), as TensorRT-RTX
    refuses one from another GPU or version."""

    __version__ = "1.7.1"
    BLOB = b"stand-in runtime cache"

    def __init__(self, cuda: FakeCuda) -> None:
        super().__init__(cuda)
        self.loaded: list[bytes] = []
        self.contexts_with_config = 0
        trt = self

        class RuntimeCache:
            def deserialize(self, blob) -> bool:
                trt.cuda.need_context("deserialize")  # it captures the current context
                trt.loaded.append(bytes(blob))
                return bytes(blob) == trt.BLOB

            def serialize(self):
                trt.cuda.need_context("serialize")
                return memoryview(trt.BLOB)

        class RuntimeConfig:
            def create_runtime_cache(self):
                return RuntimeCache()

            def set_runtime_cache(self, cache) -> bool:
                self.cache = cache
                return True

        self.RuntimeConfig = RuntimeConfig

    def create_runtime_config(self):
        return self.RuntimeConfig()

    def create_execution_context(self, runtime_config=None):
        assert isinstance(runtime_config, self.RuntimeConfig) and runtime_config.cache
        self.contexts_with_config += 1
        return super().create_execution_context()


def _rtx_engine(tmp_path):
    return write_engine(tmp_path, b"stand-in plan", **dict(RTX, gpu="Fake GPU (stand-in)"))


def test_the_runtime_cache_is_kept_beside_the_engine(tmp_path, monkeypatch, caplog):
    """TensorRT-RTX compiles its kernels just in time: the runtime cache is loaded from
    `model.engine.runtime-cache` when the engine opens and written back on close(), so a
    station does not JIT again at every start."""
    from edgeas.runtime.tensorrt_backend import TensorRTBackend, runtime_cache_path

    cuda = FakeCuda(cc="8.9")
    trt = StandInTensorRTRTX(cuda)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", trt)
    engine = _rtx_engine(tmp_path)
    cache = runtime_cache_path(engine)
    assert cache.name == "model.engine.runtime-cache"

    first = TensorRTBackend(engine, cuda=cuda)
    assert trt.contexts_with_config == 1 and trt.loaded == [] and not cache.exists()
    first.infer(np.zeros((1, 3, 224, 224), np.float32))
    first.close()
    assert cache.read_bytes() == trt.BLOB and cuda.depth == 0

    second = TensorRTBackend(engine, cuda=cuda)
    assert trt.loaded == [trt.BLOB]
    second.close()

    cache.write_bytes(b"a cache of another GPU")
    with caplog.at_level("WARNING", logger="edgeas.stream"):
        third = TensorRTBackend(engine, cuda=cuda)
    assert "runtime cache" in caplog.text and "compiles again" in caplog.text
    third.close()
    assert cache.read_bytes() == trt.BLOB  # replaced by this GPU's
