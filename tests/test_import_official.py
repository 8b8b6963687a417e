"""`edgeas import-official` on a checkpoint laid out like the official code's."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeas.train.checkpoint import load_checkpoint, model_from_checkpoint

# timm module names -> EfficientNet-PyTorch (official backbone) names, inside a block.
_BLOCK_NAMES = {
    "conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
    "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv",
    "bn3": "_bn2",
}
# The first stage's depthwise-separable blocks have no expansion conv.
_DS_NAMES = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce",
             "se.conv_expand": "_se_expand", "conv_pw": "_project_conv", "bn2": "_bn2"}


def _official_backbone_state(body: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm B4 state dict renamed to the EfficientNet-PyTorch layout, same order."""
    out: dict[str, torch.Tensor] = {}
    flat: dict[tuple[int, int], int] = {}
    for key, value in body.state_dict().items():
        if key.startswith("conv_stem."):
            out["_conv_stem." + key.split(".", 1)[1]] = value
            continue
        if key.startswith("bn1."):
            out["_bn0." + key.split(".", 1)[1]] = value
            continue
        m = re.match(r"blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)$", key)
        assert m, key
        stage, idx, module, kind = int(m[1]), int(m[2]), m[3], m[4]
        number = flat.setdefault((stage, idx), len(flat))
        names = _DS_NAMES if stage == 0 else _BLOCK_NAMES
        out[f"_blocks.{number}.{names[module]}.{kind}"] = value
    return out


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory, conformance_dir):
    from edgeas.train.backbones import build_backbone

    torch.manual_seed(5)
    backbone = build_backbone("efficientnet_b4", pretrained=False)
    state = {f"module.sem_seg_head.{k.removeprefix('sem_seg_head.')}": torch.from_numpy(v)
             for k, v in np.load(conformance_dir / "state_dict.npz").items()}
    state.update({f"module.backbone.{k}": v
                  for k, v in _official_backbone_state(backbone.body).items()})
    path = tmp_path_factory.mktemp("official") / "ckpt_best.pth"
    torch.save({"epoch": 7, "state_dict": state}, path)
    return path, backbone


def test_import_maps_decoder_by_name_and_backbone_by_order(official_checkpoint, tmp_path,
                                                          conformance_dir):
    path, backbone = official_checkpoint
    out = tmp_path / "model.pt"
    result = subprocess.run(
        [sys.executable, "-m", "edgeas", "import-official", str(path), "-o", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "unset" in result.stderr
    data = load_checkpoint(out)
    cfg, model = model_from_checkpoint(data, str(out))
    assert cfg.model.hidden_dim == 32 and cfg.model.ffn_dim == 64 and cfg.input_size == [224, 224]
    assert cfg.backbone.reference_padding and data["metadata"]["threshold"]["value"] is None
    for key, value in backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    recorded = np.load(conformance_dir / "tensors.npz")
    feats = [torch.from_numpy(recorded[f"feat_raw_res{i}"]) for i in range(1, 5)]
    model.eval()
    with torch.no_grad():
        dists = model.decoder(feats).dists
    for i, d in enumerate(dists):
        assert np.abs(d.numpy() - recorded[f"dist_res{i + 1}"]).max() <= 1e-5


def test_missing_backbone_and_unsafe_files_are_clear_errors(official_checkpoint, tmp_path):
    from edgeas.errors import ArtifactError, ConfigError
    from edgeas.train.import_official import import_official

    path, _ = official_checkpoint
    state = torch.load(path, weights_only=True)["state_dict"]
    decoder_only = tmp_path / "decoder_only.pth"
    torch.save({k: v for k, v in state.items() if "backbone" not in k}, decoder_only)
    with pytest.raises(ConfigError, match="no backbone weights") as err:
        import_official(decoder_only, tmp_path / "x.pt", None, None)
    assert "--backbone-weights" in err.value.hint

    class Sneaky:
        def __reduce__(self):
            return (print, ("ran code",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": state, "extra": Sneaky()}, evil)
    with pytest.raises(ArtifactError, match="weights_only"):
        import_official(evil, tmp_path / "y.pt", None, None)
