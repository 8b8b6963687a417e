"""`edgeas stream`: wire a model, a source and the sinks into a Pipeline, run it, report."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeas.decision_head import describe as describe_head
from edgeas.errors import ConfigError
from edgeas.fileio import atomic_write_text
from edgeas.postprocess import resolve
from edgeas.runtime.backends import REMOTE_SCHEMES, open_backend
from edgeas.runtime.integrations import check_integrations
from edgeas.runtime.model_choice import sibling
from edgeas.runtime.multi_source import describe_sources, run_sources
from edgeas.runtime.pipeline import Pipeline, describe_summary
from edgeas.runtime.sinks import build_sinks, describe_decisions
from edgeas.runtime.sources import open_source, parse_source
from edgeas.runtime.station import SourceEntry, StreamOptions, load_station

console = Console(stderr=True, soft_wrap=True)


def setup_logging() -> None:
    """Warnings of the stream (reconnects, skipped frames) on stderr with a time stamp."""
    logger = logging.getLogger("edgeas.stream")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def build_options(config: Path | None, flags: dict[str, Any]) -> StreamOptions:
    """The station file (if any) overridden by the command-line flags that were given."""
    base = load_station(config) if config is not None else StreamOptions()
    shorthands = {k: flags.pop(k, None) for k in ("camera", "video", "rtsp", "csi", "images")}
    several = tuple(flags.pop("sources", None) or ())
    if several and any(v is not None for v in shorthands.values()):
        raise ConfigError(f"{len(several)} SOURCE URIs and a --camera/--video/--rtsp/--csi/"
                          "--images flag: give several sources as URIs only")
    if any(v is not None for v in shorthands.values()) or flags.get("source") is not None:
        flags["source"] = parse_source(flags.pop("source", None), **shorthands).uri
    options = base.merged(**flags)
    if several:  # the command line's sources replace the station file's
        options = replace(options, source=None,
                          sources=tuple(SourceEntry(parse_source(u).uri) for u in several))
    elif flags.get("source") is not None:
        options = replace(options, sources=())
    check_integrations(options)
    if options.model is None:
        raise ConfigError("no model: pass --model MODEL.onnx|MODEL.engine or set `model:` in "
                          "the station file", hint="edgeas export writes an ONNX model")
    if options.source is None and not options.sources:
        raise ConfigError("no source: pass a SOURCE URI, --video/--camera/--rtsp/--csi/--images, "
                          "or set `source:` in the station file",
                          hint="e.g. edgeas stream --model model.onnx file://clip.mp4")
    return options


def run_stream(options: StreamOptions, device: str = "auto") -> dict[str, Any]:
    """Run a stream to its end; returns the summary (also used by tests and the bench)."""
    if options.precision is not None:
        chosen = sibling(options.model, options.precision, device)
        console.print(f"--precision {options.precision}: running {chosen} "
                      f"(beside {options.model})")
        options = replace(options, model=str(chosen))
    backend = open_backend(options.model, device)
    if options.sources:
        try:
            return run_sources(backend, options, model_label(options.model), console)
        finally:
            backend.close()
    try:
        settings = resolve(backend.record, options.threshold, options.min_area,
                           options.aggregation, str(options.model), cls=options.cls)
        source = open_source(parse_source(options.source))
        try:
            return _run(backend, source, settings, options)
        finally:
            source.close()
    finally:
        backend.close()


def model_label(model: str) -> str:
    """How the model is named on the page and in events: a file by its name, a served
    model by its URL."""
    return model if model.split("://", 1)[0].lower() in REMOTE_SCHEMES else Path(model).name


def _run(backend, source, settings, options: StreamOptions) -> dict[str, Any]:
    sinks = build_sinks(options, source, console)
    try:
        pipeline = Pipeline(backend, source, settings, sinks, options.max_frames, options.batch,
                            model_label=model_label(options.model))
    except BaseException as exc:
        for sink in reversed(sinks):  # never opened: a running pipeline would close them
            sink.close(exc)
        raise
    console.print(
        f"streaming {source.spec.uri} through {model_label(options.model)} "
        f"({backend.name}, {backend.device}); threshold {settings.threshold:.5g} "
        f"({settings.threshold_origin}), min_area {settings.min_area}, "
        f"{settings.mode} aggregation"
        + ("" if settings.head_sigma is None else "; OK/NG decided on "
           + describe_head(backend.record.model.head))
    )
    # the pipeline closes the sinks (the recording renamed into place or deleted, the
    # event queue drained) before it returns: the summary's counts are final
    return pipeline.run()


def print_summary(summary: dict[str, Any]) -> None:
    console.print(describe_summary(summary))
    if "events" in summary:
        ev = summary["events"]
        console.print(f"events: {ev['written']} written to {ev['dir']}/events.jsonl"
                      + (f", {ev['deleted']} oldest deleted (budget)" if ev["deleted"] else "")
                      + (f", {ev['failed']} FAILED" if ev["failed"] else ""))
    for name in ("mqtt", "webhook"):
        if name in summary:
            q = summary[name]
            console.print(f"{name}: {q['delivered']} of {q['queued']} events delivered"
                          + (f" (+{q['carried']} from an earlier run)" if q["carried"] else "")
                          + (f", {q['pending']} waiting in {q['queue']}" if q["pending"] else "")
                          + (f", {q['rejected']} rejected" if q["rejected"] else "")
                          + (f", {q['dropped']} DROPPED (queue budget)" if q["dropped"] else "")
                          + (f", {q['lost']} LOST (disk error)" if q["lost"] else ""))
    if "on_ng" in summary:
        c = summary["on_ng"]
        console.print(f"on NG: {c['ok']} of {c['ran']} runs ok, {c['failed']} failed, "
                      f"{c['timed_out']} timed out, {c['busy']} NG frames while busy")
    if "recording" in summary:
        rec = summary["recording"]
        console.print(f"recording: {rec['path']} ({rec['frames']} frames)")
    if "sources" in summary:
        console.print(describe_sources(summary))
    if "decisions" in summary:
        console.print(describe_decisions(summary["decisions"], summary.get("skipped", 0)))


def stream_command(config: Path | None, flags: dict[str, Any], summary_json: Path | None,
                   device: str = "auto") -> None:
    setup_logging()
    options = build_options(config, dict(flags))
    summary = run_stream(options, device)
    print_summary(summary)
    if summary_json is not None:
        atomic_write_text(summary_json, json.dumps(summary, indent=2, default=str) + "\n")
