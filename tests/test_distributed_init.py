"""Under torchrun each rank takes its LOCAL_RANK GPU and NCCL when CUDA is there, gloo otherwise.

No process is started: CUDA availability, set_device and the process-group init are mocked,
so this runs on any CPU machine.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist


class _Calls:
    def __init__(self) -> None:
        self.groups: list[dict] = []
        self.devices: list[int] = []


@pytest.fixture
def calls(monkeypatch) -> _Calls:
    record = _Calls()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: record.groups.append(kw))
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: record.devices.append(index))
    return record


def test_cuda_ranks_take_their_local_gpu_and_nccl(calls, monkeypatch):
    from edgeas.train.distributed import DistInfo, init_from_env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    info, device = init_from_env()
    assert info == DistInfo(rank=3, world=4, local_rank=1)
    assert device == torch.device("cuda", 1)
    assert calls.devices == [1]
    assert calls.groups == [{"backend": "nccl", "rank": 3, "world_size": 4}]


def test_cpu_ranks_use_gloo(calls, monkeypatch):
    from edgeas.train.distributed import init_from_env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info, device = init_from_env()
    assert device == torch.device("cpu")
    assert calls.devices == []
    assert calls.groups == [{"backend": "gloo", "rank": 3, "world_size": 4}]


def test_a_pinned_cpu_device_stays_on_gloo_with_cuda_present(calls, monkeypatch):
    from edgeas.train.distributed import init_from_env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _, device = init_from_env(torch.device("cpu"))
    assert device == torch.device("cpu")
    assert calls.groups[0]["backend"] == "gloo"


def test_one_process_joins_no_group(calls, monkeypatch):
    from edgeas.train.distributed import init_from_env

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info, _ = init_from_env()
    assert not info.enabled and calls.groups == []


class _StopAfterInit(Exception):
    pass


def test_train_command_joins_nccl_under_torchrun_with_cuda(calls, monkeypatch, tmp_path):
    """The bug: train/run.py handed a CPU device to the init, so GPUs always got gloo."""
    import edgeas.train.data as data_module
    from edgeas.train.run import train_command

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # Stop right after the process group is joined: the rest needs a data set and a GPU.
    seen: list[int] = []

    def stop(_data):
        seen.append(len(calls.groups))
        raise _StopAfterInit

    monkeypatch.setattr(data_module, "index_dataset", stop)
    with pytest.raises(_StopAfterInit):
        train_command("tiny", tmp_path / "data", tmp_path / "run")
    assert seen == [1]
    assert calls.devices == [1]
    assert calls.groups == [{"backend": "nccl", "rank": 3, "world_size": 4}]
