"""NG events: fields of interfaces.md, PNGs beside the log, the disk budget (oldest first),
a disk that refuses writes, and a writer thread that loses nothing on close."""

from __future__ import annotations

import datetime
import errno
import json
import logging

import cv2
import numpy as np
import pytest

from edgeas.errors import ConfigError
from edgeas.runtime import events as events_mod
from edgeas.runtime.events import EventLog, EventWriter

FIELDS = {"time", "frame", "source", "score", "threshold", "regions", "image", "mask"}


def _frame(seed: int, hw=(224, 224)) -> np.ndarray:
    # noise compresses badly: each PNG is ~150 kB, so budgets fill after a few events
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def _mask(hw=(224, 224)) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    m[50:80, 60:100] = 1
    return m


def _lines(directory) -> list[dict]:
    return [json.loads(s) for s in (directory / "events.jsonl").read_text().splitlines()]


def _consistent(directory) -> list[dict]:
    """Every line's files exist, and every PNG belongs to a line."""
    recs = _lines(directory)
    named = {r["image"] for r in recs} | {r["mask"] for r in recs}
    on_disk = {p.name for p in directory.glob("*.png")}
    assert named == on_disk
    return recs


def test_an_event_has_the_interface_fields_and_readable_pngs(tmp_path):
    log = EventLog(tmp_path / "ev", 10, source="file://clip.mp4")
    frame = _frame(0, (240, 320))
    rec = log.record(7, frame, _mask((240, 320)), 0.91, 0.5, [[60, 50, 40, 30]])
    assert set(rec) == FIELDS
    (line,) = _consistent(tmp_path / "ev")
    assert line == rec
    assert line["frame"] == 7 and line["source"] == "file://clip.mp4"
    assert line["regions"] == [[60, 50, 40, 30]] and line["threshold"] == 0.5
    when = datetime.datetime.fromisoformat(line["time"])
    assert when.utcoffset() == datetime.timedelta(0)
    img = cv2.imread(str(tmp_path / "ev" / line["image"]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(img, frame)
    mask = cv2.imread(str(tmp_path / "ev" / line["mask"]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (240, 320) and set(np.unique(mask)) == {0, 255}
    assert not list((tmp_path / "ev").glob(".*.tmp"))  # nothing half-written left


def test_budget_deletes_the_oldest_events_first(tmp_path):
    budget_mb = 1.0
    log = EventLog(tmp_path, budget_mb)
    for i in range(20):
        log.record(i, _frame(i), _mask(), 0.9, 0.5, [[60, 50, 40, 30]])
        size = sum(p.stat().st_size for p in tmp_path.iterdir())
        assert size <= budget_mb * 2**20
    recs = _consistent(tmp_path)
    frames = [r["frame"] for r in recs]
    assert frames == list(range(20 - len(frames), 20))  # the newest survive, in order
    assert 2 <= len(frames) < 20 and log.deleted == 20 - len(frames)


def test_a_new_run_counts_and_deletes_the_previous_runs_events(tmp_path):
    first = EventLog(tmp_path, 1.0)
    for i in range(4):
        first.record(i, _frame(i), _mask(), 0.9, 0.5, [])
    second = EventLog(tmp_path, 1.0)
    assert second.total_bytes == sum(p.stat().st_size for p in tmp_path.iterdir())
    for i in range(100, 106):
        second.record(i, _frame(i), _mask(), 0.9, 0.5, [])
    frames = [r["frame"] for r in _consistent(tmp_path)]
    assert frames[-1] == 105 and 0 not in frames  # the oldest (previous run) went first


def test_a_budget_smaller_than_one_event_keeps_only_the_newest(tmp_path, caplog):
    log = EventLog(tmp_path, 0.01)
    with caplog.at_level(logging.WARNING, logger="edgeas.stream"):
        for i in range(3):
            log.record(i, _frame(i), _mask(), 0.9, 0.5, [])
    assert [r["frame"] for r in _consistent(tmp_path)] == [2]
    assert "smaller than one event" in caplog.text


def test_a_disk_that_refuses_writes_makes_room_or_reports(tmp_path, monkeypatch, caplog):
    log = EventLog(tmp_path, 100)
    for i in range(4):
        log.record(i, _frame(i), _mask(), 0.9, 0.5, [])
    real_write = events_mod.atomic_write_bytes
    calls = {"n": 0}

    def fake_full_disk_once(path, data):  # the disk is full for the first write only
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(events_mod, "atomic_write_bytes", fake_full_disk_once)
    assert log.record(4, _frame(4), _mask(), 0.9, 0.5, []) is not None
    frames = [r["frame"] for r in _consistent(tmp_path)]
    assert frames[-1] == 4 and frames[0] > 0  # older events made room

    def fake_full_disk_always(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(events_mod, "atomic_write_bytes", fake_full_disk_always)
    with caplog.at_level(logging.ERROR, logger="edgeas.stream"):
        assert log.record(5, _frame(5), _mask(), 0.9, 0.5, []) is None
    assert log.failed == 1 and "No space left" in caplog.text
    assert 5 not in [r["frame"] for r in _consistent(tmp_path)]


def test_the_writer_thread_writes_every_queued_event_on_close(tmp_path):
    writer = EventWriter(EventLog(tmp_path, 100), maxsize=2)
    for i in range(12):
        writer.submit(i, _frame(i, (64, 64)), _mask((64, 64)), 0.8, 0.5, [[1, 2, 3, 4]])
    writer.close()
    assert [r["frame"] for r in _consistent(tmp_path)] == list(range(12))
    assert [r["frame"] for r in writer.recent] == list(range(11, 1, -1))


def test_bad_budget_and_unwritable_folder(tmp_path):
    with pytest.raises(ConfigError, match="budget_mb must be > 0"):
        EventLog(tmp_path, 0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(Exception, match="cannot create the events folder"):
        EventLog(blocker / "events", 1)
