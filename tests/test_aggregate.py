"""edgeas.aggregate: reference mode vs the official recordings, fused mode vs a torch oracle."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from blocked_python import run_without

from edgeas.aggregate import (
    aggregate,
    aggregate_batch,
    clean_and_decide,
    decide,
    gaussian_blur,
    image_score,
    reference_maps_batch,
    reference_stages,
    remove_small_regions,
    resize_bilinear,
    threshold_mask,
)
from edgeas.errors import ConfigError, ModelOutputError

TOL = 1e-5
RECORDINGS = ("tensors.npz", "tensors_noise_features.npz")
STAGE_NAMES = (
    [f"dist_up_res{i}" for i in range(1, 5)]
    + [f"dist_post_res{i}" for i in range(1, 5)]
    + ["anomaly_map_112", "anomaly_map", "image_score"]
)
# (level shapes res1..res4, output (H, W)): square and non-square inputs,
# integer and non-integer scale factors, odd sizes, a downscale.
FUSED_CASES = [
    ([(112, 112), (56, 56), (28, 28), (14, 14)], (1080, 1920)),
    ([(112, 112), (56, 56), (28, 28), (14, 14)], (224, 224)),
    ([(112, 112), (56, 56), (28, 28), (14, 14)], (333, 517)),
    ([(128, 160), (64, 80), (32, 40), (16, 20)], (479, 641)),
    ([(112, 112), (56, 56), (28, 28), (14, 14)], (90, 61)),
    ([(7, 5), (4, 3), (2, 2), (1, 1)], (1, 9)),
]


def _random_levels(rng: np.random.Generator, shapes) -> list[np.ndarray]:
    # rough maps in [0.2, 1.7): the hardest case for interpolation weights
    return [rng.uniform(0.2, 1.7, size=s).astype(np.float32) for s in shapes]


def _planted_levels(shapes, center=(0.7, 0.3), seed: int = 0) -> list[np.ndarray]:
    """Smooth low background plus one defect bump at the same relative place in every level."""
    rng = np.random.default_rng(seed)
    levels = []
    for h, w in shapes:
        field = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), max(h / 20, 0.8))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = center[0] * h, center[1] * w
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.05 * h) ** 2))
        levels.append((0.1 + 0.1 * field + 0.8 * bump).astype(np.float32))
    return levels


def _torch_fused(levels, out_hw, dtype):
    """Fused without smoothing in torch: each level to the finest size (half-pixel), then
    each sampled align-corners at out_hw, multiplied in the official order."""
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    t = [torch.from_numpy(m).to(dtype)[None, None] for m in levels]
    finest = t[0].shape[-2:]
    t = [x if x.shape[-2:] == finest else
         f.interpolate(x, size=finest, mode="bilinear", align_corners=False) for x in t]
    ups = [f.interpolate(x, size=out_hw, mode="bilinear", align_corners=True)[0, 0] for x in t]
    return (((ups[0] * ups[3]) * ups[2]) * ups[1]).numpy()


# --------------------------------------------------------------------------- reference mode


@pytest.fixture(scope="module", params=RECORDINGS)
def recorded(conformance_dir, request) -> dict[str, np.ndarray]:
    return dict(np.load(conformance_dir / request.param))


def _levels(rec: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [rec[f"dist_res{i}"] for i in range(1, 5)]


def test_reference_stages_match_the_official_recording(recorded):
    stages = reference_stages(_levels(recorded), (224, 224))
    for name in STAGE_NAMES:
        assert stages[name].shape == recorded[name].shape, name
        err = np.abs(stages[name] - recorded[name]).max()
        assert err <= TOL, f"{name}: max abs error {err:.3g}"


def test_reference_mode_per_image_and_batched_match_the_recording(recorded):
    levels = _levels(recorded)
    want = recorded["anomaly_map"][:, 0]
    batched = reference_maps_batch(levels, (224, 224))
    assert batched.dtype == np.float32
    assert np.abs(batched - want).max() <= TOL
    assert np.abs(aggregate_batch(levels, (224, 224), "reference") - want).max() <= TOL
    for b in range(want.shape[0]):
        amap, mask = aggregate([m[b] for m in levels], (224, 224), mode="reference")
        assert mask is None and amap.dtype == np.float32 and amap.shape == (224, 224)
        assert np.abs(amap - want[b]).max() <= TOL
        assert abs(image_score(amap) - float(recorded["image_score"][b])) <= TOL


def test_resize_and_blur_primitives_match_torch():
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 2, size=(2, 14, 19)).astype(np.float32)
    for out_hw in [(112, 112), (1080, 1920), (23, 7)]:
        for corners in (False, True):
            want = f.interpolate(
                torch.from_numpy(x)[:, None], size=out_hw, mode="bilinear", align_corners=corners
            )[:, 0].numpy()
            assert np.abs(resize_bilinear(x, out_hw, corners) - want).max() <= TOL
    y = rng.uniform(0, 2, size=(2, 31, 40)).astype(np.float32)
    for k, s in [(3, 1.0), (5, 5 / 3), (7, 7 / 3), (9, 3.0)]:
        r = np.arange(k, dtype=np.float32) - k // 2
        g = np.exp(-(r**2) / (2 * s * s))
        g = torch.from_numpy((g / g.sum()).astype(np.float32))
        padded = f.pad(torch.from_numpy(y)[:, None], (k // 2,) * 4, mode="reflect")
        want = f.conv2d(padded, torch.outer(g, g)[None, None])[:, 0].numpy()
        assert np.abs(gaussian_blur(y, k, s) - want).max() <= TOL


# --------------------------------------------------------------------------- fused mode


@pytest.mark.parametrize(("shapes", "out_hw"), FUSED_CASES)
def test_fused_matches_the_torch_oracle(shapes, out_hw):
    levels = _random_levels(np.random.default_rng(len(shapes) + out_hw[0]), shapes)
    # the sampling pass alone (no smoothing); the smoothing is tested below
    amap, mask = aggregate(levels, out_hw, mode="fused", smoothing="none")
    assert mask is None and amap.dtype == np.float32 and amap.shape == out_hw
    # float64 oracle: the exact value of prod_i B(R(d_i)), B align-corners, R half-pixel
    exact = _torch_fused(levels, out_hw, pytest.importorskip("torch").float64)
    assert np.abs(amap - exact).max() <= TOL
    # torch's float32 kernel rounds the source coordinate in float32 (up to
    # ~4e-6 px at 112 -> 1920), which on these rough maps moves values by up
    # to ~3e-5 in absolute terms; relative to the map's range it stays <= 1e-5.
    f32 = _torch_fused(levels, out_hw, pytest.importorskip("torch").float32)
    assert np.abs(amap - f32).max() <= TOL * np.abs(f32).max()
    # the numpy evaluation path reproduces torch's float32 rounding itself
    batched = aggregate_batch([m[None] for m in levels], out_hw, "fused", "none")[0]
    assert np.abs(batched - f32).max() <= TOL


def test_fused_without_an_exact_opencv_warp_computes_the_same(monkeypatch):
    """OpenCV 4 rounds warpAffine's positions to 1/32 px: there the numpy resize samples."""
    import cv2

    import edgeas.aggregate as agg

    levels = _random_levels(np.random.default_rng(11), FUSED_CASES[2][0])
    warped, _ = aggregate(levels, (333, 517), mode="fused", smoothing="none")
    probe = agg.warp_is_exact
    monkeypatch.setattr(agg, "warp_is_exact", lambda: False)
    numpy_path, _ = aggregate(levels, (333, 517), mode="fused", smoothing="none")
    assert np.abs(numpy_path - warped).max() <= TOL * max(1.0, float(np.abs(warped).max()))
    assert np.abs(numpy_path - _torch_fused(levels, (333, 517),
                                            pytest.importorskip("torch").float32)).max() <= TOL
    # and the probe itself says what this OpenCV does
    assert probe.__wrapped__() is (int(cv2.__version__.split(".")[0]) >= 5)


def test_naive_baseline_equals_fused():
    # The baseline lives with its benchmark, not in the package.
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    from aggregate_bench import naive_aggregate

    levels = _random_levels(np.random.default_rng(5), FUSED_CASES[0][0])
    amap, mask = aggregate(levels, (1080, 1920), threshold=2.0, mode="fused", smoothing="none")
    base, base_mask = naive_aggregate(levels, (1080, 1920), 2.0)
    assert np.abs(amap - base).max() <= TOL
    assert np.array_equal(mask, base_mask) and 0 < mask.sum() < mask.size


@pytest.mark.parametrize("out_hw", [(224, 224), (1080, 1920)])
def test_both_modes_rank_a_planted_anomaly_highest(out_hw):
    center = (0.7, 0.3)
    levels = _planted_levels(FUSED_CASES[0][0], center)
    h, w = out_hw
    for mode in ("fused", "reference"):
        amap, _ = aggregate(levels, out_hw, mode=mode)
        y, x = np.unravel_index(np.argmax(amap), amap.shape)
        assert abs(y / h - center[0]) < 0.03 and abs(x / w - center[1]) < 0.03, mode
        # the defect stands far above the background everywhere away from it
        far = amap[: int(0.4 * h)]
        assert image_score(amap) > 10 * far.max(), mode


def test_mask_is_exactly_map_ge_threshold():
    levels = _random_levels(np.random.default_rng(7), FUSED_CASES[2][0])
    for mode in ("fused", "reference"):
        amap, _ = aggregate(levels, (333, 517), mode=mode)
        for tau in (float(np.quantile(amap, 0.9)), float(amap.flat[1234]), 0.0, 1e9):
            _, mask = aggregate(levels, (333, 517), threshold=tau, mode=mode)
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
            assert np.array_equal(mask, (amap.astype(np.float64) >= tau).astype(np.uint8))
    # a threshold between two adjacent float32 values: a plain float32
    # comparison would round it down and include the lower one
    lo = np.float32(1.0)
    hi = np.nextafter(lo, np.float32(2))
    a = np.array([[lo, hi]], np.float32)
    assert threshold_mask(a, 1.0 + 1e-12).tolist() == [[0, 1]]
    assert threshold_mask(a, 1.0).tolist() == [[1, 1]]


def test_inputs_and_errors():
    levels = _random_levels(np.random.default_rng(9), FUSED_CASES[1][0])
    plain, _ = aggregate(levels, (224, 224))
    # engine outputs arrive as (1, 1, h, w)
    boxed, _ = aggregate([m[None, None] for m in levels], (224, 224))
    assert np.array_equal(plain, boxed)
    with pytest.raises(ConfigError, match="unknown aggregation mode") as err:
        aggregate(levels, (224, 224), mode="refrence")
    assert "reference" in (err.value.hint or "")
    for mode in ("reference", "fused"):
        with pytest.raises(ConfigError, match="1 .kernel, sigma. pairs but there are 4"):
            aggregate(levels, (224, 224), mode=mode, smoothing=[(3, 1.0)])
        with pytest.raises(ConfigError, match="unknown smoothing 'oficial'") as err:
            aggregate(levels, (224, 224), mode=mode, smoothing="oficial")
        assert "official" in err.value.hint
        with pytest.raises(ConfigError, match="level set"):
            aggregate(levels, (224, 224), mode=mode, use=[0, 4])
    with pytest.raises(ConfigError):
        aggregate(levels, (0, 224))
    with pytest.raises(ModelOutputError, match="level res1 has shape"):  # was ConfigError
        aggregate([levels[0][0]], (224, 224))
    with pytest.raises(ConfigError):
        aggregate(levels, (224, 224), threshold=float("nan"))


@pytest.mark.parametrize("mode", ["fused", "reference"])
def test_bad_map_shapes_are_model_output_errors_not_config_errors(mode):
    """A map of the wrong shape is what a model produced: exit 1, naming level and shape."""
    levels = _random_levels(np.random.default_rng(3), FUSED_CASES[1][0])
    bad = [*levels[:2], np.zeros((2, 3, 28, 28), np.float32), levels[3]]
    with pytest.raises(ModelOutputError, match=r"res3 has shape \(2, 3, 28, 28\)") as info:
        aggregate(bad, (224, 224), mode=mode)
    assert not isinstance(info.value, ConfigError) and info.value.exit_code == 1
    batched = [m[None].repeat(2, axis=0) for m in levels]
    with pytest.raises(ModelOutputError, match=r"res2 has shape \(2,\); expected \(B, h, w\)"):
        aggregate_batch([batched[0], np.zeros(2, np.float32), *batched[2:]], (224, 224), mode)
    with pytest.raises(ModelOutputError, match=r"different batch sizes: \[2, 2, 2, 1\]"):
        aggregate_batch([*batched[:3], batched[3][:1]], (224, 224), mode)


@pytest.mark.parametrize("mode", ["fused", "reference"])
def test_results_are_never_overwritten_by_later_calls(mode):
    a = _planted_levels(FUSED_CASES[0][0], (0.2, 0.2))
    b = _planted_levels(FUSED_CASES[0][0], (0.8, 0.8))
    hw = (270, 480)
    # held results (directly, in a container, or through a view) are never overwritten
    first, first_mask = aggregate(a, hw, 0.5, mode=mode)
    kept = [first.copy(), first_mask.copy()]
    holder = [aggregate(a, hw, 0.5, mode=mode)]
    view = aggregate(a, hw, 0.5, mode=mode)[0][100:120, 50:90]
    view_copy = view.copy()
    for _ in range(3):
        aggregate(b, hw, 0.5, mode=mode)
    assert np.array_equal(first, kept[0]) and np.array_equal(first_mask, kept[1])
    assert np.array_equal(holder[0][0], kept[0]) and np.array_equal(view, view_copy)


# --------------------------------------------------------------------------- decision


def _hand_mask() -> np.ndarray:
    m = np.zeros((20, 30), np.uint8)
    m[2:5, 2:5] = 1  # 3x3 square, 9 px
    m[10, 10] = 1  # single pixel
    m[15, 20] = m[16, 21] = 1  # diagonal pair: one 8-connected region of 2 px
    m[5:9, 25] = 1  # L-shape, 6 px
    m[8, 26:28] = 1
    return m


def test_remove_small_regions_on_a_hand_made_mask():
    m = _hand_mask()
    original = m.copy()
    out = remove_small_regions(m, 7)
    assert out.dtype == np.uint8 and np.array_equal(m, original)
    want = np.zeros_like(m)
    want[2:5, 2:5] = 1
    assert np.array_equal(out, want)
    # 8-connectivity: the diagonal pair survives min_area=2, the single pixel does not
    two = remove_small_regions(m, 2)
    assert two[15, 20] == two[16, 21] == 1 and two[10, 10] == 0
    assert np.array_equal(remove_small_regions(m, 1), m)
    assert np.array_equal(remove_small_regions(m.astype(bool), 0), m)
    assert remove_small_regions(m, 100).sum() == 0


def test_remove_small_regions_with_many_specks():
    m = np.zeros((64, 64), np.uint8)
    m[::4, ::4] = 1  # 256 isolated pixels: the label-table path
    m[30:39, 30:39] = 1  # rows and columns 29 and 39 stay empty: no speck touches it
    out = remove_small_regions(m, 2)
    want = np.zeros_like(m)
    want[30:39, 30:39] = 1
    assert np.array_equal(out, want)


def test_decide():
    m = _hand_mask()
    ng, regions = decide(m, 7)
    assert ng is True and regions == [[2, 2, 3, 3]]
    ng, regions = decide(m, 2)
    assert ng and sorted(regions) == sorted([[2, 2, 3, 3], [20, 15, 2, 2], [25, 5, 3, 4]])
    assert decide(m, 10) == (False, [])
    assert decide(np.zeros((5, 5), np.uint8), 1) == (False, [])
    assert all(isinstance(v, int) for r in decide(m, 1)[1] for v in r)


@pytest.mark.parametrize("min_area", [0, 1, 2, 5, 40])
def test_clean_and_decide_equals_removing_then_deciding(min_area):
    rng = np.random.default_rng(min_area)
    masks = [_hand_mask(), np.zeros((9, 9), np.uint8)]
    masks += [(rng.random((60, 80)) > p).astype(np.uint8) for p in (0.5, 0.8, 0.97)]
    speckled = np.zeros((64, 64), np.uint8)
    speckled[::4, ::4] = 1  # more small regions than the box-by-box path clears
    speckled[30:39, 30:39] = 1
    masks.append(speckled)
    for m in masks:
        want_mask = remove_small_regions(m, min_area)
        want_ng, want_regions = decide(want_mask, max(min_area, 1))
        got_mask, got_ng, got_regions = clean_and_decide(m, min_area)
        assert np.array_equal(got_mask, want_mask) and got_mask.dtype == np.uint8
        assert got_ng == want_ng and sorted(got_regions) == sorted(want_regions)


# --------------------------------------------------------------------------- import boundary


def test_runtime_and_aggregate_import_without_torch():
    proc = run_without(
        ("torch", "tensorrt", "onnxruntime"),
        """
        import edgeas.aggregate
        from edgeas.runtime import aggregate, decide, remove_small_regions
        import numpy as np
        amap, mask = aggregate([np.ones((4, 4), np.float32)] * 4, (8, 8), 0.5)
        assert mask.all() and decide(mask, 1)[0]
        print("ok")
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# --------------------------------------------------------------------------- level set


@pytest.mark.parametrize("mode", ["fused", "reference"])
@pytest.mark.parametrize("use", [[0, 2], [3], [1, 2, 3]])
def test_a_level_set_multiplies_only_its_levels(mode, use):
    levels = _planted_levels(FUSED_CASES[0][0])
    got, _ = aggregate(levels, (224, 224), None, mode, "none", use)
    # the product of the chosen levels: each through the same path alone, multiplied
    alone = [aggregate([levels[i] if j == i else np.ones_like(levels[j])
                        for j in range(4)], (224, 224), None, mode, "none")[0] for i in use]
    want = alone[0]
    for a in alone[1:]:
        want = want * a
    if mode == "fused":  # per pixel: the product of the sampled levels, exactly
        np.testing.assert_allclose(got, want, rtol=1e-5)
    else:  # the reference interpolates the product, so a product of maps is not exact
        assert np.abs(got - want).max() <= 0.05 * float(want.max())
    batched = aggregate_batch([m[None] for m in levels], (224, 224), mode, "none", use)[0]
    assert np.abs(batched - got).max() <= 1e-5 * max(1.0, float(got.max()))


def test_the_export_graph_computes_the_records_setting():
    torch = pytest.importorskip("torch")
    from edgeas.export.torch_graph import ReferenceAggregation

    levels = _planted_levels(FUSED_CASES[0][0])
    sizes = [m.shape for m in levels]
    for blur, use in (((), None), ((), [0, 2]), (((5, 1.0), (3, 0.5), (3, 1.0), (1, 1.0)),
                                                 [1, 3])):
        graph = ReferenceAggregation(sizes, (224, 224), blur, use)
        amap, score = graph([torch.from_numpy(m)[None, None] for m in levels])
        want = reference_maps_batch([m[None] for m in levels], (224, 224), blur, use)
        assert np.abs(amap[:, 0].numpy() - want).max() <= TOL
        assert score.item() == pytest.approx(float(want.max()), abs=TOL)
