"""`edgeas stream`: the station's options (a module of its own so that cli.py stays one
command table; the station's code is runtime/command.py, imported when it runs)."""

from __future__ import annotations

from pathlib import Path

import typer


def stream(
    source: list[str] | None = typer.Argument(
        None, help="v4l2:///dev/video0, csi://0, rtsp://host/path, file://clip.mp4 or a folder; "
        "several: one batched station.", show_default=False,
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="MODEL.onnx, MODEL.engine or triton://HOST:PORT/NAME."
    ),
    precision: str | None = typer.Option(
        None, "--precision", help="fp32 | fp16 | int8: run the file of that precision beside "
        "--model (int8: model.int8.cpu.onnx, or model.int8.onnx with --device gpu).",
    ),
    config: Path | None = typer.Option(None, "--config", help="Station file (station.yaml)."),
    camera: int | None = typer.Option(None, "--camera", help="USB/V4L2 camera N."),
    video: str | None = typer.Option(None, "--video", help="Video file (no frame dropped)."),
    rtsp: str | None = typer.Option(None, "--rtsp", help="RTSP URL."),
    csi: int | None = typer.Option(None, "--csi", help="Jetson CSI camera N (GStreamer)."),
    images: str | None = typer.Option(None, "--images", help="Folder of images."),
    threshold: float | None = typer.Option(
        None, help="Decision threshold (default: the model's fitted one)."
    ),
    min_area: int | None = typer.Option(
        None, "--min-area", help="Smallest NG region in model pixels (default: the model's)."
    ),
    aggregation: str | None = typer.Option(
        None, help="fused | reference (default: the model's metadata)."
    ),
    cls: str | None = typer.Option(
        None, "--class", help="The product inspected: its per-class threshold (default: all)."
    ),
    serve: str | None = typer.Option(
        None, help="Live page at HOST:PORT (a bare PORT binds 127.0.0.1)."
    ),
    show: bool = typer.Option(False, "--show", help="OpenCV window (GUI builds only)."),
    record: str | None = typer.Option(None, "--record", help="Write the annotated video here."),
    events: str | None = typer.Option(None, "--events", help="Folder for NG events."),
    events_budget_mb: float | None = typer.Option(
        None, "--events-budget-mb", help="Disk budget of the events folder (default 1024)."
    ),
    max_frames: int | None = typer.Option(None, "--max-frames", help="Stop after N frames."),
    batch: int | None = typer.Option(None, help="Frames per inference (file sources)."),
    device: str = typer.Option("auto", help="auto | cpu | gpu."),
    summary_json: Path | None = typer.Option(
        None, "--summary-json", help="Also write the end-of-run summary as JSON."
    ),
    station: str | None = typer.Option(
        None, "--station", help="This station's name in MQTT topics and events (default: host)."
    ),
    mqtt: str | None = typer.Option(
        None, "--mqtt", help="NG events and status to mqtt://[user@]HOST[:PORT]/PREFIX."
    ),
    mqtt_password_file: str | None = typer.Option(
        None, "--mqtt-password-file",
        help="File holding the MQTT password (else EDGEAS_MQTT_PASSWORD).",
    ),
    mqtt_ca: str | None = typer.Option(None, "--mqtt-ca", help="CA file for mqtts://."),
    mqtt_thumbnail: bool = typer.Option(
        False, "--mqtt-thumbnail", help="Add a 160 px JPEG of the frame to each MQTT event."
    ),
    webhook: str | None = typer.Option(
        None, "--webhook", help="POST each NG event as JSON to this http(s) URL."
    ),
    webhook_timeout: float | None = typer.Option(
        None, "--webhook-timeout", help="Seconds a webhook request may take (default 5)."
    ),
    on_ng: str | None = typer.Option(
        None, "--on-ng", help="Run CMD per NG decision, the event JSON on stdin (1 per source)."
    ),
    on_ng_timeout: float | None = typer.Option(
        None, "--on-ng-timeout", help="Seconds before an --on-ng command is killed (default 5)."
    ),
    metrics: str | None = typer.Option(
        None, "--metrics", help="Prometheus /metrics at HOST:PORT (a bare PORT binds 127.0.0.1)."
    ),
    queue_dir: str | None = typer.Option(
        None, "--queue-dir",
        help="Undelivered events wait here (default ~/.local/state/edgeas/queue/STATION).",
    ),
    queue_budget_mb: float | None = typer.Option(
        None, "--queue-budget-mb", help="Disk budget of each delivery queue (default 256)."
    ),
) -> None:
    """Run the inspection station: frames -> model -> OK/NG, events, live page, recording.

    With ground truth (a synth-clip's CLIP.json, a CLASS/test/KIND folder) the calls are scored.
    """
    from edgeas.runtime.command import stream_command

    several = source is not None and len(source) > 1
    flags = {
        "source": source[0] if source and not several else None,
        "sources": tuple(source) if several else None, "model": model, "precision": precision,
        "camera": camera,
        "video": video, "rtsp": rtsp, "csi": csi, "images": images, "threshold": threshold,
        "min_area": min_area,
        "aggregation": aggregation, "serve": serve, "show": show or None, "record": record,
        "events_dir": events, "events_budget_mb": events_budget_mb, "max_frames": max_frames,
        "batch": batch, "cls": cls, "station": station, "mqtt": mqtt,
        "mqtt_password_file": mqtt_password_file, "mqtt_ca": mqtt_ca,
        "mqtt_thumbnail": mqtt_thumbnail or None, "queue_dir": queue_dir,
        "queue_budget_mb": queue_budget_mb, "webhook": webhook,
        "webhook_timeout_s": webhook_timeout, "metrics": metrics,
        "on_ng": on_ng, "on_ng_timeout_s": on_ng_timeout,
    }
    stream_command(config, flags, summary_json, device)
