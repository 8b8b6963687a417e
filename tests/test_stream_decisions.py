"""`edgeas stream` counts its calls against ground truth found beside the source: a
synth-clip's CLIP.json (checked against events.jsonl) or a CLASS/test/KIND folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from test_stream_support import MIN_AREA, THRESHOLD, edgeas, read_events, trained_model_path

from edgeas.groundtruth import find_ground_truth, folder_truth, parse_clip
from edgeas.runtime.sink import FrameResult
from edgeas.runtime.sinks import GroundTruthSink, build_sinks, describe_decisions
from edgeas.runtime.sources import SourceSpec
from edgeas.runtime.station import StreamOptions


def _result(index: int, is_ng: bool, source: str = "clip.mp4") -> FrameResult:
    empty = np.zeros((2, 2), np.float32)
    return FrameResult(index, source, np.zeros((2, 2, 3), np.uint8), empty,
                       empty.astype(np.uint8), is_ng, 0.0, 0.5, [], 0.0, None, 0)


# --------------------------------------------------------------------------- no model


def test_the_sink_counts_each_kind_of_call_and_frames_past_the_list():
    truth = parse_clip({"frames": [{"frame": i, "defect": d} for i, d in
                                   enumerate([True, True, False, False, False])]}, "line.json")
    sink = GroundTruthSink(truth)
    for i, ng in enumerate([True, False, True, False, False, True, False]):
        sink.on_frame(_result(i, ng))
    d = sink.summary()["decisions"]
    assert (d["tp"], d["fn"], d["fp"], d["tn"], d["unlabelled"]) == (1, 1, 1, 2, 2)
    assert d["recall"] == 0.5 and d["false_ng"] == pytest.approx(1 / 3)
    json.dumps(d)  # plain JSON: ints and floats, None where undefined
    line = describe_decisions(d, skipped=1)
    assert line.startswith("decisions vs line.json: 1/2 defective NG (50.0%), 1/3 clean NG "
                           "(33.3%); 2 frames without a label")
    assert "skipped" in line


def test_clip_lists_are_checked_and_a_stray_json_is_ignored(tmp_path, caplog):
    with pytest.raises(ValueError, match="boolean 'defect'"):
        parse_clip({"frames": [{"frame": 0}]}, "x.json")
    with pytest.raises(ValueError, match="twice"):
        parse_clip({"frames": [{"frame": 0, "defect": True}, {"frame": 0, "defect": False}]},
                   "x.json")
    # entries are keyed by their frame number, not their position
    truth = parse_clip({"frames": [{"frame": 1, "defect": True}]}, "x.json")
    assert truth.label(0) is None and truth.label(1) is True and truth.label(2) is None
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded here")
    assert find_ground_truth("file", str(video)) is None  # nothing beside it
    (tmp_path / "clip.json").write_text('{"settings": 1}')
    with caplog.at_level(logging.WARNING, logger="edgeas.stream"):
        assert find_ground_truth("file", str(video)) is None
    assert "not a frame list" in caplog.text
    assert find_ground_truth("rtsp", "rtsp://cam/1") is None


def test_labelled_folders_follow_the_mvtec_layout(tmp_path):
    for kind in ("good", "hole"):
        (tmp_path / "tissue" / "test" / kind).mkdir(parents=True)
    assert folder_truth(tmp_path / "tissue" / "test" / "good").label(3) is False
    truth = folder_truth(tmp_path / "tissue" / "test" / "hole")
    assert truth.label(0) is True and truth.origin == "tissue/test/hole/"
    assert folder_truth(tmp_path / "tissue") is None


def test_build_sinks_adds_the_check_only_with_ground_truth(tmp_path):
    class Src:
        fps = None

        def __init__(self, spec: SourceSpec) -> None:
            self.spec = spec

    video = tmp_path / "line.mp4"
    video.write_bytes(b"x")
    assert build_sinks(StreamOptions(), Src(SourceSpec("file", str(video), str(video)))) == []
    (tmp_path / "line.json").write_text(json.dumps({"frames": [{"frame": 0, "defect": True}]}))
    sinks = build_sinks(StreamOptions(), Src(SourceSpec("file", str(video), str(video))))
    assert [s.name for s in sinks] == ["decisions"]


# --------------------------------------------------------------------------- real stream

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return trained_model_path(tmp_path_factory)


def test_stream_summary_counts_equal_events_and_the_clip_list(model, tmp_path):
    data = model.parent / "data"  # the data set the model was trained on
    clip = tmp_path / "line.mp4"
    edgeas("synth-clip", str(data), "-o", str(clip), "--hold", "2", "--seed", "3")
    frames = json.loads(clip.with_suffix(".json").read_text())["frames"]
    events, summary_path = tmp_path / "events", tmp_path / "summary.json"
    run = edgeas("stream", "--model", str(model), "--video", str(clip), "--threshold",
                 str(THRESHOLD), "--min-area", str(MIN_AREA), "--events", str(events),
                 "--summary-json", str(summary_path))
    summary = json.loads(summary_path.read_text())
    d = summary["decisions"]
    ng = {e["frame"] for e in read_events(events)}
    defect = {f["frame"] for f in frames if f["defect"]}
    clean = {f["frame"] for f in frames if not f["defect"]}
    assert summary["frames"] == len(frames) and d["unlabelled"] == 0
    assert (d["tp"], d["fn"]) == (len(ng & defect), len(defect - ng))
    assert (d["fp"], d["tn"]) == (len(ng & clean), len(clean - ng))
    assert d["tp"] + d["fp"] == summary["ng_frames"] == len(ng)
    assert 0 < d["defective"] < len(frames)
    assert f"decisions vs line.json: {d['tp']}/{len(defect)} defective NG" in run.stderr
    assert "ground truth: line.json" in run.stderr


def test_stream_of_a_labelled_folder(model):
    from edgeas.runtime.command import run_stream

    data = model.parent / "data" / "tissue" / "test"
    for kind, defective in (("good", False), ("hole", True)):
        folder = data / kind
        summary = run_stream(StreamOptions(model=str(model), source=str(folder),
                                           threshold=THRESHOLD, min_area=MIN_AREA))
        d = summary["decisions"]
        n = len(list(folder.glob("*.png")))
        assert d["truth"] == f"tissue/test/{kind}/" and d["unlabelled"] == 0
        if defective:
            assert (d["defective"], d["clean"], d["tp"]) == (n, 0, summary["ng_frames"])
        else:
            assert (d["defective"], d["clean"], d["fp"]) == (0, n, summary["ng_frames"])
