"""`edgeas threshold ...`: refit a model's deployment threshold on a station's own normal
images without retraining. A sub-app of its own so that cli.py stays one command table."""

from __future__ import annotations

from pathlib import Path

import typer

threshold_app = typer.Typer(help="Deployment thresholds of a model.", no_args_is_help=True)


@threshold_app.command("fit")
def threshold_fit(
    model: Path = typer.Option(..., "--model", "-m", help="MODEL.onnx, MODEL.engine or .pt."),
    images: Path = typer.Option(
        ..., "--images", help="The station's normal images: a folder, a data set root "
        "(train/good of every class, or of --class), or a video of normal parts from the "
        "station's camera (.mp4, .avi, .mkv, .mov: every frame)."
    ),
    policy: str | None = typer.Option(
        None, "--policy", help="frame_fpr (default) | quantile | max | sigma."
    ),
    param: float | None = typer.Option(
        None, "--param", help="The policy's parameter (frame_fpr: target false-NG, 0.01)."
    ),
    min_area: int | None = typer.Option(
        None, "--min-area", help="Smallest NG region in model pixels (default: the model's)."
    ),
    margin: float | None = typer.Option(None, "--margin", help="tau x margin, >= 1 (1)."),
    cls: str | None = typer.Option(
        None, "--class", help="Refit this class's per-class threshold only."
    ),
    device: str = typer.Option("auto", help="auto | cpu | gpu (ONNX and engines)."),
) -> None:
    """Refit the threshold on normal images without retraining (old one kept in history).

    On the maps the station decides on: a decision head's when the model has one."""
    from edgeas.threshold_fit import FitRequest, threshold_fit_command

    threshold_fit_command(model, images, FitRequest(policy, param, min_area, margin, cls),
                          device)
