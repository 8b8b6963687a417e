"""The runtime's fused preprocessing equals the training transform (preprocess_bgr)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeas.errors import StreamError
from edgeas.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
    Recipe,
    preprocess_bgr,
)
from edgeas.runtime.preprocess import Preprocessor

RECIPES = [
    Recipe((224, 224), IMAGENET_MEAN, IMAGENET_STD),
    Recipe((224, 224), LITE_MEAN, LITE_STD),
    Recipe((160, 192), (0.1, 0.5, 0.9), (0.3, 0.2, 0.1)),
]
SHAPES = [(1080, 1920, 3), (224, 224, 3), (480, 640, 4), (333, 517), (240, 320, 1), (17, 29, 3)]


def _frame(shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("recipe", RECIPES, ids=["imagenet", "lite", "odd"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_runtime_preprocessing_equals_the_training_transform(recipe, shape):
    frame = _frame(shape, seed=len(shape) + shape[0])
    expected = preprocess_bgr(frame, recipe)
    got = Preprocessor(recipe)(frame)
    assert got.shape == expected.shape == (3, *recipe.input_size)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-6


def test_writes_into_a_slot_of_a_batch_and_a_real_photo():
    from edgeas.train.synth import make_normal

    recipe = RECIPES[0]
    pre = Preprocessor(recipe)
    frames = [make_normal("coffee", 300, np.random.default_rng(1)), _frame((720, 1280, 3))]
    batch = np.full((2, 3, 224, 224), np.nan, np.float32)
    for i, f in enumerate(frames):
        pre.into(f, batch[i])
    for i, f in enumerate(frames):
        assert np.abs(batch[i] - preprocess_bgr(f, recipe)).max() <= 1e-6


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
        (np.zeros((0, 10, 3), np.uint8), "shape"),
        ("not an image", "uint8"),
    ],
)
def test_bad_frames_are_stream_errors(frame, message):
    with pytest.raises(StreamError, match=message):
        Preprocessor(RECIPES[0])(frame)
