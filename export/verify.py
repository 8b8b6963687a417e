"""The real images every exported graph is checked on. ONNX Runtime sessions, batched
runs and the error measures are the core's (`edgeas.ort`), shared with calibration and
the runtime. No torch here."""

from __future__ import annotations

import numpy as np

from edgeas.preprocess import preprocess_bgr
from edgeas.record import ModelRecord


def sample_images(record: ModelRecord, count: int = 4, seed: int = 0) -> np.ndarray:
    """`count` real images (photographs from scikit-image, normal and with a drawn defect,
    from the built-in inspection set), preprocessed with the artifact's own recipe."""
    from edgeas.train.synth import CLASSES, DEFECT_KINDS, make_defective, make_normal

    recipe = record.preprocessing
    size = max(recipe.input_size)
    rng = np.random.default_rng(seed)
    classes = sorted(CLASSES)
    frames = []
    for i in range(count):
        cls = classes[(i // 2 * 3) % len(classes)]
        if i % 2 == 0:
            frames.append(make_normal(cls, size, rng))
        else:
            frames.append(make_defective(cls, DEFECT_KINDS[i % len(DEFECT_KINDS)], size, rng)[1])
    return np.stack([preprocess_bgr(f, recipe) for f in frames])
