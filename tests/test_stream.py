"""`edgeas stream` end to end on CPU: a video made from the built-in data set through a
briefly trained, exported tiny model (see test_stream_support for why large holes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from blocked_python import edgeas_without
from test_stream_support import (
    MIN_AREA,
    SIZE,
    THRESHOLD,
    clean_images,
    hole_images,
    make_clip,
    read_events,
    trained_model_path,
    video_frames,
)

from edgeas.errors import ArtifactError, ConfigError, DependencyError
from edgeas.runtime.command import run_stream
from edgeas.runtime.station import StreamOptions

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
PATTERN = "....XX....XX......XX...."


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return trained_model_path(tmp_path_factory)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "line.mp4", PATTERN)


def _stream_without_torch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`edgeas stream ...` in a Python where torch cannot be imported (a station image)."""
    return edgeas_without(("torch", "tensorrt"), "stream", *args, timeout=timeout)


def _boxes_hit(regions, mask) -> bool:
    ys, xs = np.nonzero(mask)
    return any(x < xs.max() and xs.min() < x + w and y < ys.max() and ys.min() < y + h
               for x, y, w, h in regions)


def test_video_events_only_for_defects_and_a_readable_recording(model, clip, tmp_path):
    events, rec, summary = tmp_path / "events", tmp_path / "annotated.mp4", tmp_path / "s.json"
    run = _stream_without_torch(
        "--model", str(model), "--video", str(clip.path), "--threshold", str(THRESHOLD),
        "--min-area", str(MIN_AREA), "--events", str(events), "--record", str(rec),
        "--summary-json", str(summary))
    assert run.returncode == 0, run.stderr
    found = read_events(events)
    defects = [i for i, bad in enumerate(clip.defect) if bad]
    assert [e["frame"] for e in found] == defects
    for e in found:
        assert e["score"] >= THRESHOLD and e["threshold"] == THRESHOLD
        assert e["source"] == str(clip.path)
        assert _boxes_hit(e["regions"], clip.masks[e["frame"]])
        frame = cv2.imread(str(events / e["image"]))
        mask = cv2.imread(str(events / e["mask"]), cv2.IMREAD_GRAYSCALE)
        assert frame.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE)
        assert (mask > 0).sum() >= MIN_AREA
    recorded = video_frames(rec)
    assert len(recorded) == len(PATTERN) and recorded[0].shape == (SIZE, SIZE, 3)
    assert not list(tmp_path.glob(".*partial*"))
    info = json.loads(summary.read_text())
    assert info["frames"] == len(PATTERN) and info["dropped"] == 0
    assert info["ng_frames"] == len(defects) and info["events"]["written"] == len(defects)
    for stage in ("capture", "preprocess", "infer", "aggregate", "render", "latency"):
        assert info["stages"][stage]["p50_ms"] > 0
    assert "events: 6 written" in run.stderr and "recording:" in run.stderr


def test_a_station_file_runs_the_stream(model, clip, tmp_path):
    station = tmp_path / "station.yaml"
    station.write_text(f"model: {model}\nsource: file://{clip.path}\nthreshold: {THRESHOLD}\n"
                       f"min_area: {MIN_AREA}\naggregation: fused\nevents:\n  dir: ev\n"
                       "  budget_mb: 50\n")
    from edgeas.runtime.command import build_options

    summary = run_stream(build_options(station, {"max_frames": 12}), device="cpu")
    assert summary["frames"] == 12 and summary["aggregation"] == "fused"
    assert [e["frame"] for e in read_events(tmp_path / "ev")] == [4, 5, 10, 11]


def test_sigterm_flushes_events_and_closes_the_recording(model, tmp_path):
    long_clip = make_clip(tmp_path / "long.mp4", PATTERN, repeat=12)
    events, rec = tmp_path / "events", tmp_path / "rec.avi"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeas", "stream", "--model", str(model), str(long_clip.path),
         "--threshold", str(THRESHOLD), "--min-area", str(MIN_AREA), "--events", str(events),
         "--record", str(rec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(read_events(events)) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM" in err and "stopped on request" in err
    frames = int(err.split(" frames (")[0].rsplit("\n", 1)[-1])
    assert 0 < frames < len(long_clip.defect)  # it stopped before the end of the file
    recorded = video_frames(rec)
    assert len(recorded) == frames
    found = read_events(events)
    assert found and all((events / e["image"]).is_file() and (events / e["mask"]).is_file()
                         for e in found)
    expected = [i for i in range(frames) if long_clip.defect[i]]
    assert [e["frame"] for e in found] == expected  # every NG frame processed has its event


def test_batches_of_frames_give_the_same_events(tmp_path_factory, clip, tmp_path):
    dynamic = trained_model_path(tmp_path_factory, dynamic_batch=True)
    results = {}
    for batch in (1, 5):  # 24 frames: the last batch of 5 is partial
        opts = StreamOptions(model=str(dynamic), source=str(clip.path), threshold=THRESHOLD,
                             min_area=MIN_AREA, events_dir=str(tmp_path / f"ev{batch}"),
                             batch=batch)
        summary = run_stream(opts, device="cpu")
        assert summary["frames"] == len(PATTERN) and summary["backend"]["batch"] is None
        results[batch] = [(e["frame"], e["regions"]) for e in read_events(tmp_path / f"ev{batch}")]
    assert [f for f, _ in results[1]] == [f for f, _ in results[5]]
    assert [f for f, _ in results[1]] == [i for i, bad in enumerate(clip.defect) if bad]
    for (_, one), (_, five) in zip(results[1], results[5]):
        # batched inference may round differently: a pixel at the threshold may flip
        assert len(one) == len(five) and np.allclose(one, five, atol=2)


def test_frames_of_other_sizes_and_grayscale(model, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (hole, mask), = hole_images(1)
    clean = clean_images(1)[0]
    cv2.imwrite(str(folder / "1_clean_320x240.png"), cv2.resize(clean, (320, 240)))
    cv2.imwrite(str(folder / "2_hole_gray.png"), cv2.cvtColor(hole, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "3_hole_448.png"), cv2.resize(hole, (448, 448)))
    cv2.imwrite(str(folder / "4_clean_bgra.png"), cv2.cvtColor(clean, cv2.COLOR_BGR2BGRA))
    opts = StreamOptions(model=str(model), source=str(folder), threshold=THRESHOLD,
                         min_area=MIN_AREA, events_dir=str(tmp_path / "ev"),
                         record=str(tmp_path / "rec.mp4"))
    summary = run_stream(opts, device="cpu")
    assert summary["frames"] == 4 and summary["skipped"] == 0
    found = read_events(tmp_path / "ev")
    assert [e["frame"] for e in found][-1] == 2 and 1 in [e["frame"] for e in found]
    big = next(e for e in found if e["frame"] == 2)
    assert big["source"].endswith("3_hole_448.png")
    assert _boxes_hit([[v // 2 for v in r] for r in big["regions"]], mask)  # frame pixels
    assert cv2.imread(str(tmp_path / "ev" / big["mask"]), cv2.IMREAD_GRAYSCALE).shape == (448, 448)
    recorded = video_frames(tmp_path / "rec.mp4")
    assert len(recorded) == 4 and recorded[0].shape == (240, 320, 3)


def test_an_unopenable_source_is_a_one_line_error(model, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "edgeas", "stream", "--model", str(model), "--video",
         str(tmp_path / "missing.mp4")], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, COLUMNS="400"))  # no wrapping by the console
    assert run.returncode == 2  # a missing file named on the command line
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error: cannot open source") and "missing.mp4" in lines[0]
    assert lines[1].startswith("hint:") and len(lines) == 2


def _with_metadata(model, path, change):
    m = onnx.load(str(model))
    for prop in m.metadata_props:
        if prop.key == "edgeas":
            if change is None:
                m.metadata_props.remove(prop)
                break
            meta = json.loads(prop.value)
            change(meta)
            prop.value = json.dumps(meta)
    onnx.save(m, str(path))
    return path


def test_models_without_metadata_or_threshold_are_refused(model, clip, tmp_path):
    bare = _with_metadata(model, tmp_path / "bare.onnx", None)
    with pytest.raises(ArtifactError, match="no edgeas metadata"):
        run_stream(StreamOptions(model=str(bare), source=str(clip.path)))

    def unset(meta):
        meta["threshold"]["value"] = None

    unfitted = _with_metadata(model, tmp_path / "unfitted.onnx", unset)
    with pytest.raises(ConfigError, match="no fitted threshold") as info:
        run_stream(StreamOptions(model=str(unfitted), source=str(clip.path)))
    assert "--threshold" in info.value.hint
    summary = run_stream(StreamOptions(model=str(unfitted), source=str(clip.path),
                                       threshold=THRESHOLD, max_frames=2))
    assert summary["frames"] == 2 and summary["threshold_origin"] == "override"


def test_show_without_a_gui_build_is_a_clear_error(model, clip):
    from edgeas.runtime.sinks import gui_available

    if gui_available():
        pytest.skip("this OpenCV has a GUI: --show would open a window")
    with pytest.raises(DependencyError, match="--show needs") as info:
        run_stream(StreamOptions(model=str(model), source=str(clip.path), threshold=THRESHOLD,
                                 show=True, max_frames=2))
    assert "--serve" in info.value.hint
