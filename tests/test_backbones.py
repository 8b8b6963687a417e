"""Backbones: registry, taps, real ImageNet weights, safe loading, freezing, reference padding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import timm  # noqa: E402
from torch import nn  # noqa: E402

from edgeas.errors import ArtifactError, ConfigError  # noqa: E402
from edgeas.preprocess import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
)
from edgeas.train.backbones import (  # noqa: E402
    BACKBONES,
    Backbone,
    StaticPadConv2d,
    build_backbone,
    build_classifier,
    load_efficientnet_pytorch_state,
    package_weights_file,
    padding_table,
    read_weights,
)

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _lite_file(name: str) -> str:
    return package_weights_file(BACKBONES[name])


def _tensors(state: dict) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return read_weights(_lite_file("efficientnet_lite0"))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_taps_come_from_feature_info(name: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name, pretrained=False)
    reference = timm.create_model(
        BACKBONES[name].timm_name, pretrained=False, features_only=True, out_indices=(0, 1, 2, 3)
    )
    assert backbone.name == name
    assert backbone.channels == reference.feature_info.channels()
    assert backbone.strides == [2, 4, 8, 16]
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (c, 224 // s, 224 // s) for c, s in zip(backbone.channels, backbone.strides)
    ]
    if name == "efficientnet_b4":
        assert backbone.channels == [24, 32, 56, 160]
        assert [f.shape[-1] for f in feats] == [112, 56, 28, 14]
        assert (backbone.mean, backbone.std) == (IMAGENET_MEAN, IMAGENET_STD)
    else:
        assert (backbone.mean, backbone.std) == (LITE_MEAN, LITE_STD)


def test_tail_stages_are_cut_without_changing_features() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    # timm's features_only model keeps (and runs) blocks.5 and blocks.6 after the last tap.
    full = timm.create_model(
        "tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3)
    ).eval()
    assert len(full.blocks) == 7 and len(backbone.body.blocks) == 5
    missing, unexpected = full.load_state_dict(backbone.body.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("blocks.5.", "blocks.6.")) for k in missing)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(backbone(x), full(x), strict=True):
            assert torch.equal(a, b)


def test_random_init_follows_the_callers_seed() -> None:
    torch.manual_seed(3)
    a = build_backbone("efficientnet_lite0", pretrained=False)
    torch.manual_seed(3)
    b = build_backbone("efficientnet_lite0", pretrained=False, weights="/no/such/file.pth")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_b4_pretrained_needs_a_weights_file() -> None:
    with pytest.raises(ConfigError) as info:
        build_backbone("efficientnet_b4")
    assert "backbone.weights: /path/to/file" in str(info.value)
    assert "backbone.pretrained: false" in str(info.value)
    with pytest.raises(ConfigError):
        build_classifier("efficientnet_b4")


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError) as info:
        build_backbone("efficientnet_lite_0", pretrained=False)
    assert "did you mean 'efficientnet_lite0'" in str(info.value)


def test_reference_padding_is_b4_only() -> None:
    with pytest.raises(ConfigError, match="efficientnet_b4 only"):
        build_backbone("efficientnet_lite0", pretrained=False, reference_padding=True)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "x": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(ArtifactError) as info:
        read_weights(path)
    assert str(path) in str(info.value)
    with pytest.raises(ArtifactError):
        build_backbone("efficientnet_lite0", weights=str(path))
    assert not marker.exists()


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        build_backbone("efficientnet_b4", weights=str(tmp_path / "b4.pth"))


def test_lite0_classifier_recognises_a_cat_and_an_espresso() -> None:
    cv2 = pytest.importorskip("cv2")
    skdata = pytest.importorskip("skimage.data")
    from edgeas.preprocess import Recipe, preprocess_bgr

    recipe = Recipe(input_size=(224, 224), mean=LITE_MEAN, std=LITE_STD)
    frames = [cv2.cvtColor(im, cv2.COLOR_RGB2BGR) for im in (skdata.chelsea(), skdata.coffee())]
    batch = torch.stack([torch.from_numpy(preprocess_bgr(f, recipe)) for f in frames])
    model = build_classifier("efficientnet_lite0")
    with torch.no_grad():
        top1 = model(batch).argmax(1).tolist()
    assert 281 <= top1[0] <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top1[1] in (967, 968)  # espresso, cup


def test_every_lite0_tensor_finds_a_home(lite0_state: dict[str, torch.Tensor]) -> None:
    model = build_classifier("efficientnet_lite0")
    src, own = _tensors(lite0_state), _tensors(model.state_dict())
    assert len(src) == len(own) == 247
    for (src_key, value), (own_key, mine) in zip(src, own, strict=True):
        assert torch.equal(value, mine), (src_key, own_key)
    assert (src[-1][0], own[-1][0]) == ("_fc.bias", "classifier.bias")

    extra = dict(lite0_state, **{"_extra.weight": torch.zeros(3)})
    fresh = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with pytest.raises(ArtifactError, match="_extra.weight"):
        load_efficientnet_pytorch_state(fresh, extra, "extra.pth", complete=True)


@pytest.mark.parametrize("name", LITES)
def test_lite_package_files_load_into_their_backbones(name: str) -> None:
    state = read_weights(_lite_file(name))
    backbone = build_backbone(name)
    own = _tensors(backbone.body.state_dict())
    src = _tensors(state)[: len(own)]
    # The leading part of the file fills the whole (truncated) body; the rest is the tail.
    for (_, value), (_, mine) in zip(src, own, strict=True):
        assert torch.equal(value, mine)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(f).all() for f in feats)


def test_ddp_prefix_wrapped_and_timm_layout_files(tmp_path: Path, lite0_state) -> None:
    expected = build_backbone("efficientnet_lite0").state_dict()

    ddp = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in lite0_state.items()}}, ddp)
    timm_layout = tmp_path / "timm.pth"
    torch.save(
        {f"module.{k}": v for k, v in build_classifier("efficientnet_lite0").state_dict().items()},
        timm_layout,
    )
    for path in (ddp, timm_layout):
        torch.manual_seed(1)  # a different random init, so equality proves the load
        got = build_backbone("efficientnet_lite0", weights=str(path)).state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_user_file_overrides_the_package_file(tmp_path: Path, lite0_state) -> None:
    changed = dict(lite0_state)
    changed["_conv_stem.weight"] = torch.full_like(changed["_conv_stem.weight"], 0.5)
    path = tmp_path / "lite0_finetuned.pth"
    torch.save(changed, path)
    backbone = build_backbone("efficientnet_lite0", weights=str(path))
    assert torch.equal(backbone.body.conv_stem.weight, changed["_conv_stem.weight"])


def test_shape_mismatch_names_both_keys(lite0_state) -> None:
    bad = dict(lite0_state)
    bad["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)
    body = build_backbone("efficientnet_lite0", pretrained=False)
    with pytest.raises(ArtifactError) as info:
        load_efficientnet_pytorch_state(body, bad, "bad.pth")
    message = str(info.value)
    assert "_blocks.3._depthwise_conv.weight" in message and "blocks.2.0.conv_dw.weight" in message
    assert "bad.pth" in message
    # Another variant's file fails the same way, on its first differing tensor.
    with pytest.raises(ArtifactError, match="does not fit"):
        load_efficientnet_pytorch_state(
            body, read_weights(_lite_file("efficientnet_lite2")), "lite2.pth"
        )


def test_backbone_is_frozen_and_stays_in_eval_mode() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    parent = nn.ModuleDict({"backbone": backbone, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    stats = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    x = torch.randn(2, 3, 64, 64) * 3 + 1
    first = backbone(x)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in stats.items())
    backbone.eval()
    assert all(torch.equal(a, b) for a, b in zip(first, backbone(x)))
    assert not first[-1].requires_grad


def test_reference_padding_changes_one_conv_and_only_res3_res4() -> None:
    torch.manual_seed(0)
    plain = build_backbone("efficientnet_b4", pretrained=False)
    torch.manual_seed(0)
    ref = build_backbone("efficientnet_b4", pretrained=False, reference_padding=True)
    assert isinstance(ref, Backbone) and ref.reference_padding
    # Same keys and values: checkpoints interchange, and probing the padding had no effect
    # on the weights or BatchNorm statistics.
    plain_state, ref_state = plain.state_dict(), ref.state_dict()
    assert ref_state.keys() == plain_state.keys()
    assert all(torch.equal(ref_state[k], plain_state[k]) for k in plain_state)

    conv = ref.body.blocks[2][0].conv_dw
    assert isinstance(conv, StaticPadConv2d)
    assert (conv.kernel_size, conv.stride, conv.pad) == ((5, 5), (2, 2), (2, 2, 2, 2))
    tf_same_224 = padding_table(plain.body, 224)
    fixed = {n: m.pad for n, m in ref.body.named_modules() if isinstance(m, StaticPadConv2d)}
    assert fixed.keys() == tf_same_224.keys()
    changed = {n: (fixed[n], tf_same_224[n]) for n in fixed if fixed[n] != tf_same_224[n]}
    assert changed == {"blocks.2.0.conv_dw": ((2, 2, 2, 2), (1, 2, 1, 2))}
    assert fixed["conv_stem"] == (0, 1, 0, 1)

    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = plain(x), ref(x)
    for level in (0, 1):
        torch.testing.assert_close(a[level], b[level], rtol=0, atol=1e-5)
    for level in (2, 3):
        assert (a[level] - b[level]).abs().max() > 1e-3 * a[level].abs().max()
