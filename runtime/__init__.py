"""edgeas.runtime: the inspection station side (frames -> maps -> decision -> sinks).

Importing this package needs only numpy, OpenCV and PyYAML: ONNX Runtime, TensorRT
and pycuda/cuda-python are imported lazily by the functions that run them, never here, and torch
never (a test imports the package with all four blocked).
"""

from __future__ import annotations

from edgeas.aggregate import (
    aggregate,
    clean_and_decide,
    decide,
    image_score,
    remove_small_regions,
)
from edgeas.runtime.backends import Backend, OnnxRuntimeBackend, open_backend
from edgeas.runtime.events import EventLog, EventWriter
from edgeas.runtime.pipeline import Pipeline
from edgeas.runtime.preprocess import Preprocessor
from edgeas.runtime.sink import FrameResult, Sink, SinkContext
from edgeas.runtime.sinks import build_sinks
from edgeas.runtime.sources import SourceSpec, open_source, parse_source
from edgeas.runtime.station import StreamOptions, load_station

__all__ = [
    "Backend",
    "EventLog",
    "EventWriter",
    "FrameResult",
    "OnnxRuntimeBackend",
    "Pipeline",
    "Preprocessor",
    "Sink",
    "SinkContext",
    "SourceSpec",
    "StreamOptions",
    "aggregate",
    "build_sinks",
    "clean_and_decide",
    "decide",
    "image_score",
    "load_station",
    "open_backend",
    "open_source",
    "parse_source",
    "remove_small_regions",
]
