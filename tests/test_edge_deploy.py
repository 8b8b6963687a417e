"""unias-edge deploys like every preset: export (FP32 + FP16), calibrate to INT8, and
TensorRT-RTX builds all three on this CPU."""

from __future__ import annotations

import json

import pytest
from test_stream_support import edgeas


def _edgeas(*args: str):
    return edgeas(*args, timeout=900)  # training and engine builds outlast the default


@pytest.mark.slow
@pytest.mark.trt
def test_unias_edge_exports_calibrates_and_builds_with_tensorrt_rtx(tmp_path):
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"tensorrt_rtx cannot be imported ({exc}); pip install tensorrt-rtx")
    from edgeas.train.synth import make_dataset

    data = tmp_path / "data"
    make_dataset(data, classes="tissue,brick", per_class=20, seed=3, size=224)
    onnx = tmp_path / "edge.onnx"
    _edgeas("export", "--config", "unias-edge", "--random-init", "-o", str(onnx),
            "--precision", "fp16")
    int8 = tmp_path / "edge.int8.onnx"
    _edgeas("calibrate", "--onnx", str(onnx), "--images", str(data), "-o", str(int8))
    report = json.loads((tmp_path / "edge.int8.json").read_text())
    assert report["gate"]["passed"]
    for model, precision in ((onnx, "fp32"), (tmp_path / "edge.fp16.onnx", "fp16"),
                             (int8, "int8")):
        engine = model.with_suffix(".engine")
        _edgeas("build-engine", "--onnx", str(model), "--tensorrt", "tensorrt_rtx", "-o",
                str(engine), "--optimization-level", "0")
        side = json.loads(engine.with_name(engine.name + ".json").read_text())
        assert side["precision"] == precision and side["preset"] == "unias-edge"
        assert engine.stat().st_size > 0
