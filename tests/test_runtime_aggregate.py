"""edgeas.runtime.aggregate on real model output and random maps: fused, reference, and
PyTorch's F.interpolate as the oracle of both (torch only here, never in the runtime)."""

from __future__ import annotations

import numpy as np
import pytest
from test_stream_support import hole_images, trained_model_path

from edgeas.postprocess import OFFICIAL_BLUR
from edgeas.runtime import aggregate, decide, open_backend, remove_small_regions
from edgeas.runtime.preprocess import Preprocessor

torch = pytest.importorskip("torch")
F = torch.nn.functional


SETTINGS = {"official": OFFICIAL_BLUR, "none": (), "given": ((5, 1.0), (3, 0.6), (7, 2.0),
                                                              (3, 1.0))}


def _conv(x, ky, kx):
    """Separable filter along x then y with a reflect border, as torch does it."""
    kx, ky = torch.tensor(np.asarray(kx)), torch.tensor(np.asarray(ky))
    x = F.pad(x, (kx.numel() // 2, kx.numel() // 2, 0, 0), mode="reflect")
    x = F.conv2d(x, kx.view(1, 1, 1, -1).float())
    x = F.pad(x, (0, 0, ky.numel() // 2, ky.numel() // 2), mode="reflect")
    return F.conv2d(x, ky.view(1, 1, -1, 1).float())


def _gauss(kernel: int, sigma: float):
    g = torch.exp(-((torch.arange(kernel, dtype=torch.float32) - kernel // 2) ** 2)
                  / (2 * sigma**2))
    return g / g.sum()


def _torch_smoothed_at_finest(maps, smoothing):
    """The reference's first two steps: each level to the finest size, smoothed there."""
    t = [torch.from_numpy(m)[None, None] for m in maps]
    size = t[0].shape[-2:]
    up = [t[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                   for x in t[1:]]
    return [_conv(u, _gauss(k, s), _gauss(k, s)) for u, (k, s) in zip(up, smoothing)] \
        if smoothing else up


def torch_fused(maps, out_hw, smoothing=()) -> np.ndarray:
    """The fused setting in torch: the levels smoothed at the finest size, each sampled
    align-corners at out_hw, then the product (the reference samples the product)."""
    post = _torch_smoothed_at_finest(maps, smoothing)
    ups = [F.interpolate(x, size=out_hw, mode="bilinear", align_corners=True)[0, 0]
           for x in post]
    product = ups[0] * ups[3] * ups[2] * ups[1]  # the official order
    return product.numpy()


def torch_reference(maps, out_hw, smoothing=OFFICIAL_BLUR) -> np.ndarray:
    """The straightforward implementation of a setting (the official code's), in torch."""
    post = _torch_smoothed_at_finest(maps, smoothing)
    product = post[0] * post[3] * post[2] * post[1]
    return F.interpolate(product, size=out_hw, mode="bilinear", align_corners=True)[0, 0].numpy()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Level maps of the trained tiny model on a frame with a large hole, and its mask."""
    backend = open_backend(trained_model_path(tmp_path_factory))
    image, mask = hole_images(1)[0]
    maps = backend.infer(Preprocessor(backend.recipe)(image)[None])
    return [m[0] for m in maps], mask, backend.record


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("out_hw", [(224, 224), (1080, 1920), (300, 400)])
def test_real_output_fused_and_reference_match_torch(real, out_hw, setting):
    maps, _, _ = real
    pairs = SETTINGS[setting]
    fused, none = aggregate(maps, out_hw, None, "fused", pairs)
    assert none is None
    oracle = torch_fused(maps, out_hw, pairs)
    assert np.abs(fused - oracle).max() <= 1e-5 * max(1.0, float(oracle.max()))
    ref, _ = aggregate(maps, out_hw, None, "reference", pairs)
    oracle_ref = torch_reference(maps, out_hw, pairs)
    assert np.abs(ref - oracle_ref).max() <= 1e-5 * max(1.0, float(oracle_ref.max()))


@pytest.mark.parametrize("setting", SETTINGS)
def test_fused_equals_the_straightforward_setting_up_to_interpolation_error(real, setting):
    """On a real model's maps: the two implementations of one setting agree to an
    interpolation error, sampling products of neighbouring differences on the finest grid
    (measured on the trained tiny model: at most 0.4-1.2% of the peak, 0.01% on average),
    with the same decision and nearly the same mask at a threshold."""
    maps, _, _ = real
    pairs = SETTINGS[setting]
    fused = aggregate(maps, (224, 224), None, "fused", pairs)[0]
    straight = torch_reference(maps, (224, 224), pairs)
    peak = float(straight.max())
    assert np.abs(fused - straight).max() <= 0.03 * peak
    assert np.abs(fused - straight).mean() <= 0.001 * peak
    for tau in (0.3 * peak, 0.6 * peak):
        a, b = fused >= tau, straight >= tau
        assert a.any() == b.any() and (a != b).mean() < 0.001


@pytest.mark.parametrize("mode", ["fused", "reference"])
def test_both_modes_find_the_hole_and_the_decision_boxes_it(real, mode):
    maps, gt, _ = real
    amap, mask = aggregate(maps, gt.shape, 0.5, mode)
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    assert gt[peak]
    np.testing.assert_array_equal(mask, (amap >= np.float32(0.5)).astype(np.uint8))
    clean = remove_small_regions(mask, 20)
    is_ng, regions = decide(clean, 20)
    assert is_ng and regions
    ys, xs = np.nonzero(gt)
    x, y, w, h = regions[0]
    # the region's box overlaps the defect's box
    assert x < xs.max() and xs.min() < x + w and y < ys.max() and ys.min() < y + h
    assert gt[clean.astype(bool)].mean() > 0.8  # most flagged pixels are on the defect


@pytest.mark.parametrize("seed", [0, 1])
def test_random_maps_fused_matches_torch(seed):
    rng = np.random.default_rng(seed)
    maps = [rng.uniform(0, 1, (s, s)).astype(np.float32) for s in (112, 56, 28, 14)]
    for out_hw in [(720, 1280), (97, 131)]:
        for pairs in SETTINGS.values():
            fused, mask = aggregate(maps, out_hw, 0.1, "fused", pairs)
            assert np.abs(fused - torch_fused(maps, out_hw, pairs)).max() <= 1e-5
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
