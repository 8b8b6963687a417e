"""A real Triton Inference Server for the tests, serving an `edgeas export-triton` repository.

Runs in the venv that `make triton-server` makes (nvidia-pytriton requires numpy < 2, so
it cannot share the project's environment), never imports edgeas, and is started by
tests/triton_support.py as

    PYTHON tests/triton_server.py --repo REPO --name NAME --grpc-port G --http-port H
        --metrics-port M [--plain-name OTHER]

PyTriton's `tritonserver` binary (Triton 2.51) loads a Python-backend model whose
inference callable runs REPO/NAME/1/model.onnx with ONNX Runtime on the CPU. Names,
shapes, max_batch_size, the queue delay, the instance count and the `edgeas` parameter
are read from the config.pbtxt that export-triton wrote (parsed with Triton's own
model_config_pb2): the served config differs from it only in the backend (python instead
of onnxruntime_onnx, which the wheel does not ship). `--plain-name` also serves the same
model without the edgeas parameter (the tests' refusal case). Prints READY when serving.
"""

from __future__ import annotations

import argparse
import os
import sysconfig
from pathlib import Path

import numpy as np

_NP = {1: np.bool_, 11: np.float32, 10: np.float16}  # TYPE_BOOL, TYPE_FP32, TYPE_FP16


def _patch_parameters(name: str, params: dict[str, str]) -> None:
    """PyTriton's bind() has no way to add config parameters; its model config is built
    in Model._get_triton_model_config (a private method, PyTriton 0.7), so the extra
    parameters are added to what it returns for this model name."""
    from pytriton.models import model as pyt_model

    original = pyt_model.Model._get_triton_model_config

    def with_params(self):
        config = original(self)
        if self.model_name == name:
            config.backend_parameters.update(params)
        return config

    pyt_model.Model._get_triton_model_config = with_params


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--plain-name")
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    args = ap.parse_args()

    # The Python backend's stub links libpython3.X.so.1.0; without this the loader finds
    # the system's copy (another patch release) first and the stub's multiprocessing
    # breaks ("'_thread.RLock' object has no attribute '_recursion_count'").
    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = ":".join(
        p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)

    import onnxruntime as ort
    from google.protobuf import text_format
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig
    from tritonclient.grpc import model_config_pb2

    folder = args.repo / args.name
    config = text_format.Parse((folder / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    params = {k: v.string_value for k, v in config.parameters.items()}
    _patch_parameters(args.name, params)
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    in_name = config.input[0].name
    out_names = [o.name for o in config.output]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        outs = session.run(out_names, {in_name: inputs[in_name]})
        return dict(zip(out_names, outs))

    def tensors(specs) -> list:
        return [Tensor(name=t.name, dtype=_NP[t.data_type], shape=tuple(t.dims)) for t in specs]

    batching = config.max_batch_size > 0
    delay = config.dynamic_batching.max_queue_delay_microseconds
    model_config = ModelConfig(
        batching=batching, max_batch_size=max(config.max_batch_size, 1),
        batcher=DynamicBatcher(max_queue_delay_microseconds=delay))
    count = sum(g.count for g in config.instance_group) or 1
    triton_config = TritonConfig(
        http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
        grpc_port=args.grpc_port, metrics_port=args.metrics_port, allow_metrics=False,
        exit_timeout_secs=3)
    with Triton(config=triton_config) as triton:
        for name in filter(None, (args.name, args.plain_name)):
            triton.bind(model_name=name, infer_func=[infer] * count,
                        inputs=tensors(config.input), outputs=tensors(config.output),
                        config=model_config, strict=True)
        print("READY", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
