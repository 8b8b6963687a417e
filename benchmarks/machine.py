"""Facts about the benchmarking machine and a wait for it to be quiet: the host is shared,
so every timing records the load around it (shared by every script in benchmarks/)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

QUIET_LOAD = 1.0  # 1-minute load average below which the machine counts as quiet
POLL_S = 15.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float]:
    """1, 5 and 15-minute load averages (empty where /proc is missing)."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _torch_version() -> str | None:
    try:  # int8_bench's ONNX Runtime timings do not need torch to be installed
        import torch
    except ImportError:
        return None
    return torch.__version__


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": _torch_version(),
        "platform": platform.platform(),
    }


class LoadGate:
    """Waits for a quiet machine, with one time budget shared by every wait of the run."""

    def __init__(self, budget_s: float, threshold: float = QUIET_LOAD) -> None:
        self.budget_s = budget_s
        self.threshold = threshold
        self.spent_s = 0.0

    def wait(self) -> dict[str, Any]:
        first = loadavg()
        t0 = time.monotonic()
        now = first
        while now and now[0] >= self.threshold and self.spent_s < self.budget_s:
            pause = min(POLL_S, self.budget_s - self.spent_s)
            time.sleep(pause)
            self.spent_s += pause
            now = loadavg()
        return {
            "load_on_arrival": first,
            "load_at_start": now,
            "waited_s": round(time.monotonic() - t0, 1),
            # False: the budget ran out and the timing ran on a busy machine.
            "quiet_at_start": bool(now) and now[0] < self.threshold,
        }
