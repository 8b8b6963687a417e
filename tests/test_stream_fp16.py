"""The runtime streams a `model.fp16.onnx` on the CPU: frames from a folder source through
the runtime's preprocessing and OnnxRuntimeBackend, whose session carries the same FP16
guard as export's checks (the factory in edgeas.ort), with maps that match the FP32 model."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")

from edgeas.ort import DISABLED_OPTIMIZERS_KEY, cosine_per_image  # noqa: E402
from edgeas.runtime import (  # noqa: E402
    OnnxRuntimeBackend,
    Preprocessor,
    aggregate,
    open_backend,
    open_source,
    parse_source,
)

FRAMES = 3
SHAPES = [(1, 112, 112), (1, 56, 56), (1, 28, 28), (1, 14, 14)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The untrained tiny preset exported by the CLI in FP32 and typed FP16."""
    out = tmp_path_factory.mktemp("fp16") / "model.onnx"
    run = subprocess.run(
        [sys.executable, "-m", "edgeas", "export", "--config", "tiny", "--random-init",
         "-o", str(out), "--precision", "fp16"],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return {"fp32": out, "fp16": out.with_name("model.fp16.onnx")}


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """A folder of camera-sized textured frames, read back through the runtime's source."""
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(3)
    for i in range(FRAMES):
        noise = rng.integers(0, 256, (60, 80, 3), np.uint8)
        cv2.imwrite(str(folder / f"{i:02d}.png"), cv2.resize(noise, (320, 240)))
    source = open_source(parse_source(images=str(folder)))
    try:
        got = [source.read() for _ in range(FRAMES + 1)]
    finally:
        source.close()
    assert got[-1] is None and all(f is not None for f in got[:-1])
    return got[:-1]


def _maps(backend, frames) -> list[list[np.ndarray]]:
    pre = Preprocessor(backend.recipe)
    return [backend.infer(pre(frame)[None]) for frame in frames]


def test_an_fp16_model_streams_on_the_cpu_with_the_fp16_guard(exported, frames):
    backend = open_backend(exported["fp16"], "cpu")
    assert isinstance(backend, OnnxRuntimeBackend) and backend.device == "cpu"
    assert backend.precision == "fp16"
    options = backend.session.get_session_options()
    disabled = options.get_session_config_entry(DISABLED_OPTIMIZERS_KEY).split(",")
    assert "NchwcTransformer" in disabled
    reference = open_backend(exported["fp32"], "cpu")
    # FP32 keeps ONNX Runtime's NCHWc optimisation
    assert "NchwcTransformer" not in reference.session.get_session_options(
        ).get_session_config_entry(DISABLED_OPTIMIZERS_KEY)
    for got, want in zip(_maps(backend, frames), _maps(reference, frames)):
        assert [m.shape for m in got] == SHAPES
        assert all(m.dtype == np.float32 and np.isfinite(m).all() for m in got)
        for g, w in zip(got, want):
            assert cosine_per_image(g, w).min() > 0.99
        anomaly, _ = aggregate([m[0] for m in got], backend.input_hw)
        assert anomaly.shape == backend.input_hw and np.isfinite(anomaly).all()


def _stream(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeas", "stream", *args],
                          capture_output=True, text=True, timeout=600)


def test_precision_runs_the_sibling_file_and_says_so(exported, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    noise = np.random.default_rng(4).integers(0, 256, (240, 320, 3), np.uint8)
    cv2.imwrite(str(folder / "00.png"), noise)
    run = _stream("--model", str(exported["fp32"]), "--precision", "fp16", "--images",
                  str(folder), "--threshold", "0.5", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    said = " ".join(run.stderr.split())
    assert f"--precision fp16: running {exported['fp16']}" in said
    # no INT8 file beside it: one line naming the missing file and what writes it
    run = _stream("--model", str(exported["fp32"]), "--precision", "int8", "--images",
                  str(folder), "--threshold", "0.5")
    assert run.returncode == 2
    said = " ".join(run.stderr.split())
    assert f"no {exported['fp32'].with_name('model.int8.cpu.onnx')}" in said
    assert "edgeas calibrate" in said and "Traceback" not in run.stderr
