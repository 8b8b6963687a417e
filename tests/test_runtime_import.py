"""The runtime imports on a bare station image: no torch, TensorRT, pycuda, cuda-python or
ONNX Runtime."""

from __future__ import annotations

import pytest
from blocked_python import run_without
from sample_records import write_engine

from edgeas.errors import ArtifactError, DependencyError

# the integrations' packages too: they are imported only when --mqtt/--metrics ask
BLOCKED = ("torch", "torchvision", "tensorrt", "tensorrt_rtx", "pycuda", "cuda", "onnxruntime",
           "tritonclient", "paho", "prometheus_client")
MODULES = ("backends", "bench", "command", "cuda_aggregate", "delivery", "events",
           "integrations", "metrics", "mqtt", "onng", "outbox", "pipeline", "preprocess",
           "render", "server", "sinks", "sources", "station", "stats", "tensorrt_backend",
           "triton_backend", "triton_repo", "webhook")


def test_every_runtime_module_imports_with_the_heavy_packages_blocked():
    run = run_without(BLOCKED, f"""
        import edgeas.runtime
        for mod in {MODULES!r}:
            __import__("edgeas.runtime." + mod)
        from edgeas.runtime import aggregate, open_backend, Preprocessor
        loaded = [m for m in {BLOCKED!r} if sys.modules.get(m) is not None]
        assert not loaded, loaded
        sys.argv = ["edgeas", "stream", "--help"]
        from edgeas.cli import main
        main()
    """)
    assert run.returncode == 0, run.stderr
    assert "--serve" in run.stdout and "--max-frames" in run.stdout and "--mqtt" in run.stdout


def test_an_engine_without_tensorrt_is_a_clear_error(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real plan")
    from edgeas.runtime.backends import open_backend

    with pytest.raises(ArtifactError, match="sidecar"):
        open_backend(engine)
    write_engine(tmp_path, b"not a real plan", tensorrt_version="10.3.0", gpu="Orin")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(DependencyError) as info:
            open_backend(engine)
        assert "tensorrt" in info.value.message and info.value.hint
    else:  # pragma: no cover - a TensorRT machine
        pytest.skip("TensorRT is installed here: covered by the gpu tests")
