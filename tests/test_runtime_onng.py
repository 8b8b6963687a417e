"""--on-ng CMD with small shell scripts: the event JSON on stdin and its id in the
environment, never two runs of one source at a time (NG frames meanwhile are counted
busy), a command that hangs is killed with its children after the timeout, and a
command that is not there is a one-line error."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from station_fakes import PacedSource, ng_frames, pipeline

from edgeas.errors import ConfigError
from edgeas.runtime.onng import OnNgSink
from edgeas.runtime.sinks import build_sinks
from edgeas.runtime.station import load_station


def _script(tmp_path, body: str) -> str:
    path = tmp_path / "hook.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_each_ng_decision_runs_the_command_with_the_event_on_stdin(tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    hook = _script(tmp_path, f'cat > "{out}/$EDGEAS_EVENT_ID.json"\n')
    sink = OnNgSink(hook, "line1", timeout_s=5)
    # frames slower than a shell start, so that none is busy
    summary = pipeline(PacedSource(8, period_s=0.3), [sink]).run()
    got = sorted((json.loads(p.read_text()) for p in out.iterdir()), key=lambda m: m["frame"])
    assert [m["frame"] for m in got] == ng_frames(8)
    assert all(m["station"] == "line1" and m["id"] in {p.stem for p in out.iterdir()}
               for m in got)
    s = summary["on_ng"]
    assert s["ran"] == s["ok"] == 4 and s["busy"] == 0 and s["failed"] == 0


def test_never_more_than_one_in_flight_per_source(tmp_path):
    log = tmp_path / "log"
    hook = _script(tmp_path, f'echo "start $(date +%s.%N)" >> "{log}"\nsleep 0.3\n'
                             f'echo "end $(date +%s.%N)" >> "{log}"\n')
    sink = OnNgSink(hook, "line1", timeout_s=5)
    summary = pipeline(PacedSource(40, period_s=0.02), [sink]).run()
    s = summary["on_ng"]
    assert s["ran"] >= 1 and s["busy"] >= 1 and s["ran"] + s["busy"] == 20
    marks = [line.split() for line in log.read_text().splitlines()]
    assert len(marks) == 2 * s["ran"]
    # strictly alternating start/end: no run began before the previous one had ended
    assert [m[0] for m in marks] == ["start", "end"] * s["ran"]
    times = [float(m[1]) for m in marks]
    assert times == sorted(times)


def test_a_hung_command_is_killed_with_its_children_after_the_timeout(tmp_path):
    pids = tmp_path / "pids"
    hook = _script(tmp_path, f'sleep 30 &\necho $! >> "{pids}"\nwait\n')
    sink = OnNgSink(hook, "line1", timeout_s=0.5)
    t0 = time.monotonic()
    summary = pipeline(PacedSource(1), [sink]).run()
    assert time.monotonic() - t0 < 5
    assert summary["on_ng"]["timed_out"] == 1 and summary["on_ng"]["ok"] == 0
    child = int(pids.read_text().split()[0])
    time.sleep(0.2)
    assert not _running(child)  # the `sleep 30` it started is gone too


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan waits for an init that may not reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_failing_command_is_counted_and_the_run_goes_on(tmp_path):
    hook = _script(tmp_path, 'echo "gate offline" >&2\nexit 3\n')
    summary = pipeline(PacedSource(4, period_s=0.3), [OnNgSink(hook, "s", 5)]).run()
    assert summary["on_ng"]["failed"] == 2 and summary["frames"] == 4


@pytest.mark.parametrize("command, message", [
    ("", "empty"), ("/no/such/gate.sh --open", "not an executable"),
    ("gate 'unclosed", "No closing quotation"),
])
def test_bad_commands_are_one_line_errors(command, message):
    with pytest.raises(ConfigError, match=message):
        OnNgSink(command, "s")


def test_the_station_file_sets_the_command_and_its_timeout(tmp_path):
    hook = _script(tmp_path, "exit 0\n")
    station = tmp_path / "station.yaml"
    station.write_text(f"model: m.onnx\non_ng: {{command: '{hook} --pulse 200', "
                       "timeout_s: 1.5}\n")
    options = load_station(station)
    (sink,) = build_sinks(options, PacedSource(1))
    assert sink.argv == [hook, "--pulse", "200"] and sink.timeout_s == 1.5
