"""RTSP: a local GStreamer RTSP server (Debian's gir1.2-gst-rtsp-server-1.0, run by Debian's
own python3) streams frames of the built-in data set; the server is stopped mid-run and
started again, and the pipeline reconnects and keeps going.

CI installs: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly (x264enc). Skipped with the reason
when they are missing.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import pytest
from test_stream_support import MIN_AREA, THRESHOLD, clean_images, hole_images, trained_model_path

from edgeas.postprocess import resolve
from edgeas.runtime import open_backend
from edgeas.runtime.pipeline import Pipeline
from edgeas.runtime.sources import open_source, parse_source

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = r"""
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

Gst.init(None)
port, mount, pattern = sys.argv[1:4]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
# the JPEG frames loop for ever at 10 fps, H.264 as a camera would send it
factory.set_launch(
    f"( multifilesrc location={pattern} loop=true caps=image/jpeg,framerate=10/1 ! jpegdec ! "
    "videoconvert ! video/x-raw,format=I420 ! x264enc tune=zerolatency speed-preset=ultrafast "
    "key-int-max=5 ! rtph264pay name=pay0 pt=96 config-interval=1 )")
factory.set_shared(True)
server.get_mount_points().add_factory(mount, factory)
if server.attach(None) == 0:
    sys.exit("cannot bind the RTSP port")
print("ready", flush=True)
GLib.MainLoop().run()
"""
PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    "missing = [e for e in ('multifilesrc', 'jpegdec', 'x264enc', 'rtph264pay') "
    "if Gst.ElementFactory.find(e) is None]; print(','.join(missing))"
)


def _rtsp_server_or_skip() -> None:
    if not Path(SYSTEM_PYTHON).is_file():
        pytest.skip(f"{SYSTEM_PYTHON} (Debian's python3 with python3-gi) not found")
    run = subprocess.run([SYSTEM_PYTHON, "-c", PROBE], capture_output=True, text=True,
                         timeout=60)
    if run.returncode != 0:
        pytest.skip("GStreamer RTSP server not installed (apt-get install python3-gi "
                    f"gir1.2-gst-rtsp-server-1.0): {run.stderr.strip().splitlines()[-1]}")
    if run.stdout.strip():
        pytest.skip(f"GStreamer elements missing: {run.stdout.strip()} (apt-get install "
                    "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    def __init__(self, script: Path, port: int, pattern: str) -> None:
        self.args = [SYSTEM_PYTHON, str(script), str(port), "/line", pattern]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_rtsp_stream_survives_a_server_restart(tmp_path_factory, tmp_path):
    _rtsp_server_or_skip()
    model = trained_model_path(tmp_path_factory)
    frames = clean_images(6) + [img for img, _ in hole_images(2)]
    for i, img in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"f{i:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    script = tmp_path / "rtsp_server.py"
    script.write_text(SERVER)
    port = _free_port()
    server = RtspServer(script, port, str(tmp_path / "f%03d.jpg"))
    server.start()
    backend = open_backend(model, "cpu")
    pipeline = None
    try:
        source = open_source(parse_source(rtsp=f"rtsp://127.0.0.1:{port}/line"))
        settings = resolve(backend.record, THRESHOLD, MIN_AREA)
        pipeline = Pipeline(backend, source, settings)
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(pipeline.run()))
        runner.start()
        assert _wait(lambda: pipeline.stats.frames >= 10, 60), "no frames over RTSP"
        server.stop()
        time.sleep(2.0)
        before = pipeline.stats.frames
        assert source.reconnects == 0
        server.start()
        assert _wait(lambda: source.reconnects >= 1 and pipeline.stats.frames >= before + 10,
                     60), f"no frames after the restart ({pipeline.stats.frames} vs {before})"
        pipeline.stop.set()
        runner.join(timeout=30)
        assert not runner.is_alive()
        source.close()
    finally:
        if pipeline is not None:
            pipeline.stop.set()
        server.stop()
        backend.close()
    assert result["reconnects"] >= 1 and result["frames"] >= before + 10
    assert result["ng_frames"] >= 1  # the holes went by, before or after the restart
    assert result["source"] == f"rtsp://127.0.0.1:{port}/line"
