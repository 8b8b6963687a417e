"""`edgeas export-triton`: kept beside cli.py so that the command table stays one page."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def export_triton(
    onnx: Path = typer.Option(..., "--onnx", help="ONNX model from `edgeas export`."),
    output: Path = typer.Option(..., "-o", "--output", help="Model repository folder."),
    engine: Path | None = typer.Option(
        None, "--engine", help="Serve this TensorRT engine (model.plan) instead of the ONNX."
    ),
    name: str = typer.Option("edgeas", "--name", help="Model name on the server."),
    max_batch: int = typer.Option(
        8, "--max-batch", help="Triton max_batch_size (0: no batching, any ONNX)."
    ),
    instances: int = typer.Option(1, "--instances", help="Model instances on the server."),
    queue_delay_us: int = typer.Option(
        2000, "--queue-delay-us", help="Dynamic batching: longest wait for batch-mates (us)."
    ),
) -> None:
    """Write a Triton Inference Server model repository (config.pbtxt + model)."""
    from edgeas.runtime.triton_repo import export_triton as run

    plan, config = run(onnx, output, engine, name, max_batch, instances, queue_delay_us)
    batching = (f"max_batch_size {plan.max_batch}, dynamic batching with a queue delay of "
                f"{plan.queue_delay_us} us" if plan.max_batch else "no batching")
    console.print(f"wrote {config} and {config.parent / '1' / plan.model_file}: "
                  f"{plan.platform}, {plan.instances} x {plan.kind}, {batching}")
    console.print(f"next: tritonserver --model-repository {output}, then "
                  f"edgeas stream --model triton://HOST:8001/{plan.name} SOURCE")
