"""The station file (`edgeas stream --config station.yaml`) and the options of a stream.

A station file holds what the command line would (interfaces.md): `model`, `source`,
`threshold`, `min_area`, `aggregation`, `class` (the product inspected: the model's
per-class threshold of that class), `serve`, `show`, `record`,
`events: {dir, budget_mb}` (or instead of `source` a list `sources:` of `{name, uri,
threshold, min_area, events}`: several cameras through one model,
runtime/multi_source.py, each entry's settings over the station's), and what leaves
the box: `station` (its name), `metrics`,
`mqtt: {url, password_file, ca_file, thumbnail}`, `webhook: {url, timeout_s}`,
`on_ng: {command, timeout_s}`, `queue: {dir, budget_mb}` (runtime/delivery.py).
It loads through the core config loader (`edgeas.config.load_yaml_dataclass`):
unknown keys are errors that name the key and the file, so a typo never silently runs a
station with defaults. Relative paths in the file are relative to the file's own
folder, so a station folder can be moved as a whole. Flags given on the command line
override the file.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgeas.config import load_yaml_dataclass
from edgeas.errors import ConfigError
from edgeas.postprocess import AGGREGATION_MODES as MODES
from edgeas.runtime.events import DEFAULT_BUDGET_MB
from edgeas.runtime.outbox import DEFAULT_QUEUE_MB

DEFAULT_SERVE = "127.0.0.1:8080"  # what `serve: true` serves on
DEFAULT_METRICS = "127.0.0.1:9100"  # what `metrics: true` serves on


@dataclass
class EventsSection:
    dir: str | int | None = None
    budget_mb: float | None = None  # None: DEFAULT_BUDGET_MB


@dataclass
class SourceSection:
    """One entry of `sources:` as written."""

    uri: str | int | None = None  # required: checked by load_station (a one-line error)
    name: str | None = None
    threshold: float | None = None
    min_area: int | None = None
    events: str | int | None = None  # its events folder (default: EVENTS_DIR/NAME)


@dataclass(frozen=True)
class SourceEntry:
    """One source of a several-source station; None: the station's setting."""

    uri: str
    name: str | None = None  # None: named after the file or the camera URI
    threshold: float | None = None
    min_area: int | None = None
    events: str | None = None


@dataclass
class MqttSection:
    url: str | None = None  # mqtt://[user@]HOST[:PORT]/PREFIX; never a password
    password_file: str | None = None
    ca_file: str | None = None
    thumbnail: bool = False  # a small JPEG of the frame in each event message


@dataclass
class WebhookSection:
    url: str | None = None
    timeout_s: float | None = None


@dataclass
class OnNgSection:
    command: str | None = None
    timeout_s: float | None = None


@dataclass
class QueueSection:
    dir: str | None = None  # None: ~/.local/state/edgeas/queue/STATION
    budget_mb: float | None = None  # per queue; None: DEFAULT_QUEUE_MB


@dataclass
class StationFile:
    """The keys of a station file as written (paths not yet resolved); ints are accepted
    where the file names something (a port `serve: 8080`, a folder `source: 7`)."""

    model: str | int | None = None
    source: str | int | None = None
    sources: list[SourceSection] | None = None
    threshold: float | None = None
    min_area: int | None = None
    aggregation: str | None = None
    cls: str | None = field(default=None, metadata={"key": "class"})
    serve: str | int | bool | None = None
    show: bool = False
    record: str | int | None = None
    events: EventsSection | None = field(default_factory=EventsSection)
    station: str | None = None  # the station's name in MQTT topics and messages
    metrics: str | int | bool | None = None  # host:port, a port, or true (127.0.0.1:9100)
    mqtt: MqttSection | None = None
    webhook: WebhookSection | None = None
    on_ng: OnNgSection | None = None
    queue: QueueSection | None = None


@dataclass(frozen=True)
class StreamOptions:
    """Everything `edgeas stream` needs besides the model's own metadata."""

    model: str | None = None
    precision: str | None = None  # --precision: run the sibling file of this precision
    source: str | None = None  # a URI; the shorthand flags are turned into one by the CLI
    sources: tuple[SourceEntry, ...] = ()  # several: each its own lane (replaces `source`)
    threshold: float | None = None  # None: the metadata's value
    min_area: int | None = None  # None: the metadata's value
    aggregation: str | None = None  # None: the metadata's mode
    cls: str | None = None  # the class whose per-class threshold applies; None: all-class
    serve: str | None = None
    show: bool = False
    record: str | None = None
    events_dir: str | None = None
    events_budget_mb: float = DEFAULT_BUDGET_MB
    max_frames: int | None = None
    batch: int = 1
    station: str | None = None  # None: the host name
    metrics: str | None = None
    mqtt: str | None = None
    mqtt_password_file: str | None = None
    mqtt_ca: str | None = None
    mqtt_thumbnail: bool = False
    webhook: str | None = None
    webhook_timeout_s: float = 5.0
    on_ng: str | None = None
    on_ng_timeout_s: float = 5.0
    queue_dir: str | None = None
    queue_budget_mb: float = DEFAULT_QUEUE_MB

    def merged(self, **overrides: Any) -> StreamOptions:
        """These options with every override that is not None (command-line flags)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if v is not None and k in known})


def _resolve(value: str, base: Path) -> str:
    """A relative local path (or file:// URI) relative to the station file's folder."""
    if "://" in value and not value.startswith("file://"):
        return value
    prefix, raw = ("file://", value[7:]) if value.startswith("file://") else ("", value)
    if raw.startswith("/dev/"):
        return value
    p = Path(raw).expanduser()
    return prefix + str(p if p.is_absolute() else base / p)


def _text(value: str | int | None, base: Path | None = None) -> str | None:
    """A named thing as text; with `base`, a path resolved against the file's folder."""
    if value is None or value == "":
        return None
    return _resolve(str(value), base) if base is not None else str(value)


def load_station(path: str | Path) -> StreamOptions:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"station file not found: {path}",
                          hint="see jetson/station.example.yaml")
    # keys and types through the core loader; the ranges and the mode list are checked here
    data = load_yaml_dataclass(StationFile, path, "station file")
    events = data.events or EventsSection()
    if data.aggregation is not None and data.aggregation not in MODES:
        close = difflib.get_close_matches(data.aggregation, MODES, n=1)
        raise ConfigError(f"{path}: aggregation '{data.aggregation}' is not one of "
                          f"{', '.join(MODES)}",
                          hint=f"did you mean '{close[0]}'?" if close else None)
    _check_ranges(path, "", data.threshold, data.min_area)
    if data.sources is not None and data.source is not None:
        raise ConfigError(f"{path}: both 'source' and 'sources' are set",
                          hint="list every source under 'sources:'")
    if data.sources is not None and not data.sources:
        raise ConfigError(f"{path}: 'sources' is empty")
    for i, entry in enumerate(data.sources or []):
        if entry.uri is None or entry.uri == "":
            raise ConfigError(f"{path}: sources[{i}] has no 'uri'",
                              hint="e.g. - {name: left, uri: rtsp://cam-left/stream}")
        _check_ranges(path, f"sources[{i}].", entry.threshold, entry.min_area)
    if events.budget_mb is not None and events.budget_mb <= 0:
        raise ConfigError(f"{path}: events.budget_mb must be > 0, got {events.budget_mb}")
    queue = data.queue or QueueSection()
    if queue.budget_mb is not None and queue.budget_mb <= 0:
        raise ConfigError(f"{path}: queue.budget_mb must be > 0, got {queue.budget_mb}")
    mqtt = data.mqtt or MqttSection()
    webhook = data.webhook or WebhookSection()
    on_ng = data.on_ng or OnNgSection()
    for key, section in (("webhook", webhook), ("on_ng", on_ng)):
        if section.timeout_s is not None and not section.timeout_s > 0:
            raise ConfigError(f"{path}: {key}.timeout_s must be > 0, got {section.timeout_s}")
    serve = data.serve
    if isinstance(serve, bool):  # `serve: true` serves on the default address
        serve = DEFAULT_SERVE if serve else None
    metrics = data.metrics
    if isinstance(metrics, bool):
        metrics = DEFAULT_METRICS if metrics else None
    base = path.parent
    entries = tuple(SourceEntry(str(_text(e.uri, base)), _text(e.name), e.threshold,
                                e.min_area, _text(e.events, base))
                    for e in data.sources or [])
    return StreamOptions(
        model=_text(data.model, base),
        source=_text(data.source, base),
        sources=entries,
        threshold=data.threshold,
        min_area=data.min_area,
        aggregation=data.aggregation,
        cls=data.cls,
        serve=_text(serve),
        show=data.show,
        record=_text(data.record, base),
        events_dir=_text(events.dir, base),
        events_budget_mb=DEFAULT_BUDGET_MB if events.budget_mb is None else events.budget_mb,
        station=data.station,
        metrics=_text(metrics),
        mqtt=mqtt.url,
        mqtt_password_file=_text(mqtt.password_file, base),
        mqtt_ca=_text(mqtt.ca_file, base),
        mqtt_thumbnail=mqtt.thumbnail,
        webhook=webhook.url,
        webhook_timeout_s=5.0 if webhook.timeout_s is None else webhook.timeout_s,
        on_ng=on_ng.command,
        on_ng_timeout_s=5.0 if on_ng.timeout_s is None else on_ng.timeout_s,
        queue_dir=_text(queue.dir, base),
        queue_budget_mb=DEFAULT_QUEUE_MB if queue.budget_mb is None else queue.budget_mb,
    )


def _check_ranges(path: Path, where: str, threshold: float | None,
                  min_area: int | None) -> None:
    if min_area is not None and min_area < 0:
        raise ConfigError(f"{path}: '{where}min_area' must be >= 0, got {min_area!r}")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise ConfigError(f"{path}: '{where}threshold' must be a finite number >= 0, got "
                          f"{threshold!r}")
