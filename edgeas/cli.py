"""The `edgeas` command line. Commands import their stage lazily, so `edgeas --help`
and the runtime commands need neither torch nor TensorRT."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from edgeas.cli_errors import Root, report_click_error
from edgeas.cli_stream import stream
from edgeas.cli_threshold import threshold_app
from edgeas.cli_triton import export_triton

app = typer.Typer(
    cls=Root,
    name="edgeas",
    help="Unified anomaly segmentation: train on normal images, export, run a station.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(threshold_app, name="threshold")
app.command("export-triton")(export_triton)
console = Console(stderr=True)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    ctx.ensure_object(dict)["debug"] = debug


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to create (MVTec layout)."),
    classes: str | None = typer.Option(None, help="Comma-separated class names."),
    per_class: int = typer.Option(
        80,
        "--per-class",
        help="Training images per class; the test split gets max(2, round(N/4)) normal and "
        "max(5, round(3N/8)) defective images (20 and 30 for 80).",
    ),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same files."),
    size: int = typer.Option(224, help="Image side in pixels."),
) -> None:
    """Generate the built-in inspection data set from photographs shipped with scikit-image."""
    from edgeas.train.synth import synth_command

    synth_command(out, classes, per_class, seed, size)


@app.command("synth-clip")
def synth_clip(
    data: Path = typer.Argument(..., help="Data set root (CLASS/test/KIND/ images)."),
    output: Path = typer.Option(..., "-o", "--output", help="Video to write (.mp4 or .avi)."),
    fps: float = typer.Option(5.0, help="Frames per second."),
    hold: int = typer.Option(2, help="Frames each image is shown."),
    seed: int = typer.Option(0, help="Order of the images."),
    limit: int | None = typer.Option(None, help="At most this many images."),
    frame: str | None = typer.Option(
        None, "--frame", help="Camera frame WIDTHxHEIGHT, e.g. 1280x720 (default: image size)."
    ),
    fill: float = typer.Option(1.0, help="With --frame: part's share of each frame side."),
    keep_aspect: bool = typer.Option(
        False, "--keep-aspect", help="With --frame: scale the part uniformly to FILL x height."
    ),
    split: str = typer.Option("test", "--split", help="test: the test images (normal and "
                              "defective); train: the normal training images only."),
) -> None:
    """Make a line-camera video of a data set's test images, with OUT.json naming the defects."""
    from edgeas.train.clip import parse_frame_size, write_clip

    size = parse_frame_size(frame) if frame else None
    doc = write_clip(data, output, fps, hold, seed, limit, size, fill, keep_aspect, split)
    bad = sum(f["defect"] for f in doc["frames"])
    print(f"{output}: {len(doc['frames'])} frames, {bad} with a defect "
          f"(list: {output.with_suffix('.json')})")


@app.command()
def train(
    config: str = typer.Option(..., "--config", "-c", help="Preset name or YAML file."),
    data: Path = typer.Option(..., "--data", help="Data set root (MVTec, VisA or plain)."),
    out: Path = typer.Option(..., "--out", help="Run folder for checkpoints and logs."),
    epochs: int | None = typer.Option(None, help="Override train.epochs."),
    batch: int | None = typer.Option(None, help="Override train.batch."),
    resume: bool = typer.Option(False, help="Continue from OUT/last.pt."),
    max_steps: int | None = typer.Option(None, help="Stop after this many optimizer steps."),
) -> None:
    """Train UniAS on the normal images of every class in DATA (one model for all)."""
    from edgeas.train.run import train_command

    train_command(config, data, out, epochs=epochs, batch=batch, resume=resume, max_steps=max_steps)


@app.command("fit-head")
def fit_head(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A trained edgeas checkpoint."),
    data: Path = typer.Option(..., "--data", help="The data set it was trained on."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="New checkpoint (default: CHECKPOINT.knn.pt)."),
    coreset: float | None = typer.Option(None, help="Fraction of training patches kept "
                                                    "(default: the stored config's, 0.1)."),
    sigma: float | None = typer.Option(None, help="Gaussian on the head's map, input px."),
) -> None:
    """Add the nearest-neighbour decision head to a trained model (no retraining) and refit
    its threshold on the head's maps of the held-out normal images."""
    from edgeas.train.head_fit import fit_head_command

    fit_head_command(checkpoint, data, out, coreset, sigma)


@app.command("eval")
def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="edgeas checkpoint (.pt)."),
    data: Path = typer.Option(..., "--data", help="Data set root with a test split."),
    out: Path | None = typer.Option(None, "--out", help="Folder for metrics.json, figures."),
    batch: int = typer.Option(8, help="Images per forward pass."),
) -> None:
    """Evaluate a checkpoint on the test split: pAP, DSC, AUROC, AU-PRO per class, figures."""
    from edgeas.train.evaluate import eval_command

    eval_command(checkpoint, data, out, batch)


@app.command()
def conformance(
    directory: Path = typer.Argument(..., help="Conformance folder (state_dict.npz, config.json)."),
    tensors: Path | None = typer.Option(None, help="Tensors file (default DIR/tensors.npz)."),
    save: Path | None = typer.Option(None, help="Write every computed tensor to this .npz."),
) -> None:
    """Check the model against tensors recorded from the official UniAS code."""
    from edgeas.train.conformance import conformance_command

    ok = conformance_command(directory, tensors, save)
    raise typer.Exit(0 if ok else 1)


@app.command("import-official")
def import_official(
    checkpoint: Path = typer.Argument(..., help="Checkpoint .pth of the official UniAS code."),
    output: Path = typer.Option(..., "-o", "--output", help="edgeas checkpoint to write."),
    data: Path | None = typer.Option(None, help="Data set to fit thresholds on."),
    backbone_weights: Path | None = typer.Option(
        None, help="EfficientNet-B4 weights (EfficientNet-PyTorch layout) if not in CKPT."
    ),
    reference_padding: bool = typer.Option(
        True, help="Pad the B4 backbone like the official code (what its decoder saw)."
    ),
) -> None:
    """Convert a checkpoint trained with the official UniAS code into an edgeas checkpoint."""
    from edgeas.train.official import import_official_command

    import_official_command(checkpoint, output, data, backbone_weights, reference_padding)


@app.command()
def export(
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="edgeas checkpoint (.pt)."),
    config: str | None = typer.Option(
        None, "--config", "-c", help="Preset or YAML of an untrained model (with --random-init)."
    ),
    random_init: bool = typer.Option(
        False, "--random-init", help="Export the --config model untrained (random backbone too)."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write."),
    opset: int = typer.Option(17, help="ONNX opset (17..20)."),
    batch: int | None = typer.Option(None, help="Static batch size (default 1)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Batch dimension 'N'."),
    precision: str = typer.Option(
        "fp32", help="fp32 | fp16 (fp16 also writes OUT.fp16.onnx: typed FP16, float32 I/O)."
    ),
    with_map: bool = typer.Option(
        False, "--with-map", help="Also output anomaly_map (reference aggregation) and score."
    ),
) -> None:
    """Export to ONNX (dist_res1..4), verified against PyTorch with ONNX Runtime."""
    from edgeas.export.command import export_command

    export_command(
        checkpoint, config, random_init, output, opset, batch, dynamic_batch, precision, with_map
    )


@app.command("build-engine")
def build_engine(
    onnx: Path = typer.Option(..., "--onnx", help="ONNX model from `edgeas export`/`calibrate`."),
    output: Path = typer.Option(..., "-o", "--output", help="Engine file to write."),
    precision: str | None = typer.Option(
        None, help="fp32 | fp16 | int8 (default: the ONNX's own precision)."
    ),
    calib_images: Path | None = typer.Option(
        None, "--calib-images", help="Normal images for TensorRT 10's INT8 calibrator."
    ),
    calib_cache: Path | None = typer.Option(
        None, "--calib-cache", help="Calibration cache to reuse or write (default OUT.calib)."
    ),
    calib_num: int = typer.Option(256, "--calib-num", help="At most this many images."),
    workspace_gb: float = typer.Option(2.0, "--workspace-gb", help="Builder workspace (GiB)."),
    min_batch: int | None = typer.Option(None, "--min-batch", help="Dynamic batch: min (1)."),
    opt_batch: int | None = typer.Option(None, "--opt-batch", help="Dynamic batch: tuned (min)."),
    max_batch: int | None = typer.Option(None, "--max-batch", help="Dynamic batch: max (8)."),
    timing_cache: Path | None = typer.Option(
        None, "--timing-cache", help="Timing cache file, read if present and updated."
    ),
    dla_core: int | None = typer.Option(None, "--dla-core", help="Jetson DLA core (TRT 10)."),
    gpu_fallback: bool = typer.Option(
        False, "--gpu-fallback", help="With --dla-core: run unsupported layers on the GPU."
    ),
    tensorrt: str = typer.Option(
        "auto", "--tensorrt", help="auto | tensorrt | tensorrt_rtx: which TensorRT to use."
    ),
    optimization_level: int | None = typer.Option(
        None, "--optimization-level", help="Builder optimisation 0-5 (lower builds faster)."
    ),
    compute_capability: str | None = typer.Option(
        None, "--compute-capability", help="TensorRT-RTX: target GPUs, e.g. 7.5 or 8.6,8.9 "
        "(default: 8.6/8.9/12.0, or this GPU's when not covered)."
    ),
) -> None:
    """Build a TensorRT engine and its sidecar OUT.json (never imports torch)."""
    from edgeas.export.engine import BuildOptions, build_engine_command

    options = BuildOptions(
        precision=precision,
        workspace_gb=workspace_gb,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        timing_cache=timing_cache,
        dla_core=dla_core,
        gpu_fallback=gpu_fallback,
        optimization_level=optimization_level,
        calib_images=calib_images,
        calib_cache=calib_cache,
        calib_num=calib_num,
        compute_capability=compute_capability,
    )
    build_engine_command(onnx, output, options, tensorrt)


@app.command()
def calibrate(
    onnx: Path = typer.Option(..., "--onnx", help="FP32 ONNX model from `edgeas export`."),
    images: Path = typer.Option(
        ..., "--images", help="Normal images: a folder, or a data set root (every train/good)."
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Q/DQ INT8 ONNX to write (model.int8.onnx); the .cpu.onnx, "
        ".cache and .json files go beside it."
    ),
    num: int = typer.Option(256, "--num", help="At most this many images (1 in 8 held out)."),
    method: str = typer.Option(
        "entropy", "--method", help="entropy | percentile | minmax | auto (per format, the "
        "one that scores best against FP32)."
    ),
    eval_data: Path | None = typer.Option(
        None, "--eval-data", help="MVTec-layout test set: pAP and DSC of FP32 vs INT8."
    ),
    allow_drop: bool = typer.Option(
        False, "--allow-drop", help="Exit 0 even when the accuracy gate fails."
    ),
    max_pap_drop: float = typer.Option(
        1.0, "--max-pap-drop", help="Largest pAP loss accepted, in points (with --eval-data)."
    ),
    min_cosine: float = typer.Option(
        0.95, "--min-cosine",
        help="Least worst-image cosine of INT8 vs FP32 maps: the gate without --eval-data, "
        "and the Q/DQ target of --mixed-precision.",
    ),
    trt_version: str = typer.Option(
        "10.3.0", "--trt-version", help="TensorRT version named in the .cache file's header."
    ),
    sensitivity: bool = typer.Option(
        False, "--sensitivity", help="Rank the blocks by the loss each alone in INT8 causes "
        "(writes .sensitivity.json)."
    ),
    mixed_precision: bool = typer.Option(
        False, "--mixed-precision", help="Keep the most sensitive blocks in float until each "
        "format meets its targets."
    ),
    keep_float: list[str] = typer.Option(
        [], "--keep-float", help="Keep the Conv/MatMul/Gemm nodes under this name prefix in "
        "float (repeatable)."
    ),
    max_float_blocks: int = typer.Option(
        6, "--max-float-blocks", help="With --mixed-precision: at most this many blocks float."
    ),
) -> None:
    """INT8 models calibrated on normal images, gated on their accuracy against FP32."""
    from edgeas.calibration.command import CalibrateOptions, calibrate_command

    options = CalibrateOptions(
        num=num, method=method, eval_data=eval_data, allow_drop=allow_drop,
        max_pap_drop=max_pap_drop, min_cosine=min_cosine, trt_version=trt_version,
        sensitivity=sensitivity, mixed_precision=mixed_precision, keep_float=tuple(keep_float),
        max_float_blocks=max_float_blocks,
    )
    calibrate_command(onnx, images, output, options)


@app.command()
def inspect(file: Path = typer.Argument(..., help="Checkpoint, ONNX model or engine.")) -> None:
    """Print the edgeas metadata of a checkpoint, ONNX model or engine."""
    import json

    from edgeas.artifacts import read_metadata

    print(json.dumps(read_metadata(file), indent=2))


@app.command()
def doctor(
    for_: str | None = typer.Option(
        None,
        "--for",
        help="train, build-engine or stream: exit 1, naming what is missing and how to install "
        "it, unless this machine has what that command needs.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only JSON on stdout."),
    config: Path | None = typer.Option(
        None, "--config", help="Station file: its model, source and events folder are checked."
    ),
    events_dir: Path | None = typer.Option(
        None, "--events-dir", help="Events folder to check (default: the station file's, ./events)."
    ),
) -> None:
    """Report Python, extras, torch, TensorRT, the CUDA layer, ONNX Runtime, OpenCV, GPU, Jetson."""
    from edgeas.doctor import doctor_command

    raise typer.Exit(doctor_command(for_, as_json, config, events_dir))


app.command()(stream)  # edgeas/cli_stream.py: its many options live there


@app.command()
def bench(
    model: str = typer.Argument(
        ..., help="MODEL.onnx, MODEL.engine or triton://HOST:PORT/NAME."
    ),
    frames: int = typer.Option(100, help="Frames to time (after a short warm-up)."),
    batch: int = typer.Option(1, help="Images per inference."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON."),
    video: str | None = typer.Option(
        None, "--video", help="Stream this video in the pipeline part (default: in-memory frames)."
    ),
    frame_size: str | None = typer.Option(
        None, "--frame-size", help="WIDTHxHEIGHT of the in-memory frames (default 640x480)."
    ),
    threshold: float | None = typer.Option(None, help="Threshold (timing only)."),
    device: str = typer.Option("auto", help="auto | cpu | gpu."),
) -> None:
    """Latency p50/p99 and FPS of the backend alone and of the pipeline per stage."""
    from edgeas.runtime.bench import bench_command

    bench_command(model, frames, batch, json_out, video, frame_size, threshold, device)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on `argv` (default: sys.argv[1:]); exits with the command's code."""
    try:
        # Without standalone mode click returns the code of a typer.Exit instead of exiting.
        # An EdgeasError is reported by Root.invoke (cli_errors.py) and arrives here as that
        # Exit (or, with --debug, as itself: the traceback).
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click's errors arrive here with standalone_mode=False
        code = report_click_error(exc)
        if code is None:
            raise
        sys.exit(code)


if __name__ == "__main__":
    main()
