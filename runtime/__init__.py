"""edgeas.runtime: the inspection station side (maps -> anomaly map -> decision).

Importing this package needs only numpy and OpenCV: engines and ONNX Runtime
are imported lazily by the modules that run them, never here.
"""

from __future__ import annotations

from edgeas.aggregate import aggregate, decide, image_score, remove_small_regions

__all__ = ["aggregate", "decide", "image_score", "remove_small_regions"]
