"""Reading a model record from JSON: validation, defaults and the schema-1 migration.

Every default a reader might need is filled in here, once; an error names the file and
the key. `ModelRecord.from_json` is the way in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edgeas import postprocess as pp
from edgeas.errors import ArtifactError, ConfigError
from edgeas.preprocess import Recipe
from edgeas.record import (
    CORE_KEYS,
    ENGINE_MARK,
    PRECISIONS,
    REQUIRED_V1,
    SCHEMA,
    STAGE_KEYS,
    Aggregation,
    DecisionHead,
    Level,
    ModelInfo,
    ModelRecord,
    PostProcessing,
    Threshold,
    freeze,
)


def _fail(source: str, what: str) -> ArtifactError:
    return ArtifactError(f"{source}: edgeas metadata {what}",
                         hint="re-export the model with this edgeas (`edgeas export`)")


def _check_precision(value: Any, source: str) -> str:
    if value not in PRECISIONS:
        raise _fail(source, f"has precision {value!r}, not one of {', '.join(PRECISIONS)}")
    return str(value)


def _number(value: Any, source: str, key: str, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, f"key '{key}' must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise _fail(source, f"key '{key}' must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise _fail(source, f"key '{key}' must be finite, got {value!r}")
    return kind(value)


def _member(value: Any, table: Mapping[str, Any], key: str, source: str) -> str:
    """`value` when it names an entry of a registry table, else the file's error."""
    if value not in table:
        raise _fail(source, f"{key} {value!r} is not one of {', '.join(table)}")
    return str(value)


def _levels(value: Any, source: str) -> tuple[Level, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(source, f"key 'levels' must be a non-empty list, got {value!r}")
    out = []
    for i, lv in enumerate(value):
        if not isinstance(lv, Mapping) or not {"name", "stride", "output"} <= set(lv):
            raise _fail(source, f"levels[{i}] must have name, stride and output, got {lv!r}")
        out.append(Level(str(lv["name"]), _number(lv["stride"], source, f"levels[{i}].stride",
                                                  int), str(lv["output"])))
    return tuple(out)


HEAD_KINDS = ("knn",)


def _head(value: Any, levels: tuple[Level, ...], source: str) -> DecisionHead | None:
    """The optional `decision_head` object (schema 3)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not {"kind", "output", "stride", "sigma"} <= set(value):
        raise _fail(source, "key 'decision_head' must be an object with kind, output, stride "
                            f"and sigma, got {value!r}")
    kind = str(value["kind"])
    if kind not in HEAD_KINDS:
        raise _fail(source, f"decision_head.kind {kind!r} is not one of {', '.join(HEAD_KINDS)}")
    output = str(value["output"])
    if output in {lv.output for lv in levels}:
        raise _fail(source, f"decision_head.output {output!r} is also a level's output")
    stride = _number(value["stride"], source, "decision_head.stride", int)
    sigma = _number(value["sigma"], source, "decision_head.sigma")
    bank = _number(value.get("bank", 0), source, "decision_head.bank", int)
    if stride < 1 or sigma < 0 or bank < 0:
        raise _fail(source, "decision_head needs stride >= 1, sigma >= 0 and bank >= 0, got "
                            f"{stride}, {sigma} and {bank}")
    map_tau = value.get("map_threshold")
    if map_tau is not None:
        map_tau = _tau(map_tau, source, "decision_head.map_threshold")
    return DecisionHead(kind, output, stride, sigma, bank, map_tau)


def _recipe(data: Mapping[str, Any], source: str) -> Recipe:
    try:
        return Recipe.from_metadata(data)
    except ArtifactError as exc:
        raise ArtifactError(f"{source}: {exc.message}", hint=exc.hint) from exc


def _aggregation(value: Any, levels: tuple[Level, ...], schema: int,
                 source: str) -> Aggregation:
    if not isinstance(value, Mapping):
        raise _fail(source, f"key 'aggregation' must be an object, got {value!r}")
    # a record that names no mode was made when `reference` was every stage's mode
    mode = _member(value.get("mode") or "reference", pp.AGGREGATION_MODES,
                   "aggregation.mode", source)
    raw = value.get("blur")
    names = tuple(lv.name for lv in levels)
    try:
        # schema 1: a null or empty blur meant the official smoothing in every reader;
        # since schema 2 an empty list is no smoothing (writers always write it out)
        blur = pp.check_smoothing(None if schema < 2 and not raw else raw, len(names),
                                  "aggregation.blur")
        chosen = pp.check_levels(value.get("levels"), names, "aggregation.levels")
    except ConfigError as exc:
        raise _fail(source, f"has a bad {exc.message}") from exc
    return Aggregation(str(mode), blur, chosen)


def _tau(value: Any, source: str, key: str) -> float:
    """A threshold value: finite and >= 0 (anomaly maps are products of distances)."""
    tau = _number(value, source, key)
    if tau < 0:
        raise _fail(source, f"key '{key}' must be >= 0, got {value!r}")
    return tau


def _per_class(value: Any, classes: list, source: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(source, f"key 'threshold.per_class' must be an object, got {value!r}")
    unknown = [str(c) for c in value if classes and c not in classes]
    if unknown:
        raise _fail(source, f"threshold.per_class names class(es) {', '.join(unknown)} that "
                            f"are not in its classes ({', '.join(map(str, classes))})")
    return {str(c): _tau(v, source, f"threshold.per_class.{c}") for c, v in value.items()}


def _history(value: Any, source: str) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(h, Mapping) for h in value):
        raise _fail(source, f"key 'threshold.history' must be a list of objects, got {value!r}")
    return tuple(freeze(h) for h in value)


_THRESHOLD_KEYS = ("value", "policy", "param", "mode", "min_area", "images", "margin",
                   "per_class", "history")


def _threshold(value: Any, agg_mode: str, min_area: int, classes: list,
               source: str) -> Threshold:
    """The threshold section; keys a file lacks get what that file's edgeas meant: a
    record without a policy was fitted with LEGACY_POLICY, one without `min_area` for
    the record's own min_area, without `images` on an unrecorded number of images."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise _fail(source, f"key 'threshold' must be an object, got {value!r}")
    policy = _member(value.get("policy") or pp.LEGACY_POLICY, pp.THRESHOLD_POLICIES,
                     "threshold.policy", source)
    try:
        param = pp.THRESHOLD_POLICIES[policy].check(value.get("param"), "threshold.param")
        margin = pp.MARGIN.check(value.get("margin"), "threshold.margin")
    except Exception as exc:  # ConfigError from the schema: here it is the file's fault
        raise _fail(source, f"has a bad {getattr(exc, 'message', exc)}") from exc
    tau = value.get("value")
    if tau is not None:
        tau = _tau(tau, source, "threshold.value")
    mode = _member(value.get("mode") or agg_mode, pp.AGGREGATION_MODES, "threshold.mode",
                   source)
    fitted_area = value.get("min_area")
    fitted_area = min_area if fitted_area is None else _number(fitted_area, source,
                                                               "threshold.min_area", int)
    images = value.get("images")
    if images is not None:
        images = _number(images, source, "threshold.images", int)
    if fitted_area < 0 or (images is not None and images < 0):
        raise _fail(source, "threshold.min_area and threshold.images must be >= 0")
    extra = {k: v for k, v in value.items() if k not in _THRESHOLD_KEYS}
    return Threshold(tau, str(policy), param, str(mode), fitted_area, images, margin,
                     freeze(_per_class(value.get("per_class"), classes, source)),
                     _history(value.get("history"), source), freeze(extra))


def parse_record(data: Any, source: str) -> ModelRecord:
    if not isinstance(data, Mapping):
        raise ArtifactError(f"{source}: edgeas metadata is not a JSON object")
    schema = data.get("schema")
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise _fail(source, f"has no valid schema number (got {schema!r})")
    if schema > SCHEMA:
        raise ArtifactError(
            f"{source}: metadata schema {schema} is newer than this edgeas (knows {SCHEMA})",
            hint="upgrade edgeas on this machine",
        )
    required = REQUIRED_V1 if schema < 2 else CORE_KEYS
    missing = [k for k in required if k not in data]
    if missing:
        raise ArtifactError(f"{source}: edgeas metadata lacks {', '.join(missing)}")
    levels = _levels(data["levels"], source)
    aggregation = _aggregation(data["aggregation"], levels, schema, source)
    classes = data["classes"]
    if not isinstance(classes, list):
        raise _fail(source, f"key 'classes' must be a list, got {classes!r}")
    min_area = _number(data["min_area"] or 0, source, "min_area", int)
    if min_area < 0:
        raise _fail(source, f"min_area must be >= 0, got {min_area}")
    threshold = _threshold(data["threshold"], aggregation.mode, min_area, classes, source)
    post = PostProcessing(aggregation, threshold, min_area)
    info = ModelInfo(
        preset=None if data["preset"] is None else str(data["preset"]),
        backbone=str(data["backbone"]),
        levels=levels,
        classes=tuple(str(c) for c in classes),
        data_fingerprint=data.get("data_fingerprint"),
        head=_head(data.get("decision_head"), levels, source),
    )
    stages: dict[str, Any] = {}
    engine_file = ENGINE_MARK in data
    for name, keys in STAGE_KEYS.items():
        part = {k: data[k] for k in keys if k in data}
        if name == "calibration" and engine_file:
            part.pop("calibration", None)
        if name == "engine" and engine_file:
            part["calibration"] = data.get("calibration")
        stages[name] = freeze(part) if part else None
    known = set(CORE_KEYS) | {"decision_head"} | {k for keys in STAGE_KEYS.values() for k in keys}
    extra = {k: v for k, v in data.items() if k not in known}
    return ModelRecord(
        model=info,
        preprocessing=_recipe(data, source),
        postprocess=post,
        precision=_check_precision(data.get("precision", "fp32"), source),
        edgeas_version=str(data["edgeas_version"]),
        extra=freeze(extra),
        **stages,
    )
