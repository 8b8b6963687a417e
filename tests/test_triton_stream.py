"""`edgeas stream --model triton://...` against a real Triton Inference Server (PyTriton's
tritonserver 2.51 running the exported tiny model with ONNX Runtime on the CPU; see
tests/triton_server.py): the same events as the local ONNX run, over gRPC and HTTP, a
server restart mid-stream, frames that got no answer, and the refusals that need a
server. Skipped, saying why, where the server's venv (`make triton-server`) is absent."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_stream_support import (
    MIN_AREA,
    THRESHOLD,
    edgeas,
    make_clip,
    read_events,
    trained_model_path,
)
from triton_support import server_python, triton_server

from edgeas.errors import ArtifactError, ConfigError
from edgeas.runtime import command
from edgeas.runtime.backends import open_backend
from edgeas.runtime.command import run_stream
from edgeas.runtime.station import StreamOptions

pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (`triton` extra)")
pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (`triton` extra)")
if server_python() is None:
    pytest.skip("no Triton server venv: run `make triton-server` (or set EDGEAS_TRITON_PYTHON)",
                allow_module_level=True)

PATTERN = "...XX.....XX...."


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return trained_model_path(tmp_path_factory, dynamic_batch=True)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "repo"
    edgeas("export-triton", "--onnx", str(model), "-o", str(repo), "--max-batch", "4")
    with triton_server(repo, "edgeas", plain_name="plain") as running:
        yield running


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "line.mp4", PATTERN)


def _stream(model: str, clip, events) -> dict:
    return run_stream(StreamOptions(model=model, source=str(clip.path), threshold=THRESHOLD,
                                    min_area=MIN_AREA, events_dir=str(events)))


def _comparable(events: list[dict]) -> list[tuple]:
    return [(e["frame"], round(e["score"], 4), e["threshold"], e["regions"]) for e in events]


@pytest.fixture(scope="module")
def local_events(model, clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    summary = _stream(str(model), clip, out)
    events = read_events(out)
    assert [e["frame"] for e in events] == [i for i, c in enumerate(PATTERN) if c == "X"]
    return summary, events


@pytest.mark.parametrize("scheme", ["triton", "tritonhttp"])
def test_a_stream_through_triton_gives_the_local_events(server, clip, local_events, scheme,
                                                        tmp_path):
    address = server.grpc if scheme == "triton" else server.http
    summary = _stream(f"{scheme}://{address}/edgeas", clip, tmp_path)
    local_summary, local = local_events
    assert _comparable(read_events(tmp_path)) == _comparable(local)
    assert summary["frames"] == local_summary["frames"] == len(PATTERN)
    assert summary["ng_frames"] == local_summary["ng_frames"]
    assert summary["unanswered"] == 0 and summary["backend"]["outages"] == 0
    assert summary["backend"]["url"] == f"{scheme}://{address}/edgeas"


def test_maps_equal_onnx_runtime_in_batches_past_max_batch(server, model):
    remote, local = open_backend(f"triton://{server.grpc}/edgeas"), open_backend(model)
    try:
        x = np.random.default_rng(0).standard_normal((6, 3, 224, 224)).astype(np.float32)
        for got, want in zip(remote.infer(x), local.infer(x)):  # 6 > max_batch_size 4
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert remote.record.to_json() == local.record.to_json()
    finally:
        remote.close()
        local.close()


@pytest.mark.parametrize("scheme", ["triton", "tritonhttp"])
def test_a_server_restart_mid_stream_loses_no_event(server, clip, local_events, tmp_path,
                                                    monkeypatch, scheme):
    """Frame 6 is read only once the server is down; it comes back while the station
    retries, and every frame is answered (the events equal the local run's)."""
    opened = command.open_source
    restarted = threading.Event()

    def open_source(spec):
        source = opened(spec)
        read, seen = source.read, [0]

        def read_restarting(timeout: float = 1.0):
            seen[0] += 1
            if seen[0] == 6:
                server.stop()
                threading.Thread(target=lambda: (server.start(), restarted.set())).start()
            return read(timeout)

        source.read = read_restarting
        return source

    monkeypatch.setattr(command, "open_source", open_source)
    address = server.grpc if scheme == "triton" else server.http
    summary = _stream(f"{scheme}://{address}/edgeas?outage=150", clip, tmp_path)
    assert restarted.wait(150)
    assert summary["backend"]["outages"] == 1 and summary["unanswered"] == 0
    assert summary["frames"] == len(PATTERN)
    assert _comparable(read_events(tmp_path)) == _comparable(local_events[1])


def test_frames_without_an_answer_are_counted_and_the_stream_goes_on(server, clip, tmp_path,
                                                                     monkeypatch):
    opened = command.open_source

    def open_source(spec):
        server.stop()  # after the backend's start-up checks, before the first frame
        return opened(spec)

    monkeypatch.setattr(command, "open_source", open_source)
    try:
        summary = _stream(f"triton://{server.grpc}/edgeas?outage=0.5", clip, tmp_path)
    finally:
        server.start()
    assert summary["unanswered"] == len(PATTERN) and summary["frames"] == 0
    assert summary["backend"]["unanswered_batches"] == len(PATTERN)
    assert read_events(tmp_path) == []


@pytest.mark.parametrize("scheme", ["triton", "tritonhttp"])
def test_unknown_model_and_model_without_metadata_are_refused(server, scheme):
    address = server.grpc if scheme == "triton" else server.http
    with pytest.raises(ConfigError, match="has no model 'nope' ready"):
        open_backend(f"{scheme}://{address}/nope")
    with pytest.raises(ArtifactError, match="'plain' carries no edgeas metadata"):
        open_backend(f"{scheme}://{address}/plain")


def test_cli_errors_name_the_model(server, tmp_path):
    run = edgeas("stream", "--model", f"triton://{server.grpc}/nope", str(tmp_path),
                 check=False, timeout=120)
    assert run.returncode == 2
    assert [ln for ln in run.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: triton://{server.grpc}/nope: the server at {server.grpc} has no model 'nope' "
        "ready (it did not list its models)"]


def test_bench_times_a_served_model(server):
    from edgeas.runtime.bench import run_bench

    result = run_bench(f"triton://{server.grpc}/edgeas", frames=4, batch=2, warmup=1)
    assert result["backend_only"]["frames"] == 4 and result["pipeline"]["frames"] == 4
    assert result["url"] == f"triton://{server.grpc}/edgeas" and result["max_batch_size"] == 4


def test_a_thin_station_needs_neither_torch_nor_onnx_runtime(server, clip, local_events,
                                                             tmp_path):
    from blocked_python import edgeas_without

    run = edgeas_without(("torch", "tensorrt", "onnxruntime"), "stream", "--model",
                         f"triton://{server.grpc}/edgeas", "--video", str(clip.path),
                         "--threshold", str(THRESHOLD), "--min-area", str(MIN_AREA),
                         "--events", str(tmp_path), timeout=300)
    assert run.returncode == 0, run.stderr
    assert _comparable(read_events(tmp_path)) == _comparable(local_events[1])
