"""`edgeas bench`: backend-only and pipeline numbers per stage, with what they ran on."""

from __future__ import annotations

import json

import pytest
from test_stream_support import edgeas, make_clip, trained_model_path

from edgeas.errors import ConfigError
from edgeas.runtime.bench import parse_size, run_bench

pytest.importorskip("onnxruntime")


def test_bench_command_writes_per_stage_latency_and_throughput(tmp_path_factory, tmp_path):
    model = trained_model_path(tmp_path_factory)
    out = tmp_path / "bench.json"
    run = edgeas("bench", str(model), "--frames", "12", "--frame-size", "320x240",
                 "--json", str(out))
    assert "backend only:" in run.stderr and "pipeline:" in run.stderr
    result = json.loads(out.read_text())
    assert result["input_size"] == [224, 224] and result["frame_size"] == [240, 320]
    assert result["device"] == "cpu" and result["precision"] == "fp32" and result["batch"] == 1
    only, pipe = result["backend_only"], result["pipeline"]
    assert only["frames"] == 12 and only["fps"] > 0
    assert only["latency_per_batch"]["p99_ms"] >= only["latency_per_batch"]["p50_ms"] > 0
    assert pipe["frames"] == 12 and pipe["fps"] > 0
    for stage in ("capture", "preprocess", "infer", "aggregate", "render", "latency"):
        assert pipe["stages"][stage]["n"] == 12
    assert result["pipeline_over_backend"] == pytest.approx(pipe["fps"] / only["fps"])
    assert len(result["machine"]["load_before"]) == 3 and result["machine"]["cpus"] >= 1
    # what the timing ran with, printed and in the JSON (issue 16 part 6)
    session = result["session"]
    assert session["providers"] == ["CPUExecutionProvider"]
    assert session["graph_optimization"] == "enable_all"
    assert session["disabled_optimizers"] == ["SkipLayerNormFusion"]
    assert session["intra_op_threads"] >= 0 and session["execution_mode"] == "sequential"
    assert "ONNX Runtime session: providers CPUExecutionProvider; graph optimisation " \
        "enable_all without SkipLayerNormFusion;" in " ".join(run.stderr.split())


def test_bench_on_a_video(tmp_path_factory, tmp_path):
    model = trained_model_path(tmp_path_factory)
    clip = make_clip(tmp_path / "clip.mp4", "..X.", repeat=4)
    result = run_bench(model, frames=6, video=str(clip.path), device="cpu", warmup=1)
    assert result["pipeline"]["frames"] == 6 and result["frame_size"] == "from video"
    assert result["pipeline"]["source"] == str(clip.path)


def test_bench_arguments():
    assert parse_size("1280x720") == (720, 1280)
    with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
        parse_size("720p")
    with pytest.raises(ConfigError, match=">= 1"):
        run_bench("unused.onnx", frames=0)
