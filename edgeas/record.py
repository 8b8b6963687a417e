"""The one model record that travels checkpoint -> ONNX -> engine sidecar -> runtime.

A `ModelRecord` is frozen and typed. Its sections:
- `model`: preset, backbone, the levels (name, stride, output tensor), the optional
  decision head (`DecisionHead`: the graph output whose map the OK/NG decision is taken
  on instead of the aggregated map), classes and the data fingerprint;
- `preprocessing`: the recipe (`edgeas.preprocess.Recipe`);
- `postprocess`: aggregation (mode, per-level smoothing `blur`, level set), threshold,
  min_area;
- `precision` of the artifact, and one entry per stage that made it: `train`,
  `export`, `calibration`, `engine` (each a read-only mapping of what that stage did).

Stages never edit a record: `with_stage(...)` returns a new one. Every default a reader
might need is filled in once, when a file is read (`from_json`, in `edgeas.record_json`,
which also migrates schema-1 files); readers take the record and never a dict.

On disk the record is one flat JSON object whose keys are the public ones of
interfaces.md (`input_size`, `levels`, `threshold`, ... at the top level, and the
stages' keys such as `opset`, `export`, `calibration`, `tensorrt_version` beside them),
so existing tools keep reading it. Which top-level key belongs to which stage is the
table `STAGE_KEYS`. One key is shared: `calibration` is the calibration stage's record
in an ONNX file and, in an engine sidecar, what the engine build used (for a Q/DQ ONNX
the calibration stage's record itself, for TensorRT's own calibrator the build's).
Keys this edgeas does not know are kept verbatim (`extra`) and written back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from edgeas import __version__
from edgeas.preprocess import Recipe

SCHEMA = 3  # the newest this edgeas reads; 3 = a record with a decision head
BASE_SCHEMA = 2  # what a record without a decision head is written as (older readers)
ONNX_KEY = "edgeas"  # the ONNX metadata_props key holding the record as one JSON value
STAGES = ("train", "export", "calibration", "engine")
PRECISIONS = ("fp32", "fp16", "int8")
# Top-level JSON keys of each stage (what that stage adds to the record).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "train": ("config_sha256",),
    "export": ("weights", "opset", "export", "fp16"),
    "calibration": ("calibration", "quantization"),
    "engine": (
        "tensorrt_version", "tensorrt_flavour", "gpu", "compute_capability", "gpu_reason",
        "onnx_file", "onnx_sha256", "onnx_conversion", "inputs", "outputs", "build_options",
        "engine_sha256", "engine_bytes", "build_seconds", "built_at",
    ),
}
# The key that proves a JSON object is an engine sidecar (then `calibration` is the engine's).
ENGINE_MARK = "tensorrt_version"
CORE_KEYS = (
    "schema", "edgeas_version", "preset", "backbone", "input_size", "channel_order",
    "interpolation", "mean", "std", "levels", "aggregation", "threshold", "min_area",
    "classes", "data_fingerprint", "precision",
)
# Keys a schema-1 file must hold; the others are filled in by the migration.
REQUIRED_V1 = (
    "schema", "edgeas_version", "preset", "backbone", "input_size", "mean", "std", "levels",
    "aggregation", "threshold", "min_area", "classes",
)

Stage = Mapping[str, Any]


def freeze(value: Any) -> Any:
    """Deep read-only copy: mappings become MappingProxyType, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain JSON-able copy of a frozen value (dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


EMPTY: Stage = MappingProxyType({})


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Level:
    name: str  # res1 (finest) .. res4
    stride: int
    output: str  # the graph output holding its raw distance map


@dataclass(frozen=True)
class DecisionHead:
    """A second map the OK/NG decision is taken on (edgeas.decision_head).

    `knn`: the distance of each patch of the frozen backbone's features (res3 and res4,
    3x3 averaged, at res3's grid) to its nearest neighbour in a memory bank of the
    training images' patches, a graph output of its own. Its map is that grid resized
    to the input (half-pixel bilinear) and smoothed by a Gaussian of `sigma` input
    pixels; the threshold, min_area and decision rule apply to it, while the aggregated
    UniAS map stays the heat map that shows where.
    """

    kind: str  # "knn"
    output: str  # the graph output holding the (N, 1, h, w) distance grid
    stride: int  # input pixels per grid cell
    sigma: float  # Gaussian on the map at input size, input pixels
    bank: int = 0  # memory bank entries (for the record; the bank itself is in the graph)
    # the UniAS map's own threshold, fitted like the decision's on the same images: the
    # scale of the heat map and its outline (None: the map's maximum is the top)
    map_threshold: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "output": self.output, "stride": self.stride,
                "sigma": self.sigma, "bank": self.bank, "map_threshold": self.map_threshold}


@dataclass(frozen=True)
class ModelInfo:
    preset: str | None
    backbone: str
    levels: tuple[Level, ...]
    classes: tuple[str, ...] = ()
    data_fingerprint: str | None = None
    head: DecisionHead | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        """The graph outputs a runtime fetches: the levels, res1 first, then the
        decision head's output when the model has one."""
        return self.level_outputs + ((self.head.output,) if self.head else ())

    @property
    def level_outputs(self) -> tuple[str, ...]:
        return tuple(level.output for level in self.levels)

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(level.name for level in self.levels)


@dataclass(frozen=True)
class Aggregation:
    """The setting (what is computed: smoothing and level set, then the product) and the
    mode (how: `reference` or `fused`, equal up to interpolation error)."""

    mode: str  # how it is computed: an entry of edgeas.postprocess.AGGREGATION_MODES
    blur: tuple[tuple[int, float], ...]  # (kernel, sigma) per level, res1 first; () = none
    levels: tuple[str, ...] = ()  # names of the levels multiplied; () = every level


@dataclass(frozen=True)
class Threshold:
    value: float | None  # None: unset, the runtime then requires an override
    policy: str
    param: float
    mode: str  # the aggregation mode of the maps it was fitted on
    min_area: int = 0  # the decision rule's min_area it was fitted with (model pixels)
    images: int | None = None  # how many held-out normal images (None: not recorded)
    margin: float = 1.0  # the multiplicative margin applied to the fitted value
    # class -> value, fitted the same way on each class's held-out images (may be empty)
    per_class: Mapping[str, float] = field(default_factory=lambda: EMPTY)
    # the records this one replaced (`edgeas threshold fit`), oldest first, each as JSON
    history: tuple[Stage, ...] = ()
    # keys of later schemas, kept verbatim
    extra: Stage = field(default_factory=lambda: EMPTY)

    @property
    def is_set(self) -> bool:
        return self.value is not None

    def to_json(self) -> dict[str, Any]:
        out = {**thaw(self.extra), "value": self.value, "policy": self.policy,
               "param": self.param, "mode": self.mode, "min_area": self.min_area,
               "images": self.images, "margin": self.margin}
        if self.per_class:  # optional in the file (interfaces.md)
            out["per_class"] = dict(self.per_class)
        out["history"] = [thaw(h) for h in self.history]
        return out


@dataclass(frozen=True)
class PostProcessing:
    aggregation: Aggregation
    threshold: Threshold
    min_area: int = 0


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class ModelRecord:
    model: ModelInfo
    preprocessing: Recipe
    postprocess: PostProcessing
    precision: str = "fp32"
    train: Stage | None = None
    export: Stage | None = None
    calibration: Stage | None = None
    engine: Stage | None = None
    edgeas_version: str = __version__
    extra: Stage = field(default_factory=lambda: EMPTY)

    # convenient views (the sections stay the source)
    @property
    def threshold(self) -> Threshold:
        return self.postprocess.threshold

    @property
    def aggregation(self) -> Aggregation:
        return self.postprocess.aggregation

    @property
    def min_area(self) -> int:
        return self.postprocess.min_area

    def stage(self, name: str) -> Stage | None:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r} (stages: {', '.join(STAGES)})")
        return getattr(self, name)

    def with_stage(self, name: str, data: Mapping[str, Any] | None,
                   precision: str | None = None) -> ModelRecord:
        """A new record in which stage `name` is `data` (None removes it); `precision`
        is the new artifact's precision when the stage changes it."""
        self.stage(name)
        if data is not None:
            allowed = set(STAGE_KEYS[name]) | ({"calibration"} if name == "engine" else set())
            unknown = sorted(set(data) - allowed)
            if unknown:
                raise ValueError(f"stage {name} has no key(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(allowed))})")
        changes: dict[str, Any] = {name: None if data is None else freeze(data)}
        if precision is not None:
            if precision not in PRECISIONS:
                raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
            changes["precision"] = precision
        return dataclasses.replace(self, **changes)

    def with_postprocess(self, postprocess: PostProcessing) -> ModelRecord:
        return dataclasses.replace(self, postprocess=postprocess)

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        """The flat JSON object written into checkpoints, ONNX files and sidecars."""
        m, post = self.model, self.postprocess
        out: dict[str, Any] = dict(thaw(self.extra))
        out.update(
            schema=SCHEMA if m.head is not None else BASE_SCHEMA,
            edgeas_version=self.edgeas_version,
            preset=m.preset,
            backbone=m.backbone,
            **self.preprocessing.to_metadata(),
            levels=[{"name": lv.name, "stride": lv.stride, "output": lv.output}
                    for lv in m.levels],
            aggregation={"mode": post.aggregation.mode,
                         "blur": [[k, s] for k, s in post.aggregation.blur],
                         "levels": list(post.aggregation.levels or m.level_names)},
            threshold=post.threshold.to_json(),
            min_area=post.min_area,
            classes=list(m.classes),
            data_fingerprint=m.data_fingerprint,
            precision=self.precision,
        )
        if m.head is not None:
            out["decision_head"] = m.head.to_json()
        for name in ("train", "export", "calibration"):
            out.update(thaw(getattr(self, name) or {}))
        if self.engine is not None:
            # the sidecar's `calibration` is what the build used (None when it used none)
            out.update(thaw(self.engine))
            out["calibration"] = thaw(self.engine.get("calibration"))
        return out

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), sort_keys=False)

    @classmethod
    def from_json(cls, data: Any, source: str) -> ModelRecord:
        """Validate and type a JSON object of any schema this edgeas knows (1 or 2)."""
        from edgeas.record_json import parse_record

        return parse_record(data, source)


# --------------------------------------------------------------------------- construction


def config_hash(cfg_dict: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg_dict, sort_keys=True).encode()).hexdigest()[:16]


def level_records(strides: list[int]) -> tuple[Level, ...]:
    return tuple(Level(f"res{i + 1}", int(s), f"dist_res{i + 1}") for i, s in enumerate(strides))


def new_record(
    *,
    preset: str | None,
    backbone: str,
    recipe: Recipe,
    strides: list[int],
    postprocess: PostProcessing,
    classes: list[str],
    data_fingerprint: str | None,
    config: Mapping[str, Any],
    head: DecisionHead | None = None,
) -> ModelRecord:
    """The record of a freshly trained, imported or randomly initialised model: the one
    constructor (training, `import-official` and `export --random-init` all call it)."""
    record = ModelRecord(
        model=ModelInfo(preset, str(backbone), level_records(strides), tuple(classes),
                        data_fingerprint, head),
        preprocessing=recipe,
        postprocess=postprocess,
        train=freeze({"config_sha256": config_hash(config)}),
    )
    # one round trip proves that what is written can be read back
    return ModelRecord.from_json(record.to_json(), "new model record")


__all__ = [
    "ONNX_KEY", "SCHEMA", "STAGES", "STAGE_KEYS", "Aggregation", "DecisionHead", "Level",
    "ModelInfo",
    "ModelRecord", "PostProcessing", "Threshold", "config_hash", "new_record", "thaw",
]
