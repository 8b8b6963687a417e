"""station.yaml: every key of interfaces.md, unknown keys named with their file, flags win."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeas.errors import ConfigError
from edgeas.runtime.command import build_options
from edgeas.runtime.station import load_station

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "station.yaml"
    path.write_text(text)
    return path


def test_full_station_file_with_relative_paths(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.png").write_bytes(b"")
    path = _write(tmp_path, """
model: models/model.onnx
source: clips
threshold: 0.25
min_area: 30
aggregation: fused
serve: 0.0.0.0:9000
show: false
record: out/run.mp4
events:
  dir: events
  budget_mb: 2.5
""")
    opts = load_station(path)
    assert opts.model == str(tmp_path / "models/model.onnx")
    assert opts.source == str(tmp_path / "clips")
    assert (opts.threshold, opts.min_area, opts.aggregation) == (0.25, 30, "fused")
    assert opts.serve == "0.0.0.0:9000" and opts.show is False
    assert opts.record == str(tmp_path / "out/run.mp4")
    assert opts.events_dir == str(tmp_path / "events") and opts.events_budget_mb == 2.5


def test_uris_and_absolute_paths_are_kept(tmp_path):
    path = _write(tmp_path, "model: /opt/m.engine\nsource: rtsp://10.0.0.5/cam\n")
    opts = load_station(path)
    assert opts.model == "/opt/m.engine" and opts.source == "rtsp://10.0.0.5/cam"
    assert opts.events_dir is None and opts.events_budget_mb == 1024
    path = _write(tmp_path, "source: v4l2:///dev/video0\nserve: true\n")
    assert load_station(path).source == "v4l2:///dev/video0"
    assert load_station(path).serve == "127.0.0.1:8080"


def test_the_shipped_example_station_file_loads():
    example = REPO / "jetson" / "station.example.yaml"
    if not example.is_file():
        pytest.skip("jetson/station.example.yaml is not in this checkout")
    opts = load_station(example)
    assert opts.model and opts.source == "csi://0" and opts.events_budget_mb == 1024


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ("model: m.onnx\nthreshhold: 0.3\n", "unknown key 'threshhold'", "'threshold'?"),
        ("events:\n  dir: e\n  budget: 3\n", "unknown key 'budget' in events", "budget_mb"),
        ("aggregation: fussed\n", "aggregation 'fussed' is not one of", "did you mean 'fused'"),
        ("threshold: high\n", "'threshold' must be a number", None),
        ("min_area: -3\n", "'min_area' must be >= 0", None),
        ("min_area: 2.5\n", "whole number", None),
        ("show: yes please\n", "'show' must be true or false", None),
        ("events:\n  budget_mb: 0\n", "budget_mb must be > 0", None),
        ("- a\n- b\n", "mapping", None),
        ("model: [unclosed\n", "cannot read station file", None),
    ],
)
def test_bad_station_files_are_config_errors_naming_the_file(tmp_path, text, message, hint):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_station(path)
    assert str(path) in info.value.message
    assert info.value.exit_code == 2
    if hint:
        assert hint in info.value.hint


def test_flags_override_the_station_file(tmp_path):
    (tmp_path / "frames").mkdir()
    path = _write(tmp_path, "model: a.onnx\nsource: frames\nthreshold: 0.3\nserve: 8080\n")
    opts = build_options(path, {"threshold": 0.7, "model": None, "show": None,
                                "video": None, "camera": None})
    assert opts.threshold == 0.7 and opts.model == str(tmp_path / "a.onnx")
    assert opts.serve == "8080" and opts.source == str(tmp_path / "frames")
    opts = build_options(path, {"camera": 2})
    assert opts.source == "v4l2:///dev/video2"


def test_missing_model_or_source_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no model"):
        build_options(None, {"source": "rtsp://127.0.0.1:1/x"})
    with pytest.raises(ConfigError, match="no source"):
        build_options(None, {"model": "m.onnx"})
    with pytest.raises(ConfigError, match="several sources"):
        build_options(None, {"model": "m.onnx", "camera": 0, "rtsp": "rtsp://127.0.0.1/x"})
    with pytest.raises(ConfigError, match="station file not found"):
        build_options(tmp_path / "nope.yaml", {})
