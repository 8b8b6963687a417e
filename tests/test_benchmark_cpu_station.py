"""benchmarks/cpu_station.py: the `edgeas stream` command line it times runs for real on
the tests' trained model, its summary is read back, and the table says what each row is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_stream_support import trained_model_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
pytest.importorskip("onnxruntime")
import cpu_station  # noqa: E402
from runtime_bench import make_video  # noqa: E402


def test_a_timed_stream_is_the_real_command_with_events(tmp_path_factory, tmp_path):
    model = trained_model_path(tmp_path_factory)
    clip = make_video(tmp_path, 6, (240, 320))
    run = cpu_station.stream(model, "fp32", clip, 0.0, 1, tmp_path / "events")
    # threshold 0: every frame NG, so every frame wrote an event
    assert run["frames"] == 6 and run["ng_frames"] == 6
    assert run["fps"] > 0 and run["wall_fps"] > 0 and "infer" in run["stages_p50_ms"]
    assert len(list((tmp_path / "events").rglob("*.png"))) >= 6
    with pytest.raises(RuntimeError, match="--precision int8"):  # no INT8 file beside it
        cpu_station.stream(model, "int8", clip, 0.0, 1, tmp_path / "events2")


def test_the_table_has_a_row_per_precision_and_batch():
    entry = {"fps_median": 19.6, "wall_fps_median": 16.8, "fps_rounds": [19.5, 19.7],
             "ng_frames": 7, "frames": 120,
             "stages_p50_ms": {"capture": 4.7, "preprocess": 0.6, "infer": 47.2}}
    report = {"command": "python benchmarks/cpu_station.py", "preset": "unias-edge",
              "frame_size": "1280x720", "rounds": 2, "load_1m_per_round": [1.0, 1.1],
              "machine": {"cpu_model": "cpu", "cpu_count": 2, "python": "3.11"},
              "runs": {"int8/batch4": entry}}
    rows = [line for line in cpu_station.markdown(report).splitlines()
            if line.startswith("| int8")]
    assert rows == ["| int8 | 4 | 19.6 | 16.8 | [19.5, 19.7] | 7 / 120 | 4.7 / 0.6 / 47.2 / - |"]
