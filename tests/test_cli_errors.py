"""One exit-code rule (edgeas/errors.py): 2 for what the user chose, 1 for run-time failures;
and --debug belongs to one invocation, not to the process."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_stream_support import SIZE, edgeas

from edgeas.errors import ArtifactError, ConfigError

_ENV = dict(os.environ, COLUMNS="400")  # no wrapping of the one-line errors by the console
_ENV.pop("EDGEAS_DEBUG", None)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A real small model (the tiny preset, random weights: enough to load and run)."""
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    edgeas("export", "--config", "tiny", "--random-init", "-o", str(path))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (SIZE, SIZE))
    assert writer.isOpened()
    for value in (40, 80, 120):
        writer.write(np.full((SIZE, SIZE, 3), value, np.uint8))
    writer.release()
    return path


def _error_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.strip() and "@ 0x" not in ln]


def test_a_missing_model_file_exits_2(clip, tmp_path):
    run = edgeas("stream", "--model", str(tmp_path / "missing.onnx"), "--video", str(clip),
                 check=False, env=_ENV)
    assert run.returncode == 2, run.stderr
    lines = _error_lines(run)
    assert lines[0].startswith("error: model file not found") and "missing.onnx" in lines[0]


def test_a_missing_video_file_exits_2_like_a_missing_model(model, tmp_path):
    """The bug: a missing video was a StreamError (exit 1), a missing model a ConfigError (2)."""
    run = edgeas("stream", "--model", str(model), "--video", str(tmp_path / "missing.mp4"),
                 "--threshold", "0.5", check=False, env=_ENV)
    assert run.returncode == 2, run.stderr
    lines = _error_lines(run)
    assert lines[0].startswith("error: cannot open source") and "missing.mp4" in lines[0]
    assert lines[1].startswith("hint:") and len(lines) == 2


def test_a_video_that_exists_but_cannot_be_decoded_is_a_runtime_failure(model, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    run = edgeas("stream", "--model", str(model), "--video", str(broken), "--threshold", "0.5",
                 check=False, env=_ENV)
    assert run.returncode == 1, run.stderr
    assert any(ln.startswith("error: cannot open video") for ln in _error_lines(run))


# ------------------------------------------------------------------ batch too large


def test_a_batch_too_large_is_the_same_error_on_onnx_runtime_and_tensorrt():
    """The bug: ONNX Runtime said ConfigError (exit 2), TensorRT StreamError (exit 1).

    Both backends are made without loading anything: the batch check runs before any
    session or CUDA call, so no GPU, engine or TensorRT install is needed.
    """
    from edgeas.runtime.backends import OnnxRuntimeBackend
    from edgeas.runtime.tensorrt_backend import TensorRTBackend

    class _Engine(TensorRTBackend):
        input_hw = (SIZE, SIZE)  # instead of reading the sidecar's recipe

    class _Onnx(OnnxRuntimeBackend):
        input_hw = (SIZE, SIZE)

    engine = object.__new__(_Engine)
    engine.path, engine.name = Path("model.engine"), "TensorRT (mock)"
    engine.batch, engine.max_batch = None, 2  # a dynamic-batch engine built for up to 2
    onnx = object.__new__(_Onnx)
    onnx.path, onnx.name, onnx.batch = Path("model.onnx"), "onnxruntime (mock)", 2
    batch = np.zeros((3, 3, SIZE, SIZE), np.float32)
    for backend, message in ((engine, "exceeds the engine's maximum 2"), (onnx, "takes 2")):
        with pytest.raises(ConfigError, match=message) as info:
            backend.infer(batch)
        assert info.value.exit_code == 2 and info.value.hint


# ------------------------------------------------------------------ --debug per invocation


def test_main_takes_argv_and_keeps_each_calls_flag(monkeypatch, capsys, tmp_path):
    """main(["--debug", ...]) then main([...]) in one process: no traceback the second time."""
    from edgeas.cli import main

    monkeypatch.delenv("EDGEAS_DEBUG", raising=False)
    missing = str(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError):  # --debug: the error itself, i.e. its traceback
        main(["--debug", "inspect", missing])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["inspect", missing])
    assert info.value.code == ConfigError.exit_code == 2  # a file named by the user
    err = capsys.readouterr().err
    assert err.startswith("error: file not found") and "Traceback" not in err


def test_concurrent_invocations_each_keep_their_own_debug_flag(monkeypatch):
    """The process-wide flag was set by whichever call parsed its options last: with two
    calls in flight (threads of one program), one got the other's --debug."""
    import edgeas.artifacts
    from edgeas.cli import main

    monkeypatch.delenv("EDGEAS_DEBUG", raising=False)
    both_parsed = threading.Barrier(2, timeout=30)

    def fail_after_both_parsed(path):
        both_parsed.wait()  # both calls have run the root callback (--debug or not)
        raise ArtifactError(f"file not found: {path}")

    monkeypatch.setattr(edgeas.artifacts, "read_metadata", fail_after_both_parsed)
    outcome: dict[str, BaseException] = {}

    def call(name: str, argv: list[str]) -> None:
        try:
            main(argv)
        except BaseException as exc:  # SystemExit included: that is the outcome to check
            outcome[name] = exc

    threads = [threading.Thread(target=call, args=("debug", ["--debug", "inspect", "a.onnx"])),
               threading.Thread(target=call, args=("plain", ["inspect", "b.onnx"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(outcome["debug"], ArtifactError)  # the traceback
    assert isinstance(outcome["plain"], SystemExit) and outcome["plain"].code == 1


def test_usage_errors_exit_2_without_a_traceback(capsys):
    from edgeas.cli import main

    for argv in (["inspect"], ["--no-such-flag"], ["stream", "--frames-per-hour", "3"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith("error: "), argv
