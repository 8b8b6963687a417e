"""A station without a model, for the delivery tests: the fake backend of
test_runtime_sinks (bright frames NG, dark ones OK) behind a paced in-memory source, so
that a run lasts long enough for a broker or receiver to fail in the middle of it."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from test_runtime_sinks import BRIGHT, DARK, FakeBackend

from edgeas.postprocess import Settings
from edgeas.runtime.bench import MemorySource
from edgeas.runtime.pipeline import Pipeline
from edgeas.runtime.sink import Sink


class PacedSource(MemorySource):
    """`count` frames, every other one bright (NG), one each `period_s`."""

    def __init__(self, count: int, period_s: float = 0.0, every: int = 2) -> None:
        frames = [BRIGHT] + [DARK] * (every - 1)
        super().__init__(frames, count)
        self.period_s = period_s

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        if self.period_s:
            time.sleep(self.period_s)
        return super().read(timeout)


def pipeline(source: MemorySource, sinks: Sequence[Sink]) -> Pipeline:
    return Pipeline(FakeBackend(), source, Settings(0.5, "override", 0, "fused"), sinks)


def ng_frames(count: int, every: int = 2) -> list[int]:
    """The frame numbers PacedSource makes NG."""
    return [i for i in range(count) if i % every == 0]


def read_events(folder: Path) -> list[dict]:
    path = Path(folder) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
