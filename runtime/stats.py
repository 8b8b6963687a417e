"""Per-stage latency in constant memory (a station runs for weeks) and the rolling FPS."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

STAGES = ("capture", "preprocess", "infer", "aggregate", "render", "sinks", "latency")
WINDOW = 65536  # percentiles over the newest this many samples per stage


class Ring:
    """The newest WINDOW float samples (seconds)."""

    def __init__(self, size: int = WINDOW) -> None:
        self.values = np.zeros(size, np.float64)
        self.count = 0

    def add(self, value: float) -> None:
        self.values[self.count % self.values.size] = value
        self.count += 1

    def percentiles(self) -> dict[str, float] | None:
        n = min(self.count, self.values.size)
        if n == 0:
            return None
        p50, p99 = np.percentile(self.values[:n], [50, 99])
        mean = float(self.values[:n].mean())
        return {"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "mean_ms": mean * 1e3, "n": n}


class RollingRate:
    """Events per second over the newest `n` completions."""

    def __init__(self, n: int = 30) -> None:
        self.times: deque[float] = deque(maxlen=n)

    def tick(self, now: float | None = None) -> None:
        self.times.append(time.perf_counter() if now is None else now)

    def rate(self) -> float | None:
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return None
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


class StageStats:
    """Thread-safe: each pipeline thread adds the stages it runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rings = {name: Ring() for name in STAGES}
        self.frames = 0
        self.first_start: float | None = None
        self.last_done: float | None = None
        # called with (stage, seconds) on every add, outside the lock: the metrics sink's
        # histograms see every sample, not the ring's last WINDOW
        self.observers: list[Callable[[str, float], None]] = []

    def track(self, stage: str) -> None:
        """A stage beyond STAGES (one sink's time): added to table(), not to format_stages."""
        with self._lock:
            self.rings.setdefault(stage, Ring())

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.rings[stage].add(seconds)
        for observe in self.observers:
            observe(stage, seconds)

    def started(self, t: float) -> None:
        with self._lock:
            if self.first_start is None or t < self.first_start:
                self.first_start = t

    def done(self, t: float) -> None:
        with self._lock:
            self.frames += 1
            self.last_done = t

    def fps(self) -> float | None:
        if not self.frames or self.first_start is None or self.last_done is None:
            return None
        span = self.last_done - self.first_start
        return self.frames / span if span > 0 else None

    def table(self) -> dict[str, Any]:
        with self._lock:
            return {name: ring.percentiles() for name, ring in self.rings.items()}


def format_stages(stages: dict[str, Any]) -> str:
    parts = []
    for name in STAGES:
        p = stages.get(name)
        if p:
            parts.append(f"{name} {p['p50_ms']:.1f}/{p['p99_ms']:.1f}")
    return "p50/p99 ms: " + ", ".join(parts) if parts else "no frames"
