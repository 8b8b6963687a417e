"""Mocks of the TensorRT 10/11 Python modules and of pycuda.driver, for the call-sequence
tests of `edgeas build-engine` (tests/test_build_engine.py). They record calls and
build nothing: every engine they return is the fixed bytes `ENGINE`. The real
builds are the TensorRT-RTX tests and the GPU-marked test.

Tests that only need CUDA to be there use `fake_cuda.FakeCuda`, a stand-in for the
CUDA layer edgeas.cuda; `MockPycudaDriver` stays for the one build test that runs
`edgeas.cuda.PycudaApi` itself, so that its calls on pycuda's API are checked too."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest


class _Members(SimpleNamespace):
    """An enum-like namespace: members are plain ints or strings."""


class _MockLayer:
    def __init__(self, trt, name: str, op: str, outputs: int) -> None:
        self.name = name
        kinds = {"QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE"}
        self.type = kinds.get(op, "OTHER")
        self.num_outputs = outputs
        self._trt = trt
        self._precision = None

    def get_output_type(self, k: int) -> str:
        return "FLOAT"

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, value) -> None:
        self._precision = value
        self._trt.pinned.add(self.name)

    def set_output_type(self, k: int, dtype) -> None:
        assert k < self.num_outputs and dtype == "FLOAT"


class _MockTensor(SimpleNamespace):
    pass


class _MockNetwork:
    def __init__(self) -> None:
        self.inputs, self.outputs, self.layers = [], [], []

    def load(self, trt, model) -> None:
        def dims(v):
            d = v.type.tensor_type.shape.dim
            return tuple(x.dim_value if x.HasField("dim_value") else -1 for x in d)

        self.inputs = [_MockTensor(name=v.name, shape=dims(v), dtype="FLOAT")
                       for v in model.graph.input]
        self.outputs = [_MockTensor(name=v.name, shape=dims(v), dtype="FLOAT")
                        for v in model.graph.output]
        self.layers = [_MockLayer(trt, n.name, n.op_type, len(n.output)) for n in model.graph.node]

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]

    def get_layer(self, i):
        return self.layers[i]


class _MockParser:
    def __init__(self, trt, network: _MockNetwork) -> None:
        self.trt, self.network, self.num_errors = trt, network, 0

    def parse_from_file(self, path: str) -> bool:
        import onnx

        self.trt.record("parse_from_file", path)
        self.network.load(self.trt, onnx.load(path))
        return True

    def parse(self, data: bytes) -> bool:
        import onnx

        self.trt.record("parse", len(data))
        model = onnx.load_from_string(data)
        self.trt.parsed_model_has_fp16 = any(
            t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer
        )
        self.network.load(self.trt, model)
        return True


class _MockProfile:
    def __init__(self, trt) -> None:
        self.trt, self.shapes = trt, None

    def set_shape(self, name, lo, opt, hi) -> None:
        self.trt.record("set_shape", name, tuple(lo), tuple(opt), tuple(hi))
        self.shapes = (tuple(lo), tuple(opt), tuple(hi))


class _MockConfig:
    def __init__(self, trt) -> None:
        self.trt = trt
        self.int8_calibrator = None
        self.calibration_shape = None
        self.default_device_type = "GPU"
        self.DLA_core = -1
        self.builder_optimization_level = 3
        self.num_compute_capabilities = 0

    def set_compute_capability(self, cc, index: int) -> bool:
        assert 0 <= index < self.num_compute_capabilities, "set num_compute_capabilities first"
        self.trt.record("set_compute_capability", cc, index)
        return True

    def set_memory_pool_limit(self, pool, size) -> None:
        self.trt.record("set_memory_pool_limit", pool, size)

    def set_flag(self, flag) -> None:
        assert flag in vars(self.trt.BuilderFlag).values(), f"no flag {flag} in this TensorRT"
        self.trt.record("set_flag", flag)

    def clear_flag(self, flag) -> None:
        assert flag in vars(self.trt.BuilderFlag).values(), f"no flag {flag} in this TensorRT"
        self.trt.record("clear_flag", flag)

    def add_optimization_profile(self, profile) -> None:
        self.trt.record("add_optimization_profile", profile.shapes)

    def set_calibration_profile(self, profile) -> None:
        self.calibration_shape = profile.shapes[0]

    def create_timing_cache(self, data: bytes):
        self.trt.record("create_timing_cache", bytes(data))
        return SimpleNamespace(serialize=lambda: self.trt.TIMING, data=bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch) -> bool:
        """False, as TensorRT's, for a cache made on another device (FOREIGN_TIMING)."""
        self.trt.record("set_timing_cache", ignore_mismatch)
        if cache.data == self.trt.FOREIGN_TIMING and not ignore_mismatch:
            return False
        self._cache = cache
        return True

    def get_timing_cache(self):
        self.trt.record("serialize_timing_cache")
        return self._cache


class _MockBuilder:
    num_DLA_cores = 2

    def __init__(self, trt, logger) -> None:
        self.trt, self.logger = trt, logger

    def create_network(self, flags: int) -> _MockNetwork:
        self.trt.record("create_network", flags)
        return _MockNetwork()

    def create_builder_config(self) -> _MockConfig:
        self.trt.record("create_builder_config")
        self.trt.config = _MockConfig(self.trt)
        return self.trt.config

    def create_optimization_profile(self) -> _MockProfile:
        self.trt.record("create_optimization_profile")
        return _MockProfile(self.trt)

    def build_serialized_network(self, network, config) -> bytes:
        self.trt.record("build_serialized_network")
        calibrator = config.int8_calibrator
        # what TensorRT does with a legacy calibrator: the cache, else every batch
        if calibrator is not None and not calibrator.read_calibration_cache():
            while calibrator.get_batch(["image"]) is not None:
                self.trt.batches_seen += 1
            calibrator.write_calibration_cache(memoryview(b"mock calibration table"))
        return self.trt.ENGINE


class MockTensorRT10:
    """A mock of the `tensorrt` 10.x module: weakly typed, FP16/INT8 flags, calibrators."""

    ENGINE = b"mock engine bytes"
    TIMING = b"mock timing cache"
    FOREIGN_TIMING = b"timing cache of another GPU"
    FLAGS = ("FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS", "GPU_FALLBACK", "TF32")

    def __init__(self, version: str = "10.3.0") -> None:
        self.__version__ = version
        self.calls: list[tuple[str, tuple]] = []
        self.pinned: set[str] = set()
        self.batches_seen = 0
        self.config = None
        self.parsed_model_has_fp16 = False
        self.BuilderFlag = _Members(**{f: f for f in self.FLAGS})
        self.NetworkDefinitionCreationFlag = _Members(STRONGLY_TYPED=1)
        self.MemoryPoolType = _Members(WORKSPACE="WORKSPACE")
        self.DataType = _Members(FLOAT="FLOAT", HALF="HALF")
        self.LayerType = _Members(QUANTIZE="QUANTIZE", DEQUANTIZE="DEQUANTIZE")
        self.DeviceType = _Members(GPU="GPU", DLA="DLA")

        class ILogger:
            Severity = _Members(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

            def __init__(self) -> None:
                pass

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        self.ILogger = ILogger
        self.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    def record(self, name: str, *args) -> None:
        self.calls.append((name, args))

    def call_names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def Builder(self, logger):  # noqa: N802 - the module's class name
        return _MockBuilder(self, logger)

    def OnnxParser(self, network, logger):  # noqa: N802
        return _MockParser(self, network)

    @staticmethod
    def nptype(dtype):
        return {"FLOAT": np.float32, "HALF": np.float16}[dtype]


class MockTensorRT11(MockTensorRT10):
    """A mock of `tensorrt` 11.x: strongly typed networks only, no FP16/INT8 flags."""

    FLAGS = ("GPU_FALLBACK", "TF32")  # TF32 stays in 11.x (not in the removed-API list)

    def __init__(self, version: str = "11.4.0") -> None:
        super().__init__(version)


class MockTensorRTRTX(MockTensorRT11):
    """A mock of `tensorrt_rtx` 1.x: strongly typed, compute capabilities chosen at build
    time (IBuilderConfig.set_compute_capability), and, as in its early releases, a
    deprecated EXPLICIT_BATCH creation flag that must not be set."""

    def __init__(self, version: str = "1.0.0") -> None:
        super().__init__(version)
        self.NetworkDefinitionCreationFlag = _Members(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
        self.ComputeCapability = _Members(NONE="NONE", CURRENT="CURRENT", SM75="SM75",
                                          SM80="SM80", SM86="SM86", SM89="SM89",
                                          SM120="SM120")


class _MockDeviceMemory:
    def __init__(self, driver, nbytes: int) -> None:
        self.driver, self.nbytes = driver, nbytes

    def __int__(self) -> int:
        return 0x7F0000

    def free(self) -> None:
        self.driver.freed = True


class MockPycudaDriver:
    """A mock of the part of `pycuda.driver` that `edgeas.cuda.PycudaApi` uses for the
    calibrator: records uploads instead of copying to a GPU."""

    def __init__(self) -> None:
        self.uploads: list[np.ndarray] = []
        self.freed = self.popped = False
        self.depth = 0  # contexts pushed and not popped: pycuda aborts at exit if > 0
        self.package = SimpleNamespace(driver=self)
        driver = self

        class _Context:
            def push(self) -> None:
                driver.depth += 1

            def pop(self) -> None:
                assert driver.depth > 0, "pop of an empty context stack"
                driver.depth -= 1
                driver.popped = True

        self.Device = lambda index: SimpleNamespace(retain_primary_context=_Context)

    def init(self) -> None:
        pass

    def mem_alloc(self, nbytes: int) -> _MockDeviceMemory:
        return _MockDeviceMemory(self, nbytes)

    def memcpy_htod(self, memory: _MockDeviceMemory, array: np.ndarray) -> None:
        assert array.nbytes == memory.nbytes and array.flags.c_contiguous
        self.uploads.append(array.copy())


def test_mock_tensorrt11_refuses_the_flags_tensorrt11_removed():
    config = _MockConfig(MockTensorRT11())
    with pytest.raises(AssertionError, match="no flag FP16"):
        config.set_flag("FP16")
    config.set_flag("GPU_FALLBACK")
