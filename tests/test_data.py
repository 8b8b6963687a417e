from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgeas.errors import ConfigError, DataError
from edgeas.preprocess import IMAGENET_MEAN, IMAGENET_STD, Recipe, preprocess_bgr
from edgeas.train.data import (
    Sample,
    data_fingerprint,
    index_dataset,
    read_image,
    read_mask,
    split_train_val,
)
from edgeas.train.datasets import TestImages, TrainImages
from edgeas.train.defects import DEFECT_KINDS
from edgeas.train.synth import make_dataset

RECIPE = Recipe(input_size=(32, 32), mean=IMAGENET_MEAN, std=IMAGENET_STD)


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "mvtec"
    make_dataset(root, classes="coffee,brick", per_class=6, seed=1, size=48)
    return root


def _png(path: Path, shape: tuple[int, ...], value: int = 128, seed: int = 0) -> Path:
    img = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    img[: shape[0] // 2] = value  # something other than pure noise
    _write(path, img)
    return path


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def _plain(root: Path) -> Path:
    for i in range(3):
        _png(root / "good" / f"{i}.png", (20, 24, 3), seed=i)
    _png(root / "test" / "good" / "t0.png", (20, 24, 3), seed=10)
    _png(root / "test" / "crack" / "c0.png", (20, 24, 3), seed=11)
    mask = np.zeros((20, 24), np.uint8)
    mask[5:9, 6:12] = 255
    _write(root / "ground_truth" / "crack" / "c0_mask.png", mask)
    return root


def _visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for cls in ("pcb1", "candle"):
        for i in range(3):
            rel = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            _png(root / rel, (30, 40, 3), seed=i)
            rows.append(f"{cls},{'train' if i < 2 else 'test'},normal,{rel},")
        rel, mrel = f"{cls}/Data/Images/Anomaly/000.JPG", f"{cls}/Data/Masks/Anomaly/000.png"
        _png(root / rel, (30, 40, 3), seed=9)
        mask = np.zeros((30, 40), np.uint8)
        mask[3:7, 3:9] = 1  # VisA masks use small label values, not 255
        _write(root / mrel, mask)
        rows.append(f"{cls},test,anomaly,{rel},{mrel}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


# ---------------------------------------------------------------- indexing


def test_mvtec_layout_from_synth(mvtec: Path) -> None:
    index = index_dataset(mvtec)
    assert index.layout == "mvtec" and index.root == mvtec.resolve()
    assert index.classes == ["brick", "coffee"]
    assert len(index.train) == 2 * 6
    assert all(s.defect == "good" and s.mask is None for s in index.train)
    defects = [s for s in index.test if s.defect != "good"]
    assert {s.defect for s in defects} == set(DEFECT_KINDS)
    assert all(s.mask is not None and s.mask.name == f"{s.path.stem}_mask.png" for s in defects)
    assert len(index.test) - len(defects) == 2 * 2
    keys = [(s.cls, str(s.path)) for s in index.train + index.test]
    assert keys[: len(index.train)] == sorted(keys[: len(index.train)])
    assert index_dataset(mvtec) == index  # deterministic


def test_class_selection_and_single_class_root(mvtec: Path) -> None:
    only = index_dataset(mvtec, classes=["coffee"])
    assert only.classes == ["coffee"] and {s.cls for s in only.train + only.test} == {"coffee"}
    assert index_dataset(mvtec / "coffee", check_files=False).train == only.train
    with pytest.raises(DataError, match="teapot") as err:
        index_dataset(mvtec, classes=["teapot"])
    assert "brick" in err.value.hint


def test_plain_layout(tmp_path: Path) -> None:
    index = index_dataset(_plain(tmp_path / "widget"))
    assert index.layout == "plain" and index.classes == ["widget"]
    assert [s.path.name for s in index.train] == ["0.png", "1.png", "2.png"]
    tests = [(s.defect, s.path.name) for s in index.test]
    assert tests == [("crack", "c0.png"), ("good", "t0.png")]
    assert index.test[0].mask == tmp_path / "widget" / "ground_truth" / "crack" / "c0_mask.png"


def test_plain_layout_without_test_folder(tmp_path: Path) -> None:
    _png(tmp_path / "part" / "good" / "a.png", (8, 8, 3))
    index = index_dataset(tmp_path / "part")
    assert len(index.train) == 1 and index.test == []


def test_visa_layout(tmp_path: Path) -> None:
    root = _visa(tmp_path / "visa")
    index = index_dataset(root)
    assert index.layout == "visa" and index.classes == ["candle", "pcb1"]
    assert len(index.train) == 4 and len(index.test) == 4
    anomalies = [s for s in index.test if s.defect != "good"]
    assert [s.defect for s in anomalies] == ["anomaly", "anomaly"]
    assert anomalies[0].mask == root.resolve() / "candle/Data/Masks/Anomaly/000.png"
    assert read_mask(anomalies[0].mask, (30, 40)).sum() == 4 * 6


def test_visa_problems_are_collected(tmp_path: Path) -> None:
    root = _visa(tmp_path / "visa")
    (root / "pcb1/Data/Masks/Anomaly/000.png").unlink()
    (root / "candle/Data/Images/Normal/0000.JPG").unlink()
    with pytest.raises(DataError) as err:
        index_dataset(root)
    message = str(err.value)
    assert "pcb1/Data/Images/Anomaly/000.JPG: defect image without a mask" in message
    assert "candle/Data/Images/Normal/0000.JPG" in message and "does not exist" in message


def test_all_problems_reported_in_one_error(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    base = root / "screw"
    _png(base / "train/good/ok.png", (16, 16, 3))
    (base / "train/good/garbage.png").write_bytes(b"this is not a png at all")
    (base / "train/good/empty.png").write_bytes(b"")
    _png(base / "test/scratch/nomask.png", (16, 16, 3))
    _png(base / "test/scratch/wrongsize.png", (16, 16, 3))
    _png(base / "ground_truth/scratch/wrongsize_mask.png", (10, 12))
    with pytest.raises(DataError) as err:
        index_dataset(root)
    message = str(err.value)
    assert "4 problem(s)" in message
    assert "garbage.png: not a readable image" in message
    assert "empty.png: empty file" in message
    assert "nomask.png: defect image without a mask" in message
    assert "wrongsize_mask.png: mask is 12x10" in message
    # without decoding, only the structural problem is left
    with pytest.raises(DataError) as err:
        index_dataset(root, check_files=False)
    assert "1 problem(s)" in str(err.value) and "nomask.png" in str(err.value)


def test_class_without_training_images(tmp_path: Path) -> None:
    (tmp_path / "set" / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no training images"):
        index_dataset(tmp_path / "set")


def test_unknown_layout_and_missing_root(tmp_path: Path) -> None:
    (tmp_path / "odd" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="unknown data set layout") as err:
        index_dataset(tmp_path / "odd")
    for layout in ("MVTec AD", "VisA", "plain", "split_csv/1cls.csv", "train/good"):
        assert layout in err.value.hint
    with pytest.raises(DataError, match="does not exist"):
        index_dataset(tmp_path / "nowhere")


# ---------------------------------------------------------------- helpers


def test_split_train_val_is_deterministic_and_per_class(mvtec: Path) -> None:
    samples = index_dataset(mvtec, check_files=False).train
    train, val = split_train_val(samples, 0.2, seed=5)
    assert split_train_val(list(reversed(samples)), 0.2, seed=5) == (train, val)
    assert sorted(train + val, key=str) == sorted(samples, key=str)
    assert not set(train) & set(val)
    for cls in ("brick", "coffee"):
        assert sum(s.cls == cls for s in val) == 1  # round(6 * 0.2) = 1
    seeds = {tuple(s.path for s in split_train_val(samples, 0.5, seed)[1]) for seed in range(6)}
    assert len(seeds) > 1  # the seed matters
    assert split_train_val(samples, 0.0, seed=5) == (sorted(samples, key=lambda s: s.cls), [])


def test_split_keeps_one_val_and_one_train_image() -> None:
    two = [Sample(Path(f"/x/{i}.png"), "a", "good", None) for i in range(2)]
    one = [Sample(Path("/y/0.png"), "b", "good", None)]
    train, val = split_train_val(two + one, 0.01, seed=0)
    assert len(val) == 1 and val[0].cls == "a"
    train, val = split_train_val(two, 0.9, seed=0)
    assert len(train) == 1 and len(val) == 1


def test_read_image_and_mask(tmp_path: Path) -> None:
    gray = _png(tmp_path / "g.png", (10, 14))
    img = read_image(gray)
    assert img.shape == (10, 14, 3) and img.dtype == np.uint8
    label16 = tmp_path / "m.png"
    mask = np.zeros((10, 14), np.uint16)
    mask[2:4, 3:8] = 1
    _write(label16, mask)
    small = read_mask(label16, (5, 7))
    assert small.dtype == np.uint8 and small.shape == (5, 7)
    assert set(np.unique(small).tolist()) == {0, 1}
    assert read_mask(label16, (10, 14)).sum() == 2 * 5
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(DataError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_fingerprint_is_location_independent_and_sensitive(mvtec: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(mvtec, copy)
    fp = data_fingerprint(index_dataset(mvtec, check_files=False))
    assert len(fp) == 64
    assert data_fingerprint(index_dataset(copy, check_files=False)) == fp
    with (copy / "brick/train/good/000.png").open("ab") as handle:
        handle.write(b"\0")  # one byte longer
    assert data_fingerprint(index_dataset(copy, check_files=False)) != fp


# ---------------------------------------------------------------- torch datasets


def test_train_images_equal_the_reference_preprocessing(mvtec: Path) -> None:
    index = index_dataset(mvtec)
    ds = TrainImages(index.train, RECIPE, None, index.classes)
    image, cls = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert cls == index.classes.index(index.train[0].cls)
    reference = preprocess_bgr(cv2.imread(str(index.train[0].path), cv2.IMREAD_COLOR), RECIPE)
    assert np.abs(image.numpy() - reference).max() <= 1e-6


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for flip in (False, True):
        y = torch.flip(x, dims=(2,)) if flip else x
        out += [torch.rot90(y, k, dims=(1, 2)) for k in range(4)]
    return out


def test_augmentation_only_touches_listed_classes(mvtec: Path) -> None:
    index = index_dataset(mvtec)
    plain = TrainImages(index.train, RECIPE, None, index.classes)
    aug = TrainImages(
        index.train, RECIPE, {"coffee": ["hflip", "vflip", "rot90"]}, index.classes, seed=3
    )
    changed = 0
    for epoch in range(4):
        aug.set_epoch(epoch)
        for i, sample in enumerate(index.train):
            x, y = aug[i][0], plain[i][0]
            if sample.cls == "brick":
                assert torch.equal(x, y)
            else:
                assert any(torch.equal(x, d) for d in _dihedral(y))
                changed += not torch.equal(x, y)
    assert changed > 0
    aug.set_epoch(2)
    again = TrainImages(
        index.train, RECIPE, {"coffee": ["hflip", "vflip", "rot90"]}, index.classes, seed=3
    )
    again.set_epoch(2)
    assert all(torch.equal(aug[i][0], again[i][0]) for i in range(len(aug)))


def test_augmentation_is_reproducible_across_workers(mvtec: Path) -> None:
    index = index_dataset(mvtec)
    ds = TrainImages(index.train, RECIPE, {"coffee": ["hflip", "rot90"]}, index.classes, seed=1)
    ds.set_epoch(1)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        batches.append(torch.cat([x for x, _ in loader]))
    assert torch.equal(batches[0], batches[1])


def test_bad_augmentation_config(mvtec: Path) -> None:
    index = index_dataset(mvtec, check_files=False)
    with pytest.raises(ConfigError, match="blur"):
        TrainImages(index.train, RECIPE, {"coffee": ["blur"]}, index.classes)
    wide = Recipe(input_size=(32, 48), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with pytest.raises(ConfigError, match="square"):
        TrainImages(index.train, wide, {"coffee": ["rot90"]}, index.classes)
    with pytest.raises(DataError, match="coffee"):
        TrainImages(index.train, RECIPE, None, ["brick"])


def test_test_images_masks_and_classes(mvtec: Path) -> None:
    index = index_dataset(mvtec)
    recipe = Recipe(input_size=(48, 96), mean=IMAGENET_MEAN, std=IMAGENET_STD)  # no pixel lost
    by_index = TestImages(index.test, recipe, index.classes)
    by_name = TestImages(index.test, recipe)
    for i, sample in enumerate(index.test):
        image, mask, cls, path = by_index[i]
        assert image.shape == (3, 48, 96) and image.dtype == torch.float32
        assert mask.shape == (48, 96) and mask.dtype == torch.uint8
        assert set(mask.unique().tolist()) <= {0, 1}
        assert (mask.sum() > 0) == (sample.defect != "good")
        assert cls == index.classes.index(sample.cls) and path == str(sample.path)
        assert by_name[i][2] == sample.cls
