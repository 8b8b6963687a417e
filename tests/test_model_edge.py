"""The edge decoder options (issue 7): shapes, cost, reference untouched, preset, export."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgeas.config import load_config
from edgeas.errors import ConfigError
from edgeas.train.model.unias import UniASDecoder, reconstruction_loss

LITE0_CHANNELS = [16, 24, 40, 112]
SIZES_224 = [(112, 112), (56, 56), (28, 28), (14, 14)]
TOKENS = 14 * 14
EDGE_DEFAULTS = {"head": "conv3", "pixel_fine_dims": [], "mgg_depthwise": False}
SMALL = {"hidden_dim": 32, "conv_dim": 32, "mask_dim": 32, "ffn_dim": 64, "pixel_ffn_dim": 64,
         "encoder_layers": 1, "group_norm_groups": 8}


def _decoder(preset: str, device: str = "cpu", **model) -> UniASDecoder:
    cfg = load_config(preset, {"model": model} if model else None)
    with torch.device(device):
        return UniASDecoder(cfg.model, LITE0_CHANNELS, SIZES_224, cfg.grid)


def _flops(preset: str, **model) -> dict[str, int]:
    """Forward FLOPs per module (and 'total') at 224, batch 1, counted on the meta device:
    shapes only, no arithmetic, so even the full-width reference is counted quickly."""
    decoder = _decoder(preset, "meta", **model).eval().requires_grad_(False)
    feats = [torch.empty(1, c, h, w, device="meta") for c, (h, w) in zip(LITE0_CHANNELS, SIZES_224)]
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        decoder(feats)
    out = {
        name.removeprefix("UniASDecoder."): sum(ops.values())
        for name, ops in fc.get_flop_counts().items()
    }
    out["total"] = fc.get_total_flops()
    return out


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("preset", ["unias-b4", "unias-lite", "tiny"])
def test_explicit_defaults_build_the_reference_state_dict(preset):
    torch.manual_seed(0)
    ref = _decoder(preset)
    torch.manual_seed(0)
    explicit = _decoder(preset, **EDGE_DEFAULTS)
    assert list(ref.state_dict()) == list(explicit.state_dict())
    assert all(torch.equal(a, b) for a, b in
               zip(ref.state_dict().values(), explicit.state_dict().values()))
    assert load_config(preset).model.head == "conv3"
    assert not any("reduce_" in k for k in ref.state_dict())


@pytest.mark.parametrize(
    "options",
    [
        {"head": "deconv"},
        {"head": "upsample"},
        {"pixel_fine_dims": [8, 16, 24]},
        {"mgg_depthwise": True},
        {"head": "deconv", "pixel_fine_dims": [8, 16, 32], "mgg_depthwise": True},
    ],
)
def test_options_keep_output_shapes_and_train(options):
    torch.manual_seed(0)
    decoder = _decoder("unias-lite", **SMALL, **options).train()
    feats = [torch.randn(2, c, h, w) for c, (h, w) in zip(LITE0_CHANNELS, SIZES_224)]
    out = decoder(feats)
    assert [tuple(r.shape) for r in out.recons] == [
        (2, c, h, w) for c, (h, w) in zip(LITE0_CHANNELS, SIZES_224)
    ]
    assert [tuple(d.shape) for d in out.dists] == [(2, h, w) for h, w in SIZES_224]
    loss = reconstruction_loss(out, 10.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in decoder.parameters())


def test_pixel_fine_dims_set_the_level_widths_and_add_reductions_only_where_they_narrow():
    decoder = _decoder("unias-lite", **SMALL, pixel_fine_dims=[8, 16, 32])
    pd = decoder.pixel_decoder
    assert pd.dims == [8, 16, 32, 32]
    assert pd.layer_1.weight.shape == (8, 8, 3, 3)
    assert pd.adapter_1.weight.shape == (8, 2 * LITE0_CHANNELS[0], 1, 1)
    assert pd.reduce_1.weight.shape == (8, 16, 1, 1)
    assert pd.reduce_2.weight.shape == (16, 32, 1, 1)
    assert not hasattr(pd, "reduce_3")  # res3 is as wide as res4
    # The patch embedding of each level takes that level's width.
    assert decoder.predictor.patch_embed[3].proj.in_channels == 8
    assert decoder.predictor.patch_embed[1].proj.in_channels == 32


def test_head_flops_match_their_formulas():
    d, c, p, (h, w) = 64, LITE0_CHANNELS[0], 8, SIZES_224[0]
    base = dict(hidden_dim=d, conv_dim=d, mask_dim=d, group_norm_groups=8)
    conv3 = _flops("unias-lite", **base)["predictor.out_agg.3"]
    deconv = _flops("unias-lite", **base, head="deconv")["predictor.out_agg.3"]
    upsample = _flops("unias-lite", **base, head="upsample")["predictor.out_agg.3"]
    refine = 2 * h * w * c * c * 9  # the C_level 3x3 conv at full resolution
    assert conv3 == 2 * h * w * 9 * (d * d + d * d + d * c)
    assert deconv == 2 * TOKENS * d * p * p * c + refine  # unpatchify: each token -> p x p
    assert upsample == 2 * TOKENS * d * c + refine
    assert deconv < conv3 / 10


def test_fine_widths_and_depthwise_mgg_cut_their_modules_as_computed():
    d = 64
    base = dict(hidden_dim=d, conv_dim=d, mask_dim=d, group_norm_groups=8)
    ref = _flops("unias-lite", **base)
    fine = _flops("unias-lite", **base, pixel_fine_dims=[16, 32, 64])
    assert ref["pixel_decoder.layer_1"] == 2 * 112 * 112 * 9 * d * d
    assert fine["pixel_decoder.layer_1"] == 2 * 112 * 112 * 9 * 16 * 16
    assert fine["pixel_decoder.layer_2"] == 2 * 56 * 56 * 9 * 32 * 32
    dw = _flops("unias-lite", **base, mgg_depthwise=True)
    # An MGG-CNN has one 1x1 and six 3x3 convs (D -> D): depthwise-separable 3x3s cost
    # 9*D (depthwise) + D*D (pointwise) MACs per cell instead of 9*D*D.
    assert ref["predictor.layer_adaptors.0"] == 2 * TOKENS * (d * d + 6 * 9 * d * d)
    assert dw["predictor.layer_adaptors.0"] == 2 * TOKENS * (d * d + 6 * (9 * d + d * d))


def test_unias_edge_costs_at_most_a_tenth_of_the_reference_decoder():
    reference = _flops("unias-lite")["total"]
    edge = _flops("unias-edge")["total"]
    assert reference == pytest.approx(80.1e9, rel=0.01)  # unias.md "Cost" (Lite0 taps)
    assert edge <= 0.1 * reference
    cfg = load_config("unias-edge").model
    assert (cfg.hidden_dim, cfg.head, cfg.mgg_depthwise) == (256, "deconv", True)


def test_unias_edge_preset_builds_and_trains_end_to_end():
    from edgeas.train.model.unias import build_model

    torch.manual_seed(0)
    model = build_model(load_config("unias-edge"), pretrained=False)
    model.decoder.train()
    out = model(torch.randn(1, 3, 224, 224))
    loss = model.loss(out)
    loss.backward()
    assert torch.isfinite(loss)
    assert [tuple(d.shape) for d in out.dists] == [(1, h, w) for h, w in SIZES_224]
    assert all(p.grad is not None for p in model.decoder.parameters())


@pytest.mark.parametrize(
    "model, words",
    [
        ({"pixel_fine_dims": [32, 64]}, "pixel_fine_dims"),
        ({"pixel_fine_dims": [16, 64, 128]}, "divisible"),
        ({"head": "mlp"}, "model.head"),
    ],
)
def test_bad_edge_options_are_config_errors(model, words):
    with pytest.raises(ConfigError, match=words):
        load_config("unias-lite", {"model": model})


@pytest.mark.slow
def test_unias_edge_exports_to_onnx_with_the_cli(tmp_path):
    import onnx

    out = tmp_path / "x.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "edgeas", "export", "--config", "unias-edge", "--random-init",
         "-o", str(out)],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == [f"dist_res{i}" for i in range(1, 5)]
    dims = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output]
    assert dims == [[1, 1, h, w] for h, w in SIZES_224]  # the exporter's (N, 1, H, W) maps
    assert "ConvTranspose" in {n.op_type for n in graph.node}
