"""`edgeas synth-clip`: a video of the test split with the list of its defective frames."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest

from edgeas.errors import DataError
from edgeas.train.clip import write_clip
from edgeas.train.synth import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipdata") / "data"
    make_dataset(root, classes="tissue,gravel", per_class=8, seed=0, size=64)
    return root


def test_clip_holds_every_test_image_and_names_the_defects(data, tmp_path):
    out = tmp_path / "line.avi"
    result = subprocess.run(
        [sys.executable, "-m", "edgeas", "synth-clip", str(data), "-o", str(out), "--hold", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.with_suffix(".json").read_text())
    tests = sorted(data.glob("*/test/*/*.png"))
    defects = [p for p in tests if p.parent.name != "good"]
    assert len(doc["frames"]) == 3 * len(tests)
    assert sum(f["defect"] for f in doc["frames"]) == 3 * len(defects)
    cap = cv2.VideoCapture(str(out))
    read = 0
    while cap.read()[0]:
        read += 1
    assert read == len(doc["frames"])
    # each frame shows the image it names (MJPG is lossy: compare loosely)
    cap = cv2.VideoCapture(str(out))
    ok, first = cap.read()
    want = cv2.imread(str(data / doc["frames"][0]["image"]))
    assert ok and abs(first.astype(int) - want.astype(int)).mean() < 6


def test_clip_order_follows_the_seed(data, tmp_path):
    a = write_clip(data, tmp_path / "a.avi", seed=1)
    b = write_clip(data, tmp_path / "b.avi", seed=1)
    c = write_clip(data, tmp_path / "c.avi", seed=2)
    assert a["frames"] == b["frames"] and a["frames"] != c["frames"]


def test_clip_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="no CLASS/test"):
        write_clip(tmp_path, tmp_path / "x.mp4")
    with pytest.raises(DataError, match="must end in"):
        write_clip(tmp_path, tmp_path / "x.gif")


def test_camera_sized_frames_place_the_part_and_record_where(data, tmp_path):
    out = tmp_path / "wide.avi"
    result = subprocess.run(
        [sys.executable, "-m", "edgeas", "synth-clip", str(data), "-o", str(out), "--hold", "1",
         "--frame", "320x180", "--fill", "0.9", "--keep-aspect", "--limit", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["size"] == [320, 180]
    geo = doc["geometry"]
    assert geo["image_size"] == [64, 64] and geo["keep_aspect"] and geo["fill"] == 0.9
    x, y, w, h = geo["part_box"]
    assert (w, h) == (162, 162) and (x, y) == (79, 9)  # centred, 0.9 of the height, square
    ok, first = cv2.VideoCapture(str(out)).read()
    assert ok and first.shape == (180, 320, 3)
    # the part where the JSON says, the plain background around it (MJPG: loosely)
    want = cv2.resize(cv2.imread(str(data / doc["frames"][0]["image"])), (w, h),
                      interpolation=cv2.INTER_CUBIC)
    assert abs(first[y : y + h, x : x + w].astype(int) - want.astype(int)).mean() < 8
    assert abs(first[:, : x - 4].astype(int) - 128).max() < 12


def test_default_frame_geometry_fills_the_frame(data, tmp_path):
    doc = write_clip(data, tmp_path / "full.avi", limit=2, frame=(128, 72))
    assert doc["geometry"]["part_box"] == [0, 0, 128, 72]
    assert "geometry" not in write_clip(data, tmp_path / "own.avi", limit=2)


def test_frame_option_errors(data, tmp_path):
    from edgeas.train.clip import parse_frame_size

    assert parse_frame_size("1280x720") == (1280, 720)
    for bad in ("1280", "axb", "8x8"):
        with pytest.raises(DataError, match="--frame"):
            parse_frame_size(bad)
    with pytest.raises(DataError, match="--fill"):
        write_clip(data, tmp_path / "x.avi", frame=(64, 64), fill=1.5)
