from __future__ import annotations

import re

import pytest

from edgeas.config import available_presets, load_config, neighbor_mask_leaves_tokens
from edgeas.errors import ConfigError


def test_presets_load_and_validate():
    assert {"tiny", "unias-b4", "unias-lite"} <= set(available_presets())
    for name in available_presets():
        cfg = load_config(name)
        assert cfg.preset == name
        assert cfg.grid == (14, 14)
    ref = load_config("unias-b4")
    assert (ref.model.hidden_dim, ref.model.ffn_dim, ref.model.heads) == (256, 2048, 4)
    assert (ref.train.lr, ref.train.weight_decay, ref.train.batch) == (1e-4, 1e-4, 64)
    assert (ref.train.lr_step_epochs, ref.train.clip_grad_norm) == (400, 0.1)
    assert ref.model.loss_weight == 10


def test_yaml_starts_from_a_preset_and_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: tiny\ntrain:\n  epochs: 3\n  augment:\n    bottle: [hflip, rot90]\n")
    cfg = load_config(path)
    assert cfg.train.epochs == 3 and cfg.model.hidden_dim == 32
    assert cfg.train.augment == {"bottle": ["hflip", "rot90"]}


def test_unknown_key_names_the_key_the_file_and_a_suggestion(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("preset: tiny\nmodel:\n  hiden_dim: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "hiden_dim" in str(err.value) and str(path) in str(err.value)
    assert "hidden_dim" in err.value.hint


def test_wrong_types_and_values_are_errors(tmp_path):
    cases = {
        "train:\n  epochs: ten\n": "train.epochs",
        "model:\n  dropout: true\n": "model.dropout",
        "train:\n  augment:\n    a: [mirror]\n": "mirror",
        "threshold:\n  policy: median\n": "median",
        "input_size: [100, 100]\n": "input_size",
    }
    for i, (text, needle) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.yaml"
        path.write_text("preset: tiny\n" + text)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert needle in str(err.value), text


def test_the_aggregation_setting_is_checked_when_the_config_loads(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("preset: tiny\naggregation:\n  smoothing: none\n  levels: [res2, res1]\n")
    cfg = load_config(path)
    assert (cfg.aggregation.mode, cfg.aggregation.smoothing) == ("fused", "none")
    path.write_text("preset: tiny\naggregation:\n  smoothing: [[3, 1.0], [3, 1], [5, 2], [1, 1]]\n")
    assert load_config(path).aggregation.smoothing[2] == [5.0, 2.0]
    for text, message in (("smoothing: oficial", "did you mean 'official'"),
                          ("smoothing: [[3, 1.0]]", "1 .kernel, sigma. pairs"),
                          ("levels: [res1, res9]", "unknown level 'res9'"),
                          ("levels: res1", "must be a list"),
                          ("levels: []", "non-empty list")):
        path.write_text(f"preset: tiny\naggregation:\n  {text}\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(path) in info.value.message
        assert re.search(message, info.value.message + (info.value.hint or "")), text


def test_unknown_preset_suggests_a_close_one():
    with pytest.raises(ConfigError) as err:
        load_config("unias-lte")
    assert "unias-lite" in err.value.hint


def test_neighbour_window_must_leave_tokens(tmp_path):
    assert neighbor_mask_leaves_tokens((14, 14), [7, 7])
    assert not neighbor_mask_leaves_tokens((7, 7), [7, 7])
    path = tmp_path / "small.yaml"
    path.write_text("preset: tiny\ninput_size: [128, 128]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "neighbour window" in str(err.value)
    path.write_text("preset: tiny\ninput_size: [128, 128]\nmodel:\n  neighbor_mask: false\n")
    assert load_config(path).grid == (8, 8)
