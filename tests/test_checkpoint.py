from __future__ import annotations

import os

import pytest
import torch

from edgeas.errors import ArtifactError, ConfigError
from edgeas.train.checkpoint import load_checkpoint, save_checkpoint


class _RunsCode:
    """Unpickling this calls os.system: what weights_only=True must refuse."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_round_trip(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "config": {"a": 1}})
    data = load_checkpoint(path)
    assert torch.equal(data["model"]["w"], torch.ones(2)) and data["config"] == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


def test_checkpoint_with_a_pickled_callable_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "edgeas-checkpoint", "schema": 1, "payload": _RunsCode()}, path)
    with pytest.raises(ArtifactError) as err:
        load_checkpoint(path)
    assert "refused" in str(err.value) and str(path) in str(err.value)


def test_not_an_edgeas_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ArtifactError, match="not an edgeas checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ConfigError, match="not found") as missing:  # a typed name: exit 2
        load_checkpoint(tmp_path / "missing.pt")
    assert missing.value.exit_code == 2


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"v": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"v": 2})
    assert load_checkpoint(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
