"""`--on-ng CMD`: run a command for each NG decision, a reject gate's or a PLC bridge's hook.

The command gets the event (the message MQTT and the webhook send, runtime/delivery.py)
as JSON on stdin, and its id, frame and score in EDGEAS_EVENT_ID, EDGEAS_FRAME and
EDGEAS_SCORE. It is split like a shell line (shlex) but run without a shell, so
nothing in an event is ever interpreted by one.

At most one runs per source at a time: an actuator that is still moving must not be
told twice, and a hung command must not pile up processes. An NG frame decided while
the previous command runs is counted as `busy` and not acted on. A command that
outlives `timeout_s` is killed with its whole process group. The pipeline only hands
the event over: the command runs on the sink's own thread per source.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from typing import Any

from edgeas.errors import ConfigError
from edgeas.runtime.delivery import event_message
from edgeas.runtime.sink import FrameResult, Sink, SinkContext
from edgeas.runtime.sources import redact

log = logging.getLogger("edgeas.stream")
DEFAULT_TIMEOUT_S = 5.0


def parse_command(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"--on-ng {command!r}: {exc}") from None
    if not argv:
        raise ConfigError("--on-ng: the command is empty", hint="e.g. --on-ng 'reject-gate.sh'")
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"--on-ng {command!r}: '{argv[0]}' is not an executable file or "
                          "on PATH", hint="give its full path, and make it executable")
    return argv


class _Runner:
    """The one command of one source: `busy` from the hand-over until it has ended."""

    def __init__(self, sink: OnNgSink, stream: int) -> None:
        self.sink = sink
        self.busy = False
        self.job: tuple[bytes, dict[str, str]] | None = None
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=f"edgeas-on-ng-{stream}",
                                       daemon=True)
        self.thread.start()

    def offer(self, data: bytes, env: dict[str, str]) -> bool:
        with self.cond:
            if self.busy:
                return False
            self.busy, self.job = True, (data, env)
            self.cond.notify()
            return True

    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.job is not None or self.stopping)
                if self.job is None:
                    return
                data, env = self.job
            try:
                self.sink.execute(data, env)
            finally:
                with self.cond:
                    self.job, self.busy = None, False
                    self.cond.notify_all()

    def stop(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: not self.busy, timeout)
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=timeout + 1)


class OnNgSink(Sink):
    name = "on_ng"

    def __init__(self, command: str, station: str,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"--on-ng-timeout must be > 0 seconds, got {timeout_s}")
        self.command, self.argv = command, parse_command(command)
        self.station, self.timeout_s = station, float(timeout_s)
        self.source_names: list[str] = []
        self.files = False
        self.runners: dict[int, _Runner] = {}
        self.ran = self.ok = self.failed = self.timed_out = self.busy = 0
        self.last_pid: int | None = None
        self._lock = threading.Lock()

    def open(self, context: SinkContext) -> None:
        self.source_names = [s.name for s in context.sources] or [redact(context.source)]
        self.files = bool(context.event_stores)

    def on_event(self, result: FrameResult) -> None:
        runner = self.runners.get(result.stream)
        if runner is None:
            runner = self.runners[result.stream] = _Runner(self, result.stream)
        names = self.source_names or [""]
        name = names[min(result.stream, len(names) - 1)]
        msg = event_message(result, self.station, name, self.files)
        env = {"EDGEAS_EVENT_ID": msg["id"], "EDGEAS_FRAME": str(msg["frame"]),
               "EDGEAS_SCORE": repr(msg["score"]), "EDGEAS_STATION": self.station}
        if not runner.offer(json.dumps(msg).encode(), env):
            with self._lock:
                self.busy += 1
            log.debug("--on-ng: frame %d NG while the command still runs: not acted on",
                      result.index)

    def execute(self, data: bytes, env: dict[str, str]) -> None:
        """Run the command once (on a runner's thread)."""
        try:
            # its own process group, so that a timeout kills what it started too
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env={**os.environ, **env}, start_new_session=True)
        except OSError as exc:
            log.error("--on-ng %s: cannot run it: %s", self.command, exc)
            with self._lock:
                self.failed += 1
            return
        self.last_pid = proc.pid
        with self._lock:
            self.ran += 1
        try:
            _, err = proc.communicate(data, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it ended just now
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            log.warning("--on-ng %s: killed after %g s (event %s)", self.command,
                        self.timeout_s, env["EDGEAS_EVENT_ID"])
            with self._lock:
                self.timed_out += 1
            return
        with self._lock:
            if proc.returncode == 0:
                self.ok += 1
                return
            self.failed += 1
        tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        log.warning("--on-ng %s: exit %d for event %s%s", self.command, proc.returncode,
                    env["EDGEAS_EVENT_ID"], f": {tail[0]}" if tail else "")

    def close(self, error: BaseException | None = None) -> None:
        """Let the commands in flight finish (each within its timeout), then stop."""
        for runner in self.runners.values():
            runner.stop(self.timeout_s + 1)

    def summary(self) -> dict[str, Any]:
        return {"on_ng": {"command": self.command, "ran": self.ran, "ok": self.ok,
                          "failed": self.failed, "timed_out": self.timed_out,
                          "busy": self.busy}}
