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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeas.errors import ConfigError

if TYPE_CHECKING:
    from edgeas.record import ModelRecord, Threshold

log = logging.getLogger("edgeas.stream")


def _did_you_mean(value: str, names: Any, what: str, where: str | None = None) -> ConfigError:
    names = list(names)
    close = difflib.get_close_matches(str(value), names, n=1)
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

    def describe(self) -> str:
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"<= {self.high:g}"
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
        bad |= self.high is not None and v > self.high
        if bad:
            raise ConfigError(f"{where}: {self.name} must be {self.describe()}, got {value!r}",
                              hint=f"e.g. {self.example or self.default}")
        return v


# --------------------------------------------------------------------------- threshold policies


@dataclass(frozen=True)
class ThresholdPolicy:
    name: str
    description: str
    param: ParamSpec
    fit: Callable[[list, float], float]  # (normal maps, parameter) -> tau

    def check(self, value: Any, where: str = "threshold.param") -> float:
        return self.param.check(value, where)


def _fit(name: str) -> Callable[[list, float], float]:
    def run(arrays: list, value: float) -> float:
        from edgeas import thresholds

        return getattr(thresholds, name)(arrays, value)

    run.__name__ = name
    return run


THRESHOLD_POLICIES: dict[str, ThresholdPolicy] = {
    p.name: p
    for p in (
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
DEFAULT_POLICY = "quantile"


def threshold_policy(name: str, where: str | None = None) -> ThresholdPolicy:
    if name not in THRESHOLD_POLICIES:
        raise _did_you_mean(name, THRESHOLD_POLICIES, "threshold policy", where)
    return THRESHOLD_POLICIES[name]


def check_threshold_setting(policy: str, param: Any, where: str) -> float:
    """Validate a (policy, param) pair as a config file gives it; returns the param used."""
    return threshold_policy(policy, f"{where}: threshold.policy").check(
        param, f"{where}: threshold.param ({policy})")


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class AggregationMode:
    """How the per-level maps become one map (protocol.md section 3)."""

    name: str
    description: str
    uses_blur: bool  # False: the mode ignores the smoothing setting (today's fused)


AGGREGATION_MODES: dict[str, AggregationMode] = {
    m.name: m
    for m in (
        AggregationMode("reference", "the official code's: resize to the finest level, "
                        "blur per level, multiply, upsample", uses_blur=True),
        AggregationMode("fused", "one pass at the output size sampling and multiplying the "
                        "levels, no blur", uses_blur=False),
    )
}
# What a config records when it says nothing, and what every trained model records
# today: the threshold is fitted on maps of this mode and the station runs it.
DEFAULT_MODE = "reference"

# Smoothing settings: (kernel, sigma) per level, res1 first. `official` = the reference
# code's (for res4..res1: (3, 1), (5, 5/3), (7, 7/3), (9, 3)).
OFFICIAL_BLUR: tuple[tuple[int, float], ...] = ((9, 3.0), (7, 7.0 / 3.0), (5, 5.0 / 3.0),
                                                 (3, 1.0))
SMOOTHINGS: dict[str, tuple[tuple[int, float], ...]] = {"official": OFFICIAL_BLUR}


def aggregation_mode(name: str, where: str | None = None) -> AggregationMode:
    if name not in AGGREGATION_MODES:
        raise _did_you_mean(name, AGGREGATION_MODES, "aggregation mode", where)
    return AGGREGATION_MODES[name]


def check_blur(blur: Any, n_levels: int) -> list[tuple[int, float]]:
    """(kernel, sigma) pairs, one per level; None = the official smoothing."""
    blur = OFFICIAL_BLUR if blur is None else blur
    pairs = [(int(k), float(s)) for k, s in blur]
    if len(pairs) != n_levels:
        raise ConfigError(
            f"blur has {len(pairs)} (kernel, sigma) pairs but there are {n_levels} levels"
        )
    for k, s in pairs:
        if k < 1 or k % 2 == 0 or not s > 0:
            raise ConfigError(f"invalid blur (kernel={k}, sigma={s})", hint="odd kernel, sigma > 0")
    return pairs


# --------------------------------------------------------------------------- records


def make_threshold(value: float | None, policy: str, param: Any, mode: str,
                   where: str = "threshold") -> Threshold:
    """A threshold record; value None means unset (the runtime then needs an override)."""
    from edgeas.record import Threshold

    used = threshold_policy(policy, where).check(param, f"{where}.param")
    aggregation_mode(mode, f"{where}.mode")
    if value is not None:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: threshold value must be finite, got {value}")
    return Threshold(value, policy, used, mode)


def postprocessing(mode: str, threshold: Threshold, min_area: int = 0,
                   blur: Any = None):
    """The record's post-processing section for a config's choices."""
    from edgeas.record import Aggregation, PostProcessing

    aggregation_mode(mode, "aggregation.mode")
    if int(min_area) < 0:
        raise ConfigError(f"min_area must be >= 0, got {min_area}")
    pairs = tuple(check_blur(blur, len(OFFICIAL_BLUR)))
    return PostProcessing(Aggregation(mode, pairs), threshold, int(min_area))


# --------------------------------------------------------------------------- the runtime's view


@dataclass(frozen=True)
class Settings:
    """What the station applies: from the model record, overridden where the user said so."""

    threshold: float
    threshold_origin: str
    min_area: int
    mode: str
    blur: list[tuple[int, float]] | None = None


def resolve(record: ModelRecord, threshold: float | None = None, min_area: int | None = None,
            mode: str | None = None, model: str = "the model") -> Settings:
    """Threshold, min_area and aggregation mode: explicit values over the record's."""
    fitted = record.threshold
    if threshold is not None:
        tau, origin = float(threshold), "override"
    elif fitted.value is not None:
        tau, origin = float(fitted.value), f"metadata ({fitted.policy}, {fitted.mode})"
    else:
        raise ConfigError(
            f"{model} has no fitted threshold (its metadata threshold.value is null)",
            hint="pass --threshold T (or `threshold:` in the station file), or train with "
            "held-out normal images so that one is fitted",
        )
    if not math.isfinite(tau):
        raise ConfigError(f"threshold must be finite, got {tau}")
    mode = mode or record.aggregation.mode
    aggregation_mode(mode)
    if origin != "override" and fitted.mode != mode:
        log.warning("the threshold was fitted on %s maps but the stream aggregates in %s mode; "
                    "decisions will shift (refit, or pass --threshold)", fitted.mode, mode)
    area = int(min_area if min_area is not None else record.min_area)
    if area < 0:
        raise ConfigError(f"min_area must be >= 0, got {area}")
    return Settings(tau, origin, area, mode, [tuple(b) for b in record.aggregation.blur])


def describe_registries() -> Mapping[str, Any]:
    """Names, defaults and parameter ranges (for `--help` texts and error hints)."""
    return {
        "aggregation_modes": {n: m.description for n, m in AGGREGATION_MODES.items()},
        "default_mode": DEFAULT_MODE,
        "threshold_policies": {n: {"param": p.param.name, "default": p.param.default,
                                   "range": p.param.describe()}
                               for n, p in THRESHOLD_POLICIES.items()},
        "default_policy": DEFAULT_POLICY,
    }
