"""Soak: a station left running with faults injected, watched for leaks and lost events.

    python benchmarks/soak.py [--minutes 20] [--model MODEL.onnx] [--fps 15]
        [--fault-every-s 120] [--warmup-s 60] [--sample-s 10] [--results benchmarks/results]

A looping clip (a synthetic MJPG video decoded again from the start at every end, so
the decoder is opened and closed all run long) streams through the model (or, without
--model, the tests' stand-in backend: bright frames NG, which keeps the soak about the
station, not the network) into every sink a factory station has: events on disk, MQTT
to a real Mosquitto, a webhook to a local receiver, the metrics page (scraped at every
sample). Every `--fault-every-s` the next fault in turn is injected:

    source    the clip goes dark for 5 s (reads time out, state `reconnecting`, then a
              reconnect is counted): simulated in-process; a real RTSP server
              stopped and started is tests/test_stream_rtsp.py's
    broker    Mosquitto is stopped for 10 s, then started again (its persistence keeps
              the subscriber's session, as a real broker's would)
    webhook   the receiver answers 503 to everything for 10 s

Every `--sample-s` it records resident memory, open file descriptors, threads, frames,
events decided, written and delivered (unique ids at the MQTT subscriber and the
receiver) and the queue depths. At the end the queues are drained and the targets
checked: memory growth < 20 MB after the warm-up, fd and thread counts flat after it
(the floor of the last quarter of the samples not above that of the first quarter: a
leak raises the floor, a request or reconnect in flight is only a spike), no event
lost; the last sample is taken after the run, once the queues are drained. The servers
are the tests' own (tests/brokers.py), on 127.0.0.1. Writes results/soak.json and
soak.md (`--stem` to write elsewhere, e.g. a short smoke run).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from brokers import MOSQUITTO, Mosquitto, Receiver, Subscriber  # noqa: E402
from machine import machine_facts  # noqa: E402
from publish import write_results  # noqa: E402
from station_fakes import BRIGHT, DARK, FakeBackend  # noqa: E402

from edgeas.postprocess import Settings  # noqa: E402
from edgeas.runtime.delivery import event_message  # noqa: E402
from edgeas.runtime.events import EventLog, EventWriter  # noqa: E402
from edgeas.runtime.metrics import MetricsSink  # noqa: E402
from edgeas.runtime.mqtt import MqttSink, parse_mqtt_url  # noqa: E402
from edgeas.runtime.outbox import Outbox  # noqa: E402
from edgeas.runtime.pipeline import Pipeline  # noqa: E402
from edgeas.runtime.sink import FrameResult, Sink  # noqa: E402
from edgeas.runtime.sources import Source, SourceSpec, VideoFileSource  # noqa: E402
from edgeas.runtime.webhook import WebhookSink  # noqa: E402

MEMORY_GROWTH_MB = 20.0


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


class Decided(Sink):
    """The ids of every NG event decided, in order: what must arrive everywhere."""

    name = "decided"

    def __init__(self) -> None:
        self.ids: list[str] = []

    def on_event(self, result: FrameResult) -> None:
        self.ids.append(event_message(result, "", "", False)["id"])


def make_clip(path: Path, frames: int = 60) -> None:
    """An MJPG clip, one frame in six bright (NG for the stand-in backend)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
    for i in range(frames):
        writer.write(BRIGHT if i % 6 == 0 else DARK)
    writer.release()


def process_facts() -> dict[str, float]:
    status = Path("/proc/self/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines()
                  if line.startswith("VmRSS:"))
    return {"rss_mb": rss_kb / 1024, "fds": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if MOSQUITTO is None:
        sys.exit("mosquitto is not installed (apt-get install mosquitto)")
    work = Path(tempfile.mkdtemp(prefix="edgeas-soak-"))
    clip = work / "clip.avi"
    make_clip(clip)
    broker = Mosquitto(work / "broker")
    hook_down = threading.Event()
    receiver = Receiver(fail=lambda n: hook_down.is_set())
    try:
        return _soak(args, work, clip, broker, receiver, hook_down)
    finally:  # also when interrupted: no broker left running, no folder left behind
        receiver.close()
        broker.close()
        shutil.rmtree(work, ignore_errors=True)


def _soak(args: argparse.Namespace, work: Path, clip: Path, broker: Mosquitto,
          receiver: Receiver, hook_down: threading.Event) -> dict[str, Any]:
    sub = Subscriber(broker.port, "soak/line1/events")
    if args.model:
        from edgeas.postprocess import resolve
        from edgeas.runtime.backends import open_backend

        backend = open_backend(args.model, "cpu")
        settings = resolve(backend.record, None, None, None, args.model)
    else:
        backend, settings = FakeBackend(), Settings(0.5, "override", 0, "fused")
    source = LoopingClip(clip, args.fps)
    decided = Decided()
    events = EventWriter(EventLog(work / "events", budget_mb=50))
    mqtt = MqttSink(parse_mqtt_url(f"mqtt://127.0.0.1:{broker.port}/soak"),
                    Outbox(work / "queue" / "mqtt", 64 << 20), "line1", drain_s=60)
    hook = WebhookSink(receiver.url, Outbox(work / "queue" / "webhook", 64 << 20), "line1",
                       timeout_s=2, drain_s=60)
    metrics = MetricsSink(("127.0.0.1", 0))
    pipeline = Pipeline(backend, source, settings, [decided, events, mqtt, hook, metrics])
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(pipeline.run()), name="soak")
    faults = itertools.cycle(("source", "broker", "webhook"))
    injected: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    end = start + args.minutes * 60
    next_fault, next_sample = start + args.fault_every_s, start
    runner.start()
    try:
        while time.monotonic() < end and runner.is_alive():
            now = time.monotonic()
            if now >= next_fault:
                kind = next(faults)
                injected.append({"t_s": round(now - start, 1), "fault": kind})
                print(f"[{now - start:7.1f} s] fault: {kind}", flush=True)
                if kind == "source":
                    source.outage(5.0)
                elif kind == "broker":
                    broker.stop()
                    time.sleep(10.0)
                    broker.start()
                else:
                    hook_down.set()
                    time.sleep(10.0)
                    hook_down.clear()
                next_fault += args.fault_every_s
                continue  # a fault may have taken seconds: sample at the real time
            if now >= next_sample:
                with urllib.request.urlopen(metrics.url, timeout=5) as r:
                    r.read()
                samples.append(_sample(now - start, pipeline, decided, events, sub, receiver,
                                       mqtt, hook))
                print(_line(samples[-1]), flush=True)
                next_sample = now + args.sample_s
            time.sleep(0.2)
    finally:
        pipeline.stop.set()
        runner.join()
        source.close()
    got_mqtt = sub.wait_for("/events", len(decided.ids), timeout=60)
    time.sleep(1.0)
    samples.append(_sample(time.monotonic() - start, pipeline, decided, events, sub, receiver,
                           mqtt, hook))
    sub.close()
    return _report(args, samples, injected, result, decided, got_mqtt, receiver, source)


def _sample(t: float, pipeline: Pipeline, decided: Decided, events: EventWriter,
            sub: Subscriber, receiver: Receiver, mqtt: MqttSink,
            hook: WebhookSink) -> dict[str, Any]:
    with receiver.lock:
        hook_ids = {b["id"] for b in receiver.bodies}
    return {"t_s": round(t, 1), **process_facts(), "frames": pipeline.stats.frames,
            "decided": len(decided.ids), "written": events.events.written,
            "mqtt_delivered": len({m["id"] for m in sub.of("/events")}),
            "webhook_delivered": len(hook_ids), "mqtt_queue": mqtt.outbox.depth,
            "webhook_queue": hook.outbox.depth}


def _line(s: dict[str, Any]) -> str:
    return (f"[{s['t_s']:7.1f} s] rss {s['rss_mb']:.1f} MB, fds {s['fds']}, threads "
            f"{s['threads']}, frames {s['frames']}, NG {s['decided']}, written "
            f"{s['written']}, mqtt {s['mqtt_delivered']}, webhook {s['webhook_delivered']}")


def _report(args, samples, injected, result, decided, got_mqtt, receiver,
            source) -> dict[str, Any]:
    steady = [s for s in samples[:-1] if s["t_s"] >= args.warmup_s] or samples[:-1]
    base = steady[0]
    mqtt_ids = [m["id"] for m in got_mqtt]
    hook_ids = [b["id"] for b in receiver.bodies]
    want = set(decided.ids)
    checks = {
        "memory_growth_mb": max(s["rss_mb"] for s in steady) - base["rss_mb"],
        # a leak raises the floor; a request or a reconnect in flight is a passing spike
        "fd_growth": _floor_growth([s["fds"] for s in steady]),
        "thread_growth": _floor_growth([s["threads"] for s in steady]),
        "lost_mqtt": len(want - set(mqtt_ids)),
        "lost_webhook": len(want - set(hook_ids)),
        "duplicates_mqtt": len(mqtt_ids) - len(set(mqtt_ids)),
        "duplicates_webhook": len(hook_ids) - len(set(hook_ids)),
    }
    targets = {
        "memory": checks["memory_growth_mb"] < MEMORY_GROWTH_MB,
        "fds_flat": checks["fd_growth"] <= 0,
        "threads_flat": checks["thread_growth"] <= 0,
        "no_event_lost": checks["lost_mqtt"] == 0 and checks["lost_webhook"] == 0,
    }
    return {"machine": machine_facts(), "minutes": args.minutes, "fps": args.fps,
            "model": args.model or "stand-in (tests' FakeBackend)",
            "fault_every_s": args.fault_every_s, "warmup_s": args.warmup_s,
            "frames": result.get("frames"), "ng_frames": result.get("ng_frames"),
            "clip_loops": source.loops, "reconnects": result.get("reconnects"),
            "events": result.get("events"), "mqtt": result.get("mqtt"),
            "webhook": result.get("webhook"), "faults": injected, "checks": checks,
            "targets": targets, "passed": all(targets.values()), "samples": samples}


def _floor_growth(values: list[int]) -> int:
    """How far the lowest count of the last quarter is above that of the first quarter."""
    k = max(1, len(values) // 4)
    return min(values[-k:]) - min(values[:k])


def markdown(r: dict[str, Any]) -> str:
    c, t = r["checks"], r["targets"]
    ok = {True: "pass", False: "FAIL"}
    lines = [
        f"# Soak: {r['minutes']:g} min, faults every {r['fault_every_s']:g} s",
        "",
        f"Model: {r['model']}; {r['fps']:g} FPS looping clip ({r['clip_loops']} loops); "
        f"{r['frames']} frames, {r['ng_frames']} NG; {len(r['faults'])} faults injected "
        f"({', '.join(sorted({f['fault'] for f in r['faults']}))}); "
        f"{r['machine']['cpu_count']} CPUs, shared. Last row: after the run, queues drained.",
        "",
        "| target | measured (after the warm-up) | |",
        "|---|---|---|",
        f"| memory growth < {MEMORY_GROWTH_MB:g} MB | {c['memory_growth_mb']:.1f} MB | "
        f"{ok[t['memory']]} |",
        f"| open fds flat | floor {c['fd_growth']:+d} | {ok[t['fds_flat']]} |",
        f"| threads flat | floor {c['thread_growth']:+d} | {ok[t['threads_flat']]} |",
        f"| 0 events lost | MQTT {c['lost_mqtt']}, webhook {c['lost_webhook']} lost; "
        f"repeats MQTT {c['duplicates_mqtt']}, webhook {c['duplicates_webhook']} | "
        f"{ok[t['no_event_lost']]} |",
        "",
        "| t (s) | RSS (MB) | fds | threads | frames | NG | written | MQTT | webhook |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    step = max(1, len(r["samples"]) // 30)
    shown = r["samples"][::step]
    if shown[-1] is not r["samples"][-1]:
        shown.append(r["samples"][-1])
    for s in shown:
        lines.append(f"| {s['t_s']:.0f} | {s['rss_mb']:.1f} | {s['fds']} | {s['threads']} | "
                     f"{s['frames']} | {s['decided']} | {s['written']} | "
                     f"{s['mqtt_delivered']} | {s['webhook_delivered']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--fault-every-s", type=float, default=120.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--stem", default="soak")
    args = parser.parse_args()
    # SIGTERM as Ctrl-C: the servers this started are stopped on the way out
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = run(args)
    write_results(args.results, args.stem, report, markdown(report))
    print(markdown(report))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
