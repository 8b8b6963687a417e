"""benchmarks/patchcore.py, the nearest-neighbour baseline: its coreset, distances and
feature grid against brute force on small inputs (no data set, no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import patchcore  # noqa: E402


def _brute_kcenter(x: torch.Tensor, first: int, k: int) -> list[int]:
    chosen = [first]
    for _ in range(k - 1):
        d = torch.cdist(x, x[chosen]).min(dim=1).values
        chosen.append(int(torch.argmax(d)))
    return chosen


def test_the_coreset_is_the_greedy_k_center_choice():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 16, generator=gen, dtype=torch.float64).float()
    got = patchcore.greedy_coreset(x, 0.05, seed=3)  # 16 dims: no projection
    assert len(got) == 15 and len(set(got.tolist())) == 15
    assert got.tolist() == _brute_kcenter(x.double(), int(got[0]), 15)
    assert patchcore.greedy_coreset(x, 1.0).tolist() == list(range(300))


def test_a_projected_coreset_still_spreads_over_the_data():
    gen = torch.Generator().manual_seed(0)
    # four far-apart clusters in 256 dims: a 4-point k-center coreset takes one of each
    centers = torch.randn(4, 256, generator=gen) * 50
    x = (centers[:, None] + torch.randn(4, 50, 256, generator=gen)).reshape(200, 256)
    got = patchcore.greedy_coreset(x, 4 / 200, seed=0)
    assert sorted({int(i) // 50 for i in got}) == [0, 1, 2, 3]


def test_nearest_distance_matches_brute_force_across_blocks(monkeypatch):
    monkeypatch.setattr(patchcore, "_CHUNK", 7)
    gen = torch.Generator().manual_seed(2)
    q, bank = torch.randn(50, 8, generator=gen), torch.randn(30, 8, generator=gen)
    want = torch.cdist(q, bank).min(dim=1).values
    assert torch.allclose(patchcore.nearest_distance(q, bank), want, atol=1e-5)
    # a bank row is its own nearest neighbour; cdist's matrix-product form leaves a
    # rounding residue of sqrt(eps * |x|^2), ~1e-3 here
    assert patchcore.nearest_distance(bank, bank).max() < 5e-3


def test_patch_features_concatenate_the_taps_on_the_finer_grid():
    class Taps(torch.nn.Module):
        def forward(self, x):
            n = x.shape[0]
            return [torch.ones(n, c, s, s) * c for c, s in ((2, 16), (3, 8), (5, 4), (7, 2))]

    f = patchcore.patch_features(Taps(), torch.zeros(2, 3, 32, 32), (3, 4))
    assert f.shape == (2, 12, 4, 4)
    # 3x3 averages with zero padding (PatchCore's): res3 (5 channels of 5.0, 4x4) keeps 5
    # inside and loses a third at the edges, four ninths at the corners
    assert torch.allclose(f[:, :5, 1:3, 1:3], torch.tensor(5.0))
    assert torch.allclose(f[:, :5, 0, 1:3], torch.tensor(5.0 * 6 / 9))
    assert torch.allclose(f[:, :5, 0, 0], torch.tensor(5.0 * 4 / 9))
    # res4 (7 channels of 7.0, 2x2): every window sees the 4 cells, then a constant resize
    assert torch.allclose(f[:, 5:], torch.tensor(7.0 * 4 / 9))


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_the_smoothing_keeps_a_constant_map_and_the_mass_of_a_spike(sigma):
    const = torch.full((1, 1, 40, 40), 3.0)
    assert torch.allclose(patchcore._gaussian(const, sigma), const, atol=1e-5)
    spike = torch.zeros(1, 1, 41, 41)
    spike[0, 0, 20, 20] = 1.0
    out = patchcore._gaussian(spike, sigma)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert int(out.argmax()) == 20 * 41 + 20
