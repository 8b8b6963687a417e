from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeas import __version__
from edgeas.errors import ConfigError, DataError
from edgeas.train import synth
from edgeas.train.defects import DEFECT_KINDS
from edgeas.train.synth import (
    CLASSES,
    DEFAULT_CLASSES,
    make_dataset,
    make_defective,
    split_counts,
    synth_command,
)

SIZE = 64
PER_CLASS = 4  # -> 2 normal and 5 anomalous test images: one per defect kind


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("synth")
    out = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out[name] = base / name
        make_dataset(out[name], classes="brick,coffee", per_class=PER_CLASS, seed=seed, size=SIZE)
    return out


def test_split_counts_follow_the_documented_rule() -> None:
    assert split_counts(80) == (20, 30)
    assert split_counts(4) == (2, len(DEFECT_KINDS))
    assert split_counts(1) == (2, len(DEFECT_KINDS))
    assert split_counts(16) == (4, 6)


def test_default_classes_are_known_and_enough() -> None:
    assert len(DEFAULT_CLASSES) >= 5
    assert set(DEFAULT_CLASSES) <= set(CLASSES)
    assert all(name.islower() and name.isalpha() for name in CLASSES)


def test_layout_and_manifest(sets: dict[str, Path]) -> None:
    root = sets["a"]
    assert sorted(p.name for p in root.iterdir()) == ["brick", "coffee", "dataset.json"]
    manifest = json.loads((root / "dataset.json").read_text())
    assert manifest["classes"] == ["brick", "coffee"]
    assert (manifest["seed"], manifest["size"]) == (3, SIZE)
    assert manifest["edgeas_version"] == __version__
    assert manifest["sources"]["brick"]["photo"] == "skimage.data.brick"
    for cls in ("brick", "coffee"):
        counts = manifest["counts"][cls]
        assert counts["train"] == {"good": PER_CLASS}
        assert counts["test"] == {"good": 2, **dict.fromkeys(DEFECT_KINDS, 1)}
        for split, per_kind in counts.items():
            for kind, n in per_kind.items():
                assert len(list((root / cls / split / kind).glob("*.png"))) == n
        # every defect kind appears, each image with its mask of the same stem
        for kind in DEFECT_KINDS:
            images = sorted((root / cls / "test" / kind).glob("*.png"))
            masks = sorted((root / cls / "ground_truth" / kind).glob("*.png"))
            assert [p.stem + "_mask" for p in images] == [m.stem for m in masks]
    # no temporary folder left beside OUT
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]


def test_masks_are_binary_nonempty_and_match_their_images(sets: dict[str, Path]) -> None:
    masks = sorted(sets["a"].glob("*/ground_truth/*/*_mask.png"))
    assert len(masks) == 2 * len(DEFECT_KINDS)
    for mask_path in masks:
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        kind = mask_path.parent.name
        image_path = mask_path.parents[2] / "test" / kind / mask_path.name.replace("_mask", "")
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        assert mask.ndim == 2 and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 255}, mask_path
        assert mask.shape == image.shape[:2] == (SIZE, SIZE)


def test_images_are_the_requested_size_and_grey_classes_stay_grey(sets: dict[str, Path]) -> None:
    brick = cv2.imread(str(sets["a"] / "brick/train/good/000.png"), cv2.IMREAD_UNCHANGED)
    coffee = cv2.imread(str(sets["a"] / "coffee/train/good/000.png"), cv2.IMREAD_UNCHANGED)
    assert brick.shape == (SIZE, SIZE)  # one channel, as MVTec stores its grey classes
    assert coffee.shape == (SIZE, SIZE, 3)
    assert coffee.std() > 10  # a photograph, not a flat colour


def test_same_seed_gives_identical_bytes(sets: dict[str, Path]) -> None:
    a, b = _files(sets["a"]), _files(sets["b"])
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)


def test_different_seed_gives_different_images(sets: dict[str, Path]) -> None:
    a, c = _files(sets["a"]), _files(sets["c"])
    pngs = [k for k in a if k.endswith(".png") and "ground_truth" not in k]
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in pngs)


def test_training_images_vary(sets: dict[str, Path]) -> None:
    images = [cv2.imread(str(p)) for p in sorted(sets["a"].glob("coffee/train/good/*.png"))]
    diffs = [np.abs(x.astype(int) - images[0]).mean() for x in images[1:]]
    assert min(diffs) > 1.0  # shift / rotation / photometric drift, not copies


def test_a_class_looks_the_same_in_any_subset(sets: dict[str, Path], tmp_path: Path) -> None:
    make_dataset(tmp_path / "one", classes=["coffee"], per_class=PER_CLASS, seed=3, size=SIZE)
    one = _files(tmp_path / "one" / "coffee")
    both = _files(sets["a"] / "coffee")
    assert one == both


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("size", [64, 224])
def test_pixels_change_inside_the_mask_only(kind: str, size: int) -> None:
    for i, cls in enumerate(["brick", "coffee", "coins", "tissue"]):
        rng = np.random.default_rng([7, size, i])
        clean, bad, mask = make_defective(cls, kind, size, rng)
        assert mask.any() and mask.shape == (size, size)
        change = np.abs(bad.astype(np.int16) - clean.astype(np.int16)).max(axis=2)
        inside = change[mask].mean()
        assert inside >= 8, (cls, kind, inside)
        if kind == "stain":
            # a soft edge: a faint fringe outside, well below the change inside
            assert change[~mask].mean() < 0.1 * inside
            assert np.percentile(change[mask], 10) > 0
        else:
            assert change[~mask].max() == 0, (cls, kind)


def test_defect_sizes_vary_down_to_a_few_pixels() -> None:
    areas = []
    for i in range(40):
        _, _, mask = make_defective("gravel", "hole", 224, np.random.default_rng([11, i]))
        areas.append(int(mask.sum()))
    assert min(areas) < 40 and max(areas) > 400


def test_unknown_class_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_dataset(tmp_path / "x", classes="brick,widget", per_class=2, size=SIZE)
    assert "widget" in str(err.value) and "coffee" in str(err.value.hint)
    assert not (tmp_path / "x").exists()


def test_existing_nonempty_out_is_refused_and_empty_out_is_used(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty folder"):
        make_dataset(busy, classes="brick", per_class=2, size=SIZE)
    assert (busy / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    make_dataset(empty, classes="brick", per_class=2, size=SIZE)
    assert (empty / "dataset.json").is_file()


@pytest.mark.parametrize("kwargs", [{"per_class": 0}, {"size": 8}, {"seed": -1}])
def test_bad_arguments_are_config_errors(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        make_dataset(tmp_path / "x", classes="brick", **kwargs)


def test_a_crash_leaves_no_half_data_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = synth._write_png

    def failing(path, img, gray=False):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        real(path, img, gray)

    monkeypatch.setattr(synth, "_write_png", failing)
    with pytest.raises(OSError, match="disk full"):
        make_dataset(tmp_path / "out", classes="brick", per_class=4, size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_synth_command_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    synth_command(tmp_path / "demo", "coins", 2, 0, SIZE)
    out = capsys.readouterr().out
    assert "coins" in out and "edgeas train" in out
    assert (tmp_path / "demo" / "coins" / "train" / "good" / "001.png").is_file()


def test_cli_unknown_class_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgeas", "synth", str(tmp_path / "x"), "--classes", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "nope" in result.stderr and "brick" in result.stderr
