"""Sources: URIs and flags, files and folders that never drop, live sources that keep only
the newest frame and reconnect, and sources that cannot be opened."""

from __future__ import annotations

import logging
import socket
import time

import cv2
import numpy as np
import pytest

from edgeas.errors import ConfigError, StreamError
from edgeas.runtime.sources import LiveSource, SourceSpec, open_source, parse_source


def _video(path, n: int, fourcc: str = "MJPG", hw=(48, 64)) -> None:
    """Frame i is flat grey level 4 i: its index survives compression."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, hw[::-1])
    for i in range(n):
        writer.write(np.full((*hw, 3), 4 * i, np.uint8))
    writer.release()


def _index(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / 4))


def test_uris_and_flags(tmp_path):
    clip = tmp_path / "clip.avi"
    _video(clip, 3)
    cases = [
        (dict(uri="v4l2:///dev/video0"), ("v4l2", "/dev/video0")),
        (dict(uri="/dev/video2"), ("v4l2", "/dev/video2")),
        (dict(camera=1), ("v4l2", "/dev/video1")),
        (dict(uri="csi://0"), ("csi", "0")),
        (dict(csi=1), ("csi", "1")),
        (dict(uri="rtsp://127.0.0.1:8554/cam"), ("rtsp", "rtsp://127.0.0.1:8554/cam")),
        (dict(rtsp="127.0.0.1:8554/cam"), ("rtsp", "rtsp://127.0.0.1:8554/cam")),
        (dict(uri=f"file://{clip}"), ("file", str(clip))),
        (dict(uri=str(clip)), ("file", str(clip))),
        (dict(video=str(clip)), ("file", str(clip))),
        (dict(uri=str(tmp_path)), ("folder", str(tmp_path))),
        (dict(images=str(tmp_path)), ("folder", str(tmp_path))),
    ]
    for kwargs, (kind, target) in cases:
        spec = parse_source(**kwargs)
        assert (spec.kind, spec.target) == (kind, target), kwargs
        assert spec.live == (kind in ("v4l2", "csi", "rtsp"))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(uri="ftp://host/x"), ConfigError, "unknown scheme"),
        (dict(uri="csi://left"), ConfigError, "csi://N"),
        (dict(), ConfigError, "no source"),
        (dict(uri="a", camera=0), ConfigError, "several sources"),
        (dict(uri="/no/such/clip.mp4"), ConfigError, "cannot open source /no/such/clip.mp4"),
        (dict(images="/no/such/dir"), ConfigError, "not a folder of images"),
    ],
)
def test_bad_source_arguments(kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        parse_source(**kwargs)
    assert "\n" not in info.value.message


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sources_that_cannot_be_opened_at_start_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    empty = tmp_path / "empty"
    empty.mkdir()
    specs = [
        (parse_source(video=str(broken)), "cannot open video"),
        (parse_source(images=str(empty)), "no images"),
        (SourceSpec("v4l2", "/dev/video97", "v4l2:///dev/video97"), "cannot open source"),
        (parse_source(rtsp=f"rtsp://127.0.0.1:{_closed_port()}/none"), "cannot open source"),
    ]
    for spec, message in specs:
        start = time.monotonic()
        with pytest.raises(StreamError, match=message) as info:
            open_source(spec)
        assert "\n" not in info.value.message and info.value.hint
        assert time.monotonic() - start < 10


def test_a_video_file_never_drops_a_frame(tmp_path):
    clip = tmp_path / "clip.avi"
    _video(clip, 40)
    source = open_source(parse_source(video=str(clip)))
    opened = time.time()
    assert source.condition()[0] == "reading"
    seen = []
    while (frame := source.read()) is not None:
        seen.append(_index(frame))
        time.sleep(0.002)  # a slow consumer changes nothing for a file
    source.close()
    assert seen == list(range(40)) and source.ended and source.dropped == 0
    state, since = source.condition()  # what the live page shows of it
    assert state == "ended" and opened <= since <= time.time()


def test_a_folder_keeps_sizes_and_grayscale_and_skips_unreadable_files(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((30, 40, 3), 10, np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.full((50, 20), 200, np.uint8))
    (tmp_path / "c.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(tmp_path / "d.png"), np.full((16, 16, 4), 99, np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(parse_source(images=str(tmp_path)))
    shapes = []
    while (frame := source.read()) is not None:
        shapes.append((frame.shape, source.current.name))
    assert shapes == [((30, 40, 3), "a.png"), ((50, 20), "b.png"), ((16, 16, 3), "d.png")]
    assert source.skipped == 1


def test_a_live_source_hands_the_newest_frame_counts_drops_and_reconnects(tmp_path, caplog):
    """A 'camera' that is a video file read as fast as the CPU allows: far faster than
    this consumer, and it 'fails' at the end of the file, so the thread reconnects."""
    clip = tmp_path / "camera.avi"
    _video(clip, 60)
    spec = SourceSpec("v4l2", "camera", "v4l2:///dev/test-camera")
    live = LiveSource(spec, opener=lambda s: cv2.VideoCapture(str(clip)))
    states = []  # what the live page would show, in order
    enter = live._enter
    # the states it went through (an attempt refused after close is not one)
    live._enter = lambda state: (enter(state), states.append(live.state)
                                 if not states or states[-1] != live.state else None)
    seen = []
    with caplog.at_level(logging.WARNING, logger="edgeas.stream"):
        live.open()
        assert live.condition()[0] == "live"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (live.reconnects < 1 or len(seen) < 5):
            frame = live.read(timeout=1.0)
            if frame is not None:
                seen.append(_index(frame))
            time.sleep(0.02)
        live.close()
    assert len(seen) >= 5 and live.dropped > 0
    # every captured frame was handed out or counted as dropped (one may still be waiting)
    assert live.frames_captured - len(seen) - live.dropped in (0, 1)
    assert live.reconnects >= 1 and "reconnecting" in caplog.text and "reconnected" in caplog.text
    assert states[:3] == ["live", "reconnecting", "live"] and states[-1] == "closed"
    live._enter("live")  # the capture thread reconnecting just after close()
    assert live.condition()[0] == "closed"
    # newest first: indices only go back when the 'camera' restarted
    backwards = sum(b <= a for a, b in zip(seen, seen[1:]))
    assert backwards <= live.reconnects


def test_a_camera_password_is_not_shown():
    from edgeas.runtime.sources import redact

    shown = redact("rtsp://admin:s3cret@10.0.0.7:554/stream1")
    assert shown == "rtsp://admin:***@10.0.0.7:554/stream1"
    for uri in ("rtsp://10.0.0.7/x", "rtsp://admin@10.0.0.7/x", "/data/line:1@2.mp4"):
        assert redact(uri) == uri


def test_a_live_source_that_cannot_open_is_an_error():
    spec = SourceSpec("rtsp", "rtsp://127.0.0.1:1/x", "rtsp://127.0.0.1:1/x")
    live = LiveSource(spec, opener=lambda s: cv2.VideoCapture())
    with pytest.raises(StreamError, match="cannot open source rtsp://127.0.0.1:1/x"):
        live.open()


def test_csi_without_gstreamer_warns_and_fails_with_the_reason(caplog):
    from edgeas.runtime.sources import CSI_PIPELINE, gstreamer_available

    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer: csi://0 would try a real camera")
    with caplog.at_level(logging.WARNING, logger="edgeas.stream"), \
            pytest.raises(StreamError, match="cannot open source csi://0") as info:
        open_source(parse_source(csi=0))
    assert "no GStreamer" in caplog.text and "GStreamer" in info.value.hint
    # the pipeline of deploy.md, with the sensor id filled in
    assert CSI_PIPELINE.startswith("nvarguscamerasrc sensor-id={sensor} ! ")
    assert CSI_PIPELINE.endswith("appsink drop=true max-buffers=1")
