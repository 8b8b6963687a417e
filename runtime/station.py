"""The station file (`edgeas stream --config station.yaml`) and the options of a stream.

A station file holds what the command line would (interfaces.md): `model`, `source`,
`threshold`, `min_area`, `aggregation`, `serve`, `show`, `record` and
`events: {dir, budget_mb}`. Unknown keys are errors that name the key and the file,
so a typo never silently runs a station with defaults. Relative paths in the file are
relative to the file's own folder, so a station folder can be moved as a whole.
Flags given on the command line override the file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from edgeas.aggregate import MODES
from edgeas.errors import ConfigError
from edgeas.runtime.events import DEFAULT_BUDGET_MB

STATION_KEYS = ("model", "source", "threshold", "min_area", "aggregation", "serve", "show",
                "record", "events")
EVENT_KEYS = ("dir", "budget_mb")


@dataclass(frozen=True)
class StreamOptions:
    """Everything `edgeas stream` needs besides the model's own metadata."""

    model: str | None = None
    source: str | None = None  # a URI; the shorthand flags are turned into one by the CLI
    threshold: float | None = None  # None: the metadata's value
    min_area: int | None = None  # None: the metadata's value
    aggregation: str | None = None  # None: the metadata's mode
    serve: str | None = None
    show: bool = False
    record: str | None = None
    events_dir: str | None = None
    events_budget_mb: float = DEFAULT_BUDGET_MB
    max_frames: int | None = None
    batch: int = 1

    def merged(self, **overrides: Any) -> StreamOptions:
        """These options with every override that is not None (command-line flags)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if v is not None and k in known})


def _unknown(key: str, known: tuple[str, ...], where: str, path: Path) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ConfigError(f"{path}: unknown key '{key}' in {where}",
                       hint=f"{hint}known keys: {', '.join(known)}")


def _resolve(value: str, base: Path) -> str:
    """A relative local path (or file:// URI) relative to the station file's folder."""
    if "://" in value and not value.startswith("file://"):
        return value
    prefix, raw = ("file://", value[7:]) if value.startswith("file://") else ("", value)
    if raw.startswith("/dev/"):
        return value
    p = Path(raw).expanduser()
    return prefix + str(p if p.is_absolute() else base / p)


def _number(data: dict, key: str, path: Path, kind: type, minimum: float | None = None):
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: '{key}' must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise ConfigError(f"{path}: '{key}' must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{path}: '{key}' must be >= {minimum}, got {value!r}")
    return kind(value)


def _text(data: dict, key: str, path: Path) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError(f"{path}: '{key}' must be a string, got {value!r}")
    return str(value)


def load_station(path: str | Path) -> StreamOptions:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"station file not found: {path}",
                          hint="see jetson/station.example.yaml") from exc
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot read station file {path}: {first}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a station file is a mapping of keys, got {type(data).__name__}")
    for key in data:
        if key not in STATION_KEYS:
            raise _unknown(str(key), STATION_KEYS, "the station file", path)
    events = data.get("events") or {}
    if not isinstance(events, dict):
        raise ConfigError(f"{path}: 'events' must be a mapping with dir and budget_mb")
    for key in events:
        if key not in EVENT_KEYS:
            raise _unknown(str(key), EVENT_KEYS, "events", path)
    aggregation = _text(data, "aggregation", path)
    if aggregation is not None and aggregation not in MODES:
        close = difflib.get_close_matches(aggregation, MODES, n=1)
        raise ConfigError(f"{path}: aggregation '{aggregation}' is not one of {', '.join(MODES)}",
                          hint=f"did you mean '{close[0]}'?" if close else None)
    show = data.get("show", False)
    if not isinstance(show, bool):
        raise ConfigError(f"{path}: 'show' must be true or false, got {show!r}")
    base = path.parent
    model, source = _text(data, "model", path), _text(data, "source", path)
    record, events_dir = _text(data, "record", path), _text(events, "dir", path)
    serve = data.get("serve")
    if isinstance(serve, bool):  # `serve: true` serves on the default address
        serve = "127.0.0.1:8080" if serve else None
    budget = _number(events, "budget_mb", path, float, 0)
    if budget is not None and budget <= 0:
        raise ConfigError(f"{path}: events.budget_mb must be > 0, got {budget}")
    return StreamOptions(
        model=_resolve(model, base) if model else None,
        source=_resolve(source, base) if source else None,
        threshold=_number(data, "threshold", path, float),
        min_area=_number(data, "min_area", path, int, 0),
        aggregation=aggregation,
        serve=None if serve is None else str(serve),
        show=show,
        record=_resolve(record, base) if record else None,
        events_dir=_resolve(events_dir, base) if events_dir else None,
        events_budget_mb=DEFAULT_BUDGET_MB if budget is None else budget,
    )
