"""The pipeline check of `make gpu-check`: edgeas's TensorRTBackend, with its real CUDA
layer, through the real 3-thread Pipeline (fused aggregation on the GPU), around the
STAND-IN TensorRT of gpu_standin_tensorrt.py; compared frame by frame with the ONNX
Runtime backend on the same images.

The model is the tiny preset, random-init, exported here with a dynamic batch and
`--with-map` (so the engine also has `anomaly_map` and `score`, which must be bound too).
Frames: the built-in data set's test images as a folder source, in batches of 4, 4 and 2.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SCORE_TOLERANCE = 1e-4  # ORT on both sides; the GPU's fused map is within 1e-5 of numpy's


def _export(folder: Path) -> Path:
    from edgeas.export.command import random_init_model
    from edgeas.export.onnx_export import export_model

    model, record = random_init_model("tiny")
    result = export_model(model, record, batch=None, with_map=True, images=2)
    path = folder / "tiny.onnx"
    path.write_bytes(result.model.SerializeToString())
    return path


def _frames(folder: Path, count: int) -> Path:
    from edgeas.train.synth import make_dataset

    make_dataset(folder / "data", per_class=8, seed=0, size=224)
    frames = folder / "frames"
    frames.mkdir()
    for i, path in enumerate(sorted((folder / "data").glob("*/test/*/*.png"))[::3][:count]):
        shutil.copy(path, frames / f"{i:03d}.png")
    return frames


def _standin_engine(folder: Path, onnx_path: Path) -> Path:
    """model.engine = the ONNX bytes (the stand-in's 'plan') + a sidecar naming no GPU."""
    from gpu_standin_tensorrt import VERSION

    from edgeas.artifacts import read_onnx_record, sidecar_path

    engine = folder / "standin.engine"
    engine.write_bytes(onnx_path.read_bytes())
    stage = {"tensorrt_version": VERSION, "tensorrt_flavour": "tensorrt", "gpu": None,
             "compute_capability": None, "gpu_reason": "stand-in engine (not TensorRT)"}
    record = read_onnx_record(onnx_path).with_stage("engine", stage)
    sidecar_path(engine).write_text(json.dumps(record.to_json(), indent=2))
    return engine


def _stream(backend, frames: Path, threshold: float, batch: int) -> tuple[dict, list]:
    from edgeas.postprocess import resolve
    from edgeas.runtime.pipeline import Pipeline
    from edgeas.runtime.sink import Sink
    from edgeas.runtime.sources import open_source, parse_source

    class Collect(Sink):
        name = "collect"

        def __init__(self) -> None:
            self.rows: list[tuple[int, float, bool, np.ndarray]] = []

        def on_frame(self, result) -> None:
            self.rows.append((result.index, result.score, result.is_ng, result.amap.copy()))

    sink = Collect()
    settings = resolve(backend.record, threshold, 0, "fused", "check")
    source = open_source(parse_source(str(frames)))
    try:
        summary = Pipeline(backend, source, settings, [sink], batch=batch).run()
    finally:
        source.close()
    return summary, sorted(sink.rows, key=lambda r: r[0])


def run_pipeline_check(dry: bool, count: int, batch: int) -> dict[str, Any]:
    from edgeas.runtime.backends import OnnxRuntimeBackend

    out: dict[str, Any] = {"checks": [], "figures": {}, "notes": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx_path, frames = _export(folder), _frames(folder, count)
        reference = OnnxRuntimeBackend(onnx_path, "cpu")
        _, first = _stream(reference, frames, 1e9, batch)
        threshold = float(np.median([r[1] for r in first]))  # OK and NG frames both
        summary, ref = _stream(reference, frames, threshold, batch)
        out["figures"]["onnxruntime_cpu"] = {"frames": summary["frames"],
                                             "fps": summary["fps"],
                                             "aggregation": summary["aggregation"]}
        engine = _standin_engine(folder, onnx_path)
        import gpu_standin_tensorrt as standin

        shapes = standin._Engine(engine.read_bytes(), 8).shapes
        dynamic = {n: s for n, s in shapes.items() if any(d < 0 for d in s[1:])}
        out["checks"].append({"name": "stand-in engine: only the batch is dynamic",
                              "ok": not dynamic, "detail": f"I/O shapes {shapes}"})
        if dry:
            out["notes"].append("TensorRTBackend on the GPU not run: needs the device "
                                "(dry run: export, ONNX Runtime pipeline, stand-in shapes)")
            return out
        module = standin.make_module(max_batch=8)
        previous = sys.modules.get("tensorrt")
        sys.modules["tensorrt"] = module  # no TensorRT on the lent machine: the stand-in
        try:
            from edgeas.runtime.tensorrt_backend import TensorRTBackend

            backend = TensorRTBackend(engine)
            try:
                summary, got = _stream(backend, frames, threshold, batch)
            finally:
                backend.close()
            backend.close()  # a second close does nothing
        finally:
            if previous is None:
                sys.modules.pop("tensorrt", None)
            else:
                sys.modules["tensorrt"] = previous
        out["figures"]["tensorrt_backend_standin"] = {
            "frames": summary["frames"], "fps": summary["fps"],
            "aggregation": summary["aggregation"], "cuda_layer": backend.cuda.name,
            "executions": module.engines[-1].executions,
            "stages": summary["stages"]}
        _compare(out, ref, got, threshold, summary, count, batch, module)
    return out


def _compare(out, ref, got, threshold, summary, count, batch, module) -> None:
    checks = out["checks"]
    checks.append({"name": "every frame through the pipeline", "ok": len(got) == count,
                   "detail": f"{len(got)} of {count}"})
    runs = -(-count // batch)
    checks.append({"name": "one enqueue per batch (dynamic batch 4, 4, 2)",
                   "ok": module.engines[-1].executions == runs,
                   "detail": f"{module.engines[-1].executions} executions, {runs} expected"})
    checks.append({"name": "fused aggregation ran on the GPU",
                   "ok": summary["aggregation"] == "fused (gpu)",
                   "detail": summary["aggregation"]})
    if len(got) != len(ref):
        return
    scores = max(abs(a[1] - b[1]) for a, b in zip(ref, got))
    maps = max(float(np.abs(a[3] - b[3]).max()) for a, b in zip(ref, got))
    clear = [(a, b) for a, b in zip(ref, got) if abs(a[1] - threshold) > SCORE_TOLERANCE]
    same = all(a[2] == b[2] for a, b in clear)
    out["figures"]["max_abs_diff"] = {"score": scores, "map": maps}
    checks.append({"name": "scores and maps equal ONNX Runtime's",
                   "ok": scores <= SCORE_TOLERANCE and maps <= SCORE_TOLERANCE,
                   "detail": f"score {scores:.2e}, map {maps:.2e} (tolerance "
                             f"{SCORE_TOLERANCE:g})"})
    checks.append({"name": "OK/NG decisions equal ONNX Runtime's", "ok": same,
                   "detail": f"{len(clear)} frames away from the threshold compared"})
