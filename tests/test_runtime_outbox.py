"""The on-disk queue under MQTT and the webhook: order kept across a reopen (a station
restart), half-written files of a crash ignored, delete only on ack, oldest dropped
beyond the budget."""

from __future__ import annotations

import pytest

from edgeas.errors import ConfigError
from edgeas.runtime.outbox import Outbox


def test_order_survives_a_reopen_and_a_crash_leftover_is_swept(tmp_path):
    box = Outbox(tmp_path, 1 << 20)
    assert box.put_many([b"a", b"b"]) == [1, 2] and box.put(b"c") == 3
    seq, data = box.peek(0)
    assert (seq, data) == (1, b"a")
    box.ack(seq)
    (tmp_path / ".000000000004.tmp").write_bytes(b"half")  # a write a crash cut short
    again = Outbox(tmp_path, 1 << 20)  # the next run
    assert again.carried == 2 and again.depth == 2
    assert not (tmp_path / ".000000000004.tmp").exists()
    assert again.put(b"d") == 4  # numbering carries on after the highest kept
    got = []
    while (item := again.peek(0)) is not None:
        got.append(item[1])
        again.ack(item[0])
    assert got == [b"b", b"c", b"d"] and again.depth == 0 and again.bytes == 0
    assert not list(tmp_path.iterdir())


def test_a_message_stays_until_acknowledged(tmp_path):
    box = Outbox(tmp_path, 1 << 20)
    box.put(b"x")
    assert box.peek(0) == box.peek(0) == (1, b"x")  # peeking twice is not delivering
    assert box.peek(0.01) is not None and box.depth == 1
    box.ack(1)
    box.ack(1)  # a second ack (the budget dropped it, a repeat) is harmless
    assert box.peek(0.01) is None and box.acked == 1


def test_the_budget_drops_the_oldest(tmp_path):
    box = Outbox(tmp_path, 100)
    for i in range(10):
        box.put(bytes([65 + i]) * 30)
    assert box.bytes <= 100 and box.depth == 3 and box.dropped == 7
    assert box.peek(0)[1] == b"H" * 30  # the newest three are kept
    with pytest.raises(ConfigError, match="budget"):
        Outbox(tmp_path / "other", 0)


def test_a_message_deleted_behind_its_back_is_skipped(tmp_path):
    box = Outbox(tmp_path, 1 << 20)
    box.put_many([b"a", b"b"])
    (tmp_path / "000000000001.json").unlink()  # an operator cleaning up by hand
    assert box.peek(0) == (2, b"b") and box.dropped == 1 and box.bytes == 1
