"""Soak: a station left running with faults injected, watched for leaks and lost events.

    python benchmarks/soak.py [--minutes 20] [--model MODEL.onnx] [--fps 15]
        [--fault-every-s 120] [--warmup-s 60] [--sample-s 10] [--results benchmarks/results]

The station runs in a process of its own (benchmarks/soak_station.py: a looping clip,
the model or, without --model, the tests' stand-in backend, and the sinks `edgeas
stream` builds: events, MQTT, webhook, metrics), so that what is measured is the
station's alone. This process runs the servers (the tests' own, tests/brokers.py, on
127.0.0.1: a Mosquitto, an MQTT subscriber, an HTTP receiver) and every
`--fault-every-s` injects the next fault in turn:

    source    the clip goes dark for 5 s (SIGUSR1 to the station: reads time out, state
              `reconnecting`, then a reconnect is counted); simulated in the station,
              a real RTSP server stopped and started is tests/test_stream_rtsp*.py's
    broker    Mosquitto is stopped for 10 s, then started again (its persistence keeps
              the subscriber's session, as a real broker's would)
    webhook   the receiver answers 503 to everything for 10 s

No fault starts in the last 30 s. Every `--sample-s` it records the station's resident
memory, open file descriptors and threads (from /proc), frames and NG frames (scraped
from its /metrics), events written (events.jsonl) and delivered (unique ids at the
subscriber and the receiver). Then the station gets SIGTERM, as systemd would send, and
the targets are checked: memory growth < 20 MB after the warm-up, fd and thread counts
flat after it (the floor of the last quarter of the samples not above that of the first
quarter: a leak raises the floor, a request or reconnect in flight is only a spike),
every event written delivered to both receivers (still queued on disk counts as not
delivered). The last sample is taken after the stop. Writes results/soak.json and
soak.md (`--stem` to write elsewhere, e.g. a short smoke run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from brokers import MOSQUITTO, Mosquitto, Receiver, Subscriber, free_port  # noqa: E402
from machine import machine_facts  # noqa: E402
from publish import write_results  # noqa: E402
from station_fakes import BRIGHT, DARK  # noqa: E402

MEMORY_GROWTH_MB = 20.0
QUIET_END_S = 30.0  # no fault this close to the end: what is delivered is then final


def make_clip(path: Path, frames: int = 60) -> None:
    """An MJPG clip, one frame in six bright (NG for the stand-in backend)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
    for i in range(frames):
        writer.write(BRIGHT if i % 6 == 0 else DARK)
    writer.release()


def process_facts(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    field = {k: v.split()[0] for k, _, v in (line.partition(":") for line in status)
             if v.split()}
    return {"rss_mb": int(field["VmRSS"]) / 1024, "threads": int(field["Threads"]),
            "fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


def scrape(port: int) -> dict[str, int]:
    """frames and NG frames from the station's own /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {"frames": 0, "ng": 0}
    for line in text.splitlines():
        if line.startswith("edgeas_frames_total{"):
            out["frames"] = int(float(line.split()[-1]))
        elif line.startswith("edgeas_ng_frames_total{"):
            out["ng"] = int(float(line.split()[-1]))
    return out


def written_ids(work: Path) -> list[str]:
    path = work / "events" / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["image"].rsplit(".", 1)[0] for line in path.read_text().splitlines()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    if MOSQUITTO is None:
        sys.exit("mosquitto is not installed (apt-get install mosquitto)")
    work = Path(tempfile.mkdtemp(prefix="edgeas-soak-"))
    make_clip(work / "clip.avi")
    broker = Mosquitto(work / "broker")
    hook_down = threading.Event()
    receiver = Receiver(fail=lambda n: hook_down.is_set())
    station: subprocess.Popen | None = None
    try:
        sub = Subscriber(broker.port, "soak/line1/events")
        metrics_port = free_port()
        cmd = [sys.executable, str(HERE / "soak_station.py"), str(work / "clip.avi"),
               str(work), str(broker.port), receiver.url, str(metrics_port), str(args.fps)]
        # its output to a file: a pipe nobody reads for 20 minutes would fill and block it
        with (work / "station.log").open("w") as log:
            station = subprocess.Popen(cmd + ([args.model] if args.model else []),
                                       stdout=log, stderr=subprocess.STDOUT, text=True)
        report = _soak(args, work, broker, receiver, hook_down, sub, station, metrics_port)
        sub.close()
        return report
    finally:  # also when interrupted: no station, broker or folder left behind
        if station is not None and station.poll() is None:
            station.kill()
        receiver.close()
        broker.close()
        shutil.rmtree(work, ignore_errors=True)


def _soak(args, work, broker, receiver, hook_down, sub, station, metrics_port) -> dict:
    for _ in range(300):  # the station is up once its /metrics answers
        if station.poll() is not None:
            raise RuntimeError(f"the station did not start (exit {station.returncode}): "
                               + (work / "station.log").read_text()[-2000:])
        try:
            scrape(metrics_port)
            break
        except OSError:
            time.sleep(0.2)
    faults = itertools.cycle(("source", "broker", "webhook"))
    injected: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    end = start + args.minutes * 60
    next_fault, next_sample = start + args.fault_every_s, start

    def sample() -> None:
        with receiver.lock:
            hook_ids = {b["id"] for b in receiver.bodies}
        counts = scrape(metrics_port) if station.poll() is None else {}
        samples.append({"t_s": round(time.monotonic() - start, 1),
                        **(process_facts(station.pid) if station.poll() is None else {}),
                        "frames": counts.get("frames"), "decided": counts.get("ng"),
                        "written": len(written_ids(work)),
                        "mqtt_delivered": len({m["id"] for m in sub.of("/events")}),
                        "webhook_delivered": len(hook_ids)})
        print(_line(samples[-1]), flush=True)

    while time.monotonic() < end:
        if station.poll() is not None:
            raise RuntimeError(f"the station ended by itself (exit {station.returncode})")
        now = time.monotonic()
        if now >= next_fault and now < end - QUIET_END_S:
            kind = next(faults)
            injected.append({"t_s": round(now - start, 1), "fault": kind})
            print(f"[{now - start:7.1f} s] fault: {kind}", flush=True)
            if kind == "source":
                station.send_signal(signal.SIGUSR1)
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
            sample()
            next_sample = now + args.sample_s
        time.sleep(0.2)
    station.send_signal(signal.SIGTERM)
    station.wait(timeout=120)
    out = (work / "station.log").read_text()
    summary = json.loads(out.split("SUMMARY ", 1)[1]) if "SUMMARY " in out else {}
    ids = written_ids(work)
    sub.wait_for("/events", len(ids), timeout=30)
    mqtt_ids = [m["id"] for m in sub.of("/events")]
    with receiver.lock:
        hook_ids = [b["id"] for b in receiver.bodies]
    samples.append({"t_s": round(time.monotonic() - start, 1), "frames": summary.get("frames"),
                    "decided": summary.get("ng_frames"), "written": len(ids),
                    "mqtt_delivered": len(set(mqtt_ids)),
                    "webhook_delivered": len(set(hook_ids))})
    return _report(args, samples, injected, summary, ids, mqtt_ids, hook_ids, out)


def _line(s: dict[str, Any]) -> str:
    return (f"[{s['t_s']:7.1f} s] rss {s.get('rss_mb', 0):.1f} MB, fds {s.get('fds')}, "
            f"threads {s.get('threads')}, frames {s['frames']}, NG {s['decided']}, written "
            f"{s['written']}, mqtt {s['mqtt_delivered']}, webhook {s['webhook_delivered']}")


def _report(args, samples, injected, summary, ids, mqtt_ids, hook_ids,
            log: str) -> dict[str, Any]:
    steady = [s for s in samples[:-1] if s["t_s"] >= args.warmup_s] or samples[:-1]
    want = set(ids)
    checks = {
        "memory_growth_mb": max(s["rss_mb"] for s in steady) - steady[0]["rss_mb"],
        # a leak raises the floor; a request or a reconnect in flight is a passing spike
        "fd_growth": _floor_growth([s["fds"] for s in steady]),
        "thread_growth": _floor_growth([s["threads"] for s in steady]),
        "decided_not_written": (summary.get("ng_frames") or 0) - len(ids),
        "lost_mqtt": len(want - set(mqtt_ids)),
        "lost_webhook": len(want - set(hook_ids)),
        "duplicates_mqtt": len(mqtt_ids) - len(set(mqtt_ids)),
        "duplicates_webhook": len(hook_ids) - len(set(hook_ids)),
    }
    targets = {
        "memory": checks["memory_growth_mb"] < MEMORY_GROWTH_MB,
        "fds_flat": checks["fd_growth"] <= 0,
        "threads_flat": checks["thread_growth"] <= 0,
        "no_event_lost": checks["lost_mqtt"] == checks["lost_webhook"] == 0
        and checks["decided_not_written"] == 0,
    }
    return {"machine": machine_facts(), "minutes": args.minutes, "fps": args.fps,
            "model": args.model or "stand-in (tests' FakeBackend)",
            "fault_every_s": args.fault_every_s, "warmup_s": args.warmup_s,
            "frames": summary.get("frames"), "ng_frames": summary.get("ng_frames"),
            "clip_loops": summary.get("clip_loops"), "reconnects": summary.get("reconnects"),
            "events": summary.get("events"), "mqtt": summary.get("mqtt"),
            "webhook": summary.get("webhook"), "faults": injected, "checks": checks,
            "station_warnings": [line for line in log.splitlines() if " WARNING " in line
                                 or " ERROR " in line][-40:],
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
        f"{r['machine']['cpu_count']} CPUs, shared. The station in its own process; the last "
        "row is after its SIGTERM stop.",
        "",
        "| target | measured (after the warm-up) | |",
        "|---|---|---|",
        f"| memory growth < {MEMORY_GROWTH_MB:g} MB | {c['memory_growth_mb']:.1f} MB | "
        f"{ok[t['memory']]} |",
        f"| open fds flat | floor {c['fd_growth']:+d} | {ok[t['fds_flat']]} |",
        f"| threads flat | floor {c['thread_growth']:+d} | {ok[t['threads_flat']]} |",
        f"| 0 events lost | MQTT {c['lost_mqtt']}, webhook {c['lost_webhook']} lost; "
        f"repeats MQTT {c['duplicates_mqtt']}, webhook {c['duplicates_webhook']}; "
        f"decided but not written {c['decided_not_written']} | "
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
        rss = f"{s['rss_mb']:.1f}" if "rss_mb" in s else "-"
        lines.append(f"| {s['t_s']:.0f} | {rss} | {s.get('fds', '-')} | {s.get('threads', '-')} | "
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
