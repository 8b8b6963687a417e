"""The station benchmarks/soak.py watches, in a process of its own so that what it measures
(memory, fds, threads) is the station's alone, not the harness's.

    python benchmarks/soak_station.py CLIP WORK BROKER_PORT WEBHOOK_URL METRICS_PORT FPS [MODEL]

A looping clip (the video decoded again from its start at every end, so the decoder is
opened and closed all run long) paced at FPS, through MODEL or the tests' stand-in
backend (bright frames NG), into the sinks `edgeas stream` builds from its options:
events in WORK/events, MQTT, the webhook, metrics on 127.0.0.1:METRICS_PORT, queues in
WORK/queue. SIGUSR1 makes the clip go dark for 5 s (reads time out, the source reports
`reconnecting`, then a reconnect); SIGTERM stops the station the way systemd does, and
the summary is printed as one JSON line, `SUMMARY {...}`.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests")]

from station_fakes import FakeBackend  # noqa: E402

from edgeas.postprocess import Settings  # noqa: E402
from edgeas.runtime.command import console, setup_logging  # noqa: E402
from edgeas.runtime.pipeline import Pipeline  # noqa: E402
from edgeas.runtime.sinks import build_sinks  # noqa: E402
from edgeas.runtime.sources import Source, SourceSpec, VideoFileSource  # noqa: E402
from edgeas.runtime.station import StreamOptions  # noqa: E402

OUTAGE_S = 5.0


class LoopingClip(Source):
    """A video file played in a loop, paced at `fps`, with outages on request."""

    live = True

    def __init__(self, path: Path, fps: float) -> None:
        super().__init__(SourceSpec("file", str(path), f"file://{path}"))
        self.path, self.period = path, 1.0 / fps
        self.loops = 0
        self.dark_until = 0.0
        self._video = self._open()
        self._next = time.monotonic()
        self._enter("live")

    def _open(self) -> VideoFileSource:
        return VideoFileSource(SourceSpec("file", str(self.path), f"file://{self.path}")).open()

    def outage(self, seconds: float) -> None:
        self.dark_until = time.monotonic() + seconds

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        now = time.monotonic()
        if now < self.dark_until:
            self._enter("reconnecting")
            time.sleep(min(timeout, self.dark_until - now))
            return None
        if self.state == "reconnecting":
            self.reconnects += 1
            self._enter("live")
        time.sleep(max(0.0, self._next - now))
        self._next = max(self._next + self.period, time.monotonic())
        frame = self._video.read()
        if frame is None:  # the end of the clip: play it again
            self._video.close()
            self._video = self._open()
            self.loops += 1
            frame = self._video.read()
        return frame

    def close(self) -> None:
        self._video.close()


def main() -> None:
    clip, work, broker_port, webhook, metrics_port, fps = sys.argv[1:7]
    model = sys.argv[7] if len(sys.argv) > 7 else None
    setup_logging()
    work_dir = Path(work)
    options = StreamOptions(events_dir=str(work_dir / "events"), events_budget_mb=200,
                            mqtt=f"mqtt://127.0.0.1:{broker_port}/soak", webhook=webhook,
                            metrics=f"127.0.0.1:{metrics_port}",
                            queue_dir=str(work_dir / "queue"), station="line1")
    if model:
        from edgeas.postprocess import resolve
        from edgeas.runtime.backends import open_backend

        backend = open_backend(model, "cpu")
        settings = resolve(backend.record, None, None, None, model)
    else:
        backend, settings = FakeBackend(), Settings(0.5, "override", 0, "fused")
    source = LoopingClip(Path(clip), float(fps))
    signal.signal(signal.SIGUSR1, lambda *_: source.outage(OUTAGE_S))
    pipeline = Pipeline(backend, source, settings, build_sinks(options, source, console))
    summary = pipeline.run()  # until SIGTERM
    source.close()
    summary["clip_loops"] = source.loops
    print("SUMMARY " + json.dumps(summary, default=str), flush=True)


if __name__ == "__main__":
    main()
