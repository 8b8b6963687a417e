"""Registries of post-processing: aggregation modes, smoothing settings, threshold policies.

Each entry carries its implementation, its parameter schema and its default, so that a
config file, a station file and a command-line flag are all checked against the same
table when they are loaded (a bad parameter fails before hours of training, not after),
and `resolve` gives the runtime one answer from the model record plus overrides.
The numerics stay in `edgeas.aggregate` and `edgeas.thresholds`; this module only says
which of them a name means. numpy-free at import, torch-free always.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeas.errors import ConfigError

if TYPE_CHECKING:
    from edgeas.record import ModelRecord, Threshold

log = logging.getLogger("edgeas.stream")
# The level names of every UniAS model (the record's `levels` carries them per model).
LEVEL_NAMES = ("res1", "res2", "res3", "res4")


def _did_you_mean(value: str, names: Any, what: str, where: str | None = None) -> ConfigError:
    names = list(names)
    close = difflib.get_close_matches(str(value), names, n=1)
    # a name typed in the wrong case is no close match for difflib when it is short
    close = close or [n for n in names if n.lower() == str(value).lower()][:1]
    hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(names)}"
    prefix = f"{where}: " if where else ""
    return ConfigError(f"{prefix}unknown {what} '{value}' (known: {', '.join(names)})", hint=hint)


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamSpec:
    """One numeric parameter: its meaning, default and allowed interval."""

    name: str
    default: float
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is not allowed
    example: str = ""
    high_open: bool = False  # True: high itself is not allowed

    def describe(self) -> str:
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(p for p in (lo, hi) if p) or "any finite number"

    def check(self, value: Any, where: str) -> float:
        """The value to use (the default for None), or a ConfigError naming `where`."""
        if value is None:
            return float(self.default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {self.name} must be a number, got {value!r}")
        v = float(value)
        bad = not math.isfinite(v)
        bad |= self.low is not None and (v < self.low or (self.low_open and v == self.low))
        bad |= self.high is not None and (v > self.high or (self.high_open and v == self.high))
        if bad:
            raise ConfigError(f"{where}: {self.name} must be {self.describe()}, got {value!r}",
                              hint=f"e.g. {self.example or self.default}")
        return v


# --------------------------------------------------------------------------- threshold policies


@dataclass(frozen=True)
class FitContext:
    """What a policy may need besides the maps and its parameter: the decision rule's
    `min_area` (model pixels), so that `frame_fpr` counts the frames the station would
    call NG."""

    min_area: int = 0


Fit = Callable[[list, float, FitContext], float]  # (normal maps, parameter, context) -> tau


@dataclass(frozen=True)
class ThresholdPolicy:
    name: str
    description: str
    param: ParamSpec
    fit: Fit
    # (held-out images, parameter) -> a warning when the set cannot support the fit
    advice: Callable[[int, float], str | None] | None = None

    def check(self, value: Any, where: str = "threshold.param") -> float:
        return self.param.check(value, where)


def _fit(name: str, decision_rule: bool = False) -> Fit:
    """The function `edgeas.thresholds.<name>`: statistics of the maps take (maps, param);
    a policy of the decision rule (`decision_rule`) also takes min_area."""

    def run(arrays: list, value: float, context: FitContext) -> float:
        from edgeas import thresholds

        fn = getattr(thresholds, name)
        return fn(arrays, value, context.min_area) if decision_rule else fn(arrays, value)

    run.__name__ = name
    return run


def _frame_fpr_advice(images: int, target: float) -> str | None:
    from edgeas.thresholds import frame_fpr_advice

    return frame_fpr_advice(images, target)


THRESHOLD_POLICIES: dict[str, ThresholdPolicy] = {
    p.name: p
    for p in (
        ThresholdPolicy("frame_fpr", "smallest tau at which at most a target fraction of the "
                        "held-out normal images is NG under the decision rule (min_area "
                        "included)",
                        ParamSpec("target false-NG rate", 0.01, 0.0, 1.0, high_open=True,
                                  example="0.01"),
                        _fit("fit_frame_fpr", decision_rule=True), _frame_fpr_advice),
        ThresholdPolicy("max", "max normal pixel score x margin",
                        ParamSpec("margin", 1.0, 0.0, low_open=True, example="1.0 or 1.1"),
                        _fit("fit_max")),
        ThresholdPolicy("quantile", "q-quantile of all normal pixel scores",
                        ParamSpec("quantile q", 0.999, 0.0, 1.0, example="0.999"),
                        _fit("fit_quantile")),
        ThresholdPolicy("sigma", "mean + k * std of normal image scores",
                        ParamSpec("k", 3.0, example="3"), _fit("fit_sigma")),
    )
}
# What a config says when it names no policy (and `edgeas threshold fit` uses).
DEFAULT_POLICY = "frame_fpr"
# What a record that names no policy was fitted with: every edgeas before frame_fpr
# fitted the 0.999 pixel quantile, so an old file reads as what it was.
LEGACY_POLICY = "quantile"
# A multiplicative safety margin on the fitted tau, whatever the policy (1 = none).
MARGIN = ParamSpec("margin", 1.0, 1.0, example="1.0 or 1.2")


def threshold_policy(name: str, where: str | None = None) -> ThresholdPolicy:
    if name not in THRESHOLD_POLICIES:
        raise _did_you_mean(name, THRESHOLD_POLICIES, "threshold policy", where)
    return THRESHOLD_POLICIES[name]


def check_threshold_setting(policy: str, param: Any, where: str, margin: Any = None) -> float:
    """Validate a (policy, param, margin) setting as a config file gives it; returns the
    param used."""
    MARGIN.check(margin, f"{where}: threshold.margin")
    return threshold_policy(policy, f"{where}: threshold.policy").check(
        param, f"{where}: threshold.param ({policy})")


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class AggregationMode:
    """How the per-level maps become one map (protocol.md section 3). Every mode computes
    every setting (smoothing, level set); they differ in where the work is done."""

    name: str
    description: str


AGGREGATION_MODES: dict[str, AggregationMode] = {
    m.name: m
    for m in (
        AggregationMode("reference", "the straightforward implementation (the official "
                        "code's): resize to the finest level, smooth per level, multiply, "
                        "upsample"),
        AggregationMode("fused", "the fast implementation: each level smoothed at its own "
                        "resolution, then one pass at the output size samples, multiplies "
                        "and thresholds"),
    )
}
# How every stage computes the maps unless told otherwise: threshold fitting, eval's
# deployable figures, the INT8 gate and the station. Equal to `reference` of the same
# setting up to interpolation error (edgeas.aggregate; measured in eval's aggregation.json).
DEFAULT_MODE = "fused"

# Smoothing settings: (kernel, sigma) per level, res1 first, applied at the finest level's
# resolution. `official` = the reference code's (for res4..res1: (3, 1), (5, 5/3),
# (7, 7/3), (9, 3)); `none` = no smoothing (an empty list in the metadata).
OFFICIAL_BLUR: tuple[tuple[int, float], ...] = ((9, 3.0), (7, 7.0 / 3.0), (5, 5.0 / 3.0),
                                                 (3, 1.0))
SMOOTHINGS: dict[str, tuple[tuple[int, float], ...]] = {"official": OFFICIAL_BLUR, "none": ()}
# What a config that names no smoothing trains with (the README's Aggregation section has
# the measurements behind the choice).
DEFAULT_SMOOTHING = "official"

Smoothing = tuple[tuple[int, float], ...]


def aggregation_mode(name: str, where: str | None = None) -> AggregationMode:
    if name not in AGGREGATION_MODES:
        raise _did_you_mean(name, AGGREGATION_MODES, "aggregation mode", where)
    return AGGREGATION_MODES[name]


def check_smoothing(smoothing: Any, n_levels: int, where: str = "smoothing") -> Smoothing:
    """(kernel, sigma) per level, or () for none. `smoothing`: a name of SMOOTHINGS,
    None (= official, what every reader assumed before smoothing was a setting), an empty
    list (= none) or one [kernel, sigma] pair per level."""
    if smoothing is None:
        smoothing = "official"
    if isinstance(smoothing, str):
        if smoothing not in SMOOTHINGS:
            raise _did_you_mean(smoothing, SMOOTHINGS, "smoothing", where)
        pairs = SMOOTHINGS[smoothing]
        if pairs and len(pairs) != n_levels:
            raise ConfigError(f"{where}: '{smoothing}' has {len(pairs)} (kernel, sigma) pairs "
                              f"but the model has {n_levels} levels",
                              hint="give one [kernel, sigma] pair per level")
        return pairs
    try:
        pairs = tuple((int(k), float(s)) for k, s in smoothing)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} must be official, none or [[kernel, sigma], ...] (one per "
                          f"level), got {smoothing!r}") from exc
    if pairs and len(pairs) != n_levels:
        raise ConfigError(f"{where} has {len(pairs)} (kernel, sigma) pairs but there are "
                          f"{n_levels} levels")
    for k, s in pairs:
        if k < 1 or k % 2 == 0 or not (s > 0 and math.isfinite(s)):
            raise ConfigError(f"{where}: invalid (kernel={k}, sigma={s})",
                              hint="odd kernel >= 1, sigma > 0")
    return pairs


def smoothing_name(pairs: Smoothing) -> str:
    """'official', 'none', or the pairs written out (for tables and messages)."""
    for name, known in SMOOTHINGS.items():
        if tuple(pairs) == known:
            return name
    return "[" + ", ".join(f"({k}, {s:g})" for k, s in pairs) + "]"


def check_levels(levels: Any, names: Sequence[str], where: str = "aggregation.levels"
                 ) -> tuple[str, ...]:
    """The level set of the product: a non-empty subset of the model's level names, in the
    model's order (None = all of them)."""
    if levels is None:
        return tuple(names)
    if isinstance(levels, str) or not levels:
        raise ConfigError(f"{where} must be a non-empty list of level names, got {levels!r}",
                          hint=f"e.g. [{', '.join(names)}]")
    chosen = [str(v) for v in levels]
    for v in chosen:
        if v not in names:
            raise _did_you_mean(v, names, "level", where)
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"{where} names a level twice: {chosen}")
    return tuple(n for n in names if n in chosen)


# --------------------------------------------------------------------------- records


def check_tau(value: Any, where: str) -> float:
    """A threshold value: finite and >= 0 (maps are products of distances), else a
    ConfigError naming `where` and the value."""
    tau = float(value)
    if not math.isfinite(tau) or tau < 0:
        raise ConfigError(f"{where} must be a finite number >= 0, got {value!r}")
    return tau


def make_threshold(value: float | None, policy: str, param: Any, mode: str,
                   where: str = "threshold", *, min_area: int = 0, images: int | None = None,
                   margin: Any = None, per_class: Mapping[str, float] | None = None,
                   history: tuple = ()) -> Threshold:
    """A threshold record; value None means unset (the runtime then needs an override).
    `min_area`, `margin`: the decision rule and margin it was fitted with; `images`: on
    how many held-out images; `per_class`: class -> value fitted the same way."""
    from edgeas.record import Threshold, freeze

    used = threshold_policy(policy, where).check(param, f"{where}.param")
    aggregation_mode(mode, f"{where}.mode")
    if value is not None:
        value = check_tau(value, f"{where}: threshold value")
    if int(min_area) < 0 or (images is not None and int(images) < 0):
        raise ConfigError(f"{where}: min_area and images must be >= 0, got {min_area}, {images}")
    classes = {str(c): check_tau(v, f"{where}: per-class threshold of {c}")
               for c, v in (per_class or {}).items()}
    return Threshold(value, policy, used, mode, int(min_area),
                     None if images is None else int(images),
                     MARGIN.check(margin, f"{where}.margin"), freeze(classes),
                     tuple(freeze(h) for h in history))


def postprocessing(mode: str, threshold: Threshold, min_area: int = 0,
                   smoothing: Any = None, levels: Any = None,
                   level_names: Sequence[str] = LEVEL_NAMES):
    """The record's post-processing section for a config's choices (`level_names`: the
    model's levels, res1 first)."""
    from edgeas.record import Aggregation, PostProcessing

    aggregation_mode(mode, "aggregation.mode")
    if int(min_area) < 0:
        raise ConfigError(f"min_area must be >= 0, got {min_area}")
    pairs = check_smoothing(smoothing, len(level_names), "aggregation.smoothing")
    chosen = check_levels(levels, level_names)
    return PostProcessing(Aggregation(mode, pairs, chosen), threshold, int(min_area))


# --------------------------------------------------------------------------- the runtime's view


@dataclass(frozen=True)
class Settings:
    """What the station applies: from the model record, overridden where the user said so."""

    threshold: float
    threshold_origin: str
    min_area: int
    mode: str
    smoothing: Smoothing = OFFICIAL_BLUR  # the record's setting: (kernel, sigma) per level
    levels: tuple[int, ...] | None = None  # indices of the levels in the product (None: all)
    # the decision head's Gaussian sigma when the model decides on its head's map (the
    # threshold and min_area then apply to that map; edgeas.decision_head), else None
    head_sigma: float | None = None
    heat_scale: float | None = None  # the value the heat map is scaled by (None: threshold)


def check_class(record: ModelRecord, cls: str, model: str = "the model") -> str:
    """`cls` when the model was trained on it, else a ConfigError with a did-you-mean."""
    classes = record.model.classes
    if not classes:
        raise ConfigError(f"--class {cls}: {model} records no classes",
                          hint="drop --class (or `class:`) to use the all-class threshold")
    if cls not in classes:
        raise _did_you_mean(cls, classes, "class", model)
    return cls


def _fitted_value(record: ModelRecord, cls: str | None, model: str) -> tuple[float | None, str]:
    """The record's threshold for `cls` (None: the all-class one) and where it came from."""
    fitted = record.threshold
    origin = f"metadata ({fitted.policy}, {fitted.mode}"
    if cls is None:
        return fitted.value, origin + ")"
    check_class(record, cls, model)
    if cls in fitted.per_class:
        return float(fitted.per_class[cls]), origin + f", class {cls})"
    if fitted.value is not None:
        log.warning("%s has no per-class threshold for %s: using the all-class value", model, cls)
    return fitted.value, origin + ")"


def resolve(record: ModelRecord, threshold: float | None = None, min_area: int | None = None,
            mode: str | None = None, model: str = "the model",
            cls: str | None = None) -> Settings:
    """Threshold, min_area and aggregation mode: explicit values over the record's.
    `cls` picks the record's per-class threshold of that class (the station inspects one
    product); None, or a class without one, gives the all-class value."""
    fitted = record.threshold
    if threshold is not None:
        if cls is not None:
            check_class(record, cls, model)  # a mistyped class is an error all the same
        value, origin = check_tau(threshold, "threshold"), "override"
    else:
        value, origin = _fitted_value(record, cls, model)
    if value is not None:
        tau = float(value)
    else:
        raise ConfigError(
            f"{model} has no fitted threshold (its metadata threshold.value is null)",
            hint="pass --threshold T (or `threshold:` in the station file), or train with "
            "held-out normal images so that one is fitted",
        )
    mode = mode or record.aggregation.mode
    aggregation_mode(mode)
    area = int(min_area if min_area is not None else record.min_area)
    if area < 0:
        raise ConfigError(f"min_area must be >= 0, got {area}")
    if origin != "override":
        if fitted.mode != mode:
            log.warning("the threshold was fitted on %s maps but the stream aggregates in %s "
                        "mode; decisions will shift (refit, or pass --threshold)",
                        fitted.mode, mode)
        if fitted.min_area != area:
            log.warning("the threshold was fitted with min_area %d but the stream uses %d; "
                        "the false-NG rate will differ (refit with `edgeas threshold fit "
                        "--min-area %d`)", fitted.min_area, area, area)
    agg = record.aggregation
    head = record.model.head
    return Settings(tau, origin, area, mode, agg.blur,
                    level_indices(agg.levels, record.model.level_names),
                    None if head is None else head.sigma,
                    None if head is None else head.map_threshold)


def record_setting(record: ModelRecord, mode: str | None = None
                   ) -> tuple[str, Smoothing, tuple[int, ...] | None]:
    """(mode, smoothing, level indices) of the record's aggregation, as
    `edgeas.aggregate.aggregate_batch` takes them; `mode` overrides the record's."""
    agg = record.aggregation
    return (mode or agg.mode, agg.blur, level_indices(agg.levels, record.model.level_names))


def config_setting(aggregation: Any, names: Sequence[str] = LEVEL_NAMES
                   ) -> tuple[Smoothing, tuple[int, ...] | None]:
    """(smoothing pairs, level indices or None) of a config's `aggregation` section."""
    pairs = check_smoothing(aggregation.smoothing, len(names), "aggregation.smoothing")
    return pairs, level_indices(check_levels(aggregation.levels, names), names)


def level_indices(chosen: Sequence[str], names: Sequence[str]) -> tuple[int, ...] | None:
    """Indices (into the model's levels) of the product's levels; None when all are used."""
    if tuple(chosen) == tuple(names) or not chosen:
        return None
    return tuple(i for i, n in enumerate(names) if n in chosen)


def describe_registries() -> Mapping[str, Any]:
    """Names, defaults and parameter ranges (for `--help` texts and error hints)."""
    return {
        "aggregation_modes": {n: m.description for n, m in AGGREGATION_MODES.items()},
        "default_mode": DEFAULT_MODE,
        "threshold_policies": {n: {"param": p.param.name, "default": p.param.default,
                                   "range": p.param.describe()}
                               for n, p in THRESHOLD_POLICIES.items()},
        "default_policy": DEFAULT_POLICY,
        "margin": {"default": MARGIN.default, "range": MARGIN.describe()},
    }
