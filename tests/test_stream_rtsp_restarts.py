"""R1: the RTSP server the tests already use (GStreamer, run by Debian's python3) stopped and
started again 10 times during one run: the pipeline never crashes, reconnects each time,
keeps counting frames after each restart, and the run ends normally when asked. The
model is the fake one (bright frames NG): this is about the source, not the network."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from station_fakes import pipeline
from test_stream_rtsp import SERVER, RtspServer, _free_port, _rtsp_server_or_skip, _wait

from edgeas.runtime.sources import open_source, parse_source

RESTARTS = 10


@pytest.mark.slow
def test_ten_server_restarts_in_one_run(tmp_path):
    _rtsp_server_or_skip()
    for i in range(4):  # bright and dark frames, JPEG for the server's multifilesrc
        value = 255 if i % 2 == 0 else 0
        cv2.imwrite(str(tmp_path / f"f{i:03d}.jpg"), np.full((120, 160, 3), value, np.uint8))
    script = tmp_path / "rtsp_server.py"
    script.write_text(SERVER)
    port = _free_port()
    server = RtspServer(script, port, str(tmp_path / "f%03d.jpg"))
    server.start()
    run = None
    try:
        source = open_source(parse_source(rtsp=f"rtsp://127.0.0.1:{port}/line"))
        run = pipeline(source, [])
        result: dict = {}
        errors: list[BaseException] = []

        def go() -> None:
            try:
                result.update(run.run())
            except BaseException as exc:  # reported below: a crash fails the test
                errors.append(exc)

        runner = threading.Thread(target=go)
        runner.start()
        assert _wait(lambda: run.stats.frames >= 5, 60), "no frames over RTSP"
        counts = []
        for i in range(RESTARTS):
            server.stop()
            assert _wait(lambda: source.condition()[0] == "reconnecting", 30), \
                f"restart {i + 1}: the loss was not noticed"
            server.start()
            before = run.stats.frames
            assert _wait(lambda n=i + 1, b=before: source.reconnects >= n
                         and run.stats.frames >= b + 5, 60), \
                f"restart {i + 1}: no frames after it ({run.stats.frames} vs {before})"
            counts.append(run.stats.frames)
            assert runner.is_alive() and not errors
        run.stop.set()
        runner.join(timeout=30)
        source.close()
    finally:
        if run is not None:
            run.stop.set()
        server.stop()
    assert not errors and not runner.is_alive()
    assert result["reconnects"] == RESTARTS and result["stopped"]
    assert counts == sorted(counts) and result["frames"] >= counts[-1] > RESTARTS * 5
    assert result["ng_frames"] >= 1
