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


def torch_fused(maps, out_hw) -> np.ndarray:
    ups = [F.interpolate(torch.from_numpy(m)[None, None], size=out_hw, mode="bilinear",
                         align_corners=False)[0, 0] for m in maps]
    product = ups[0] * ups[3] * ups[2] * ups[1]  # the official order
    return product.numpy()


def _blur(x, kernel: int, sigma: float):
    g = torch.exp(-((torch.arange(kernel, dtype=torch.float32) - kernel // 2) ** 2)
                  / (2 * sigma**2))
    g = g / g.sum()
    x = F.pad(x, (kernel // 2,) * 4, mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, kernel))
    return F.conv2d(x, g.view(1, 1, kernel, 1))


def torch_reference(maps, out_hw) -> np.ndarray:
    t = [torch.from_numpy(m)[None, None] for m in maps]
    size = t[0].shape[-2:]
    up = [t[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                   for x in t[1:]]
    post = [_blur(u, k, s) for u, (k, s) in zip(up, OFFICIAL_BLUR)]
    product = post[0] * post[3] * post[2] * post[1]
    return F.interpolate(product, size=out_hw, mode="bilinear", align_corners=True)[0, 0].numpy()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Level maps of the trained tiny model on a frame with a large hole, and its mask."""
    backend = open_backend(trained_model_path(tmp_path_factory))
    image, mask = hole_images(1)[0]
    maps = backend.infer(Preprocessor(backend.recipe)(image)[None])
    return [m[0] for m in maps], mask, backend.record


@pytest.mark.parametrize("out_hw", [(224, 224), (1080, 1920), (300, 400)])
def test_real_output_fused_and_reference_match_torch(real, out_hw):
    maps, _, _ = real
    fused, none = aggregate(maps, out_hw, None, "fused")
    assert none is None
    oracle = torch_fused(maps, out_hw)
    assert np.abs(fused - oracle).max() <= 1e-5 * max(1.0, float(oracle.max()))
    ref, _ = aggregate(maps, out_hw, None, "reference")
    oracle_ref = torch_reference(maps, out_hw)
    assert np.abs(ref - oracle_ref).max() <= 1e-5 * max(1.0, float(oracle_ref.max()))


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
        fused, mask = aggregate(maps, out_hw, 0.1, "fused")
        assert np.abs(fused - torch_fused(maps, out_hw)).max() <= 1e-5
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
