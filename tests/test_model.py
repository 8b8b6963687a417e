"""The decoder's structure against the official checkpoints' key names, and its behaviour."""

from __future__ import annotations

import json

import pytest
import torch

from edgeas.config import load_config
from edgeas.train.model.unias import UniASDecoder, reconstruction_loss

B4_CHANNELS = [24, 32, 56, 160]
SIZES_224 = [(112, 112), (56, 56), (28, 28), (14, 14)]


def _decoder(preset: str, **model_overrides) -> UniASDecoder:
    cfg = load_config(preset, {"model": model_overrides} if model_overrides else None)
    return UniASDecoder(cfg.model, B4_CHANNELS, SIZES_224, cfg.grid)


def test_reference_decoder_has_exactly_the_official_keys_and_shapes(full_keys_file):
    decoder = _decoder("unias-b4")
    ours = {k: list(v.shape) for k, v in decoder.state_dict().items()}
    official = {}
    for line in full_keys_file.read_text().splitlines():
        name, shape = line.split("\t")
        official[name.removeprefix("sem_seg_head.")] = json.loads(shape)
    assert ours == official
    # unias.md: 53.8 M decoder parameters in the reference configuration.
    assert sum(p.numel() for p in decoder.parameters()) == pytest.approx(53.8e6, rel=0.002)


def test_state_dict_order_follows_registration_of_the_reference(full_keys_file):
    decoder = _decoder("unias-b4")
    official = [ln.split("\t")[0].removeprefix("sem_seg_head.")
                for ln in full_keys_file.read_text().splitlines()]
    assert list(decoder.state_dict()) == official


def test_outputs_shapes_and_loss_is_finite_and_differentiable():
    torch.manual_seed(0)
    decoder = _decoder("tiny")
    feats = [torch.randn(2, c, h, w) for c, (h, w) in zip(B4_CHANNELS, SIZES_224)]
    decoder.train()
    out = decoder(feats)
    assert [tuple(r.shape) for r in out.recons] == [
        (2, c, h, w) for c, (h, w) in zip(B4_CHANNELS, SIZES_224)
    ]
    assert [tuple(d.shape) for d in out.dists] == [(2, h, w) for h, w in SIZES_224]
    loss = reconstruction_loss(out, 10.0)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in decoder.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_loss_uses_one_minus_cosine():
    """A perfect reconstruction has zero loss (the official snapshot's sign bug gives 10*4)."""
    from edgeas.train.model.unias import UniASOutput, distance_map

    t = [torch.randn(1, 8, 4, 4) for _ in range(4)]
    out = UniASOutput(t, t, [distance_map(x, x) for x in t])
    assert float(reconstruction_loss(out, 10.0)) == pytest.approx(0.0, abs=1e-5)


def test_jitter_only_in_training_and_follows_its_coin():
    torch.manual_seed(0)
    decoder = _decoder("tiny", jitter_prob=1.0, dropout=0.0)
    x = torch.randn(2, 48, 112, 112)
    decoder.train()
    jittered = decoder.jitter(x)
    assert not torch.equal(jittered, x)
    # Scale: per position, ||x|| / C * 20 times a standard normal.
    rel = ((jittered - x) / (x.norm(dim=1, keepdim=True) / 48 * 20)).std()
    assert float(rel) == pytest.approx(1.0, rel=0.05)
    decoder.cfg.jitter_prob = 0.0
    assert torch.equal(decoder.jitter(x), x)
    decoder.eval()
    decoder.cfg.jitter_prob = 1.0
    feats = [torch.randn(1, c, h, w) for c, (h, w) in zip(B4_CHANNELS, SIZES_224)]
    with torch.no_grad():
        a, b = decoder(feats), decoder(feats)
    assert torch.equal(a.dists[0], b.dists[0])  # eval: no jitter, no dropout


def test_neighbor_mask_blocks_the_window_including_the_token():
    from edgeas.train.model.layers import neighbor_mask

    mask = neighbor_mask((14, 14), [7, 7])
    centre = 7 * 14 + 7
    assert mask[centre, centre]
    assert mask[centre].sum() == 49
    assert mask[0].sum() == 16  # the corner window is clipped to 4x4
    assert not mask.all(dim=1).any()
