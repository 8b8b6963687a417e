"""The parts of TensorRT 10's INT8 calibrator that need no GPU: the image list, its hash,
the batches and the cache with its provenance record."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeas.calibimages import file_list_sha256, list_images
from edgeas.errors import CalibrationError, DataError
from edgeas.export.trt_calibrator import CalibrationBatches, CalibrationCache
from edgeas.preprocess import IMAGENET_MEAN, IMAGENET_STD, Recipe, preprocess_bgr


def _images(folder, count, seed=0, size=(48, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (*size, 3), np.uint8))


def test_images_from_a_folder_or_every_class_train_good_spread_evenly(tmp_path):
    _images(tmp_path / "flat", 40)
    assert len(list_images(tmp_path / "flat")) == 40
    for cls in ("bottle", "cable"):
        _images(tmp_path / "mvtec" / cls / "train" / "good", 30, seed=len(cls))
        _images(tmp_path / "mvtec" / cls / "test" / "crack", 5)
    picked = list_images(tmp_path / "mvtec", limit=40)
    assert len(picked) == 40 and all("train/good" in p.as_posix() for p in picked)
    assert {p.parts[-4] for p in picked} == {"bottle", "cable"}  # both classes represented


def test_too_few_missing_or_unreadable_images_are_clear_errors(tmp_path):
    _images(tmp_path / "few", 31)
    with pytest.raises(CalibrationError, match="at least 32"):
        list_images(tmp_path / "few")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no png"):
        list_images(tmp_path / "empty")
    with pytest.raises(DataError, match="not a folder"):
        list_images(tmp_path / "nowhere")
    _images(tmp_path / "bad", 32)
    (tmp_path / "bad" / "000.png").write_bytes(b"not a png")
    recipe = Recipe((32, 32), IMAGENET_MEAN, IMAGENET_STD)
    batches = CalibrationBatches(list_images(tmp_path / "bad"), recipe, 8)
    with pytest.raises(DataError, match="000.png cannot be read"):
        next(iter(batches))


def test_batches_are_whole_and_preprocessed_with_the_recipe(tmp_path):
    _images(tmp_path / "imgs", 35)
    paths = list_images(tmp_path / "imgs")
    recipe = Recipe((32, 48), IMAGENET_MEAN, IMAGENET_STD)
    batches = CalibrationBatches(paths, recipe, 8)
    got = list(batches)
    assert len(batches) == len(got) == 4 and batches.count == 32  # 3 left over
    assert all(b.shape == batches.shape == (8, 3, 32, 48) and b.dtype == np.float32 for b in got)
    assert batches.nbytes == got[0].nbytes
    assert np.array_equal(got[1][0], preprocess_bgr(cv2.imread(str(paths[8])), recipe))


def test_file_list_hash_follows_names_order_and_contents(tmp_path):
    _images(tmp_path / "a", 32)
    paths = list_images(tmp_path / "a")
    first = file_list_sha256(paths, tmp_path / "a")
    assert first == file_list_sha256(paths, tmp_path / "a")
    assert first != file_list_sha256(paths[::-1], tmp_path / "a")
    _images(tmp_path / "a", 1, seed=9)  # same name, other pixels
    assert first != file_list_sha256(paths, tmp_path / "a")


def test_cache_is_reused_only_with_its_matching_record(tmp_path):
    provenance = {"method": "entropy2", "images": 32, "file_list_sha256": "aa"}
    cache = CalibrationCache(tmp_path / "m.calib", provenance)
    assert cache.read() is None and not cache.reused  # nothing yet
    cache.write(b"TRT-table")
    again = CalibrationCache(tmp_path / "m.calib", dict(provenance))
    assert again.read() == b"TRT-table" and again.reused
    other = CalibrationCache(tmp_path / "m.calib", dict(provenance, file_list_sha256="bb"))
    assert other.read() is None and "file_list_sha256" in other.stale_reason
    (tmp_path / "m.calib.json").unlink()
    orphan = CalibrationCache(tmp_path / "m.calib", provenance)
    assert orphan.read() is None and "no record" in orphan.stale_reason
