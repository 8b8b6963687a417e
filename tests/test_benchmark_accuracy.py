"""The parts of benchmarks/accuracy.py that decide what a row means, without training:
config specs, width scaling, the summary over seeds and the report's difference table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy  # noqa: E402
from accuracy_report import METRICS, markdown, summarise  # noqa: E402

from edgeas.config import config_from_dict  # noqa: E402


def test_a_spec_is_a_preset_plus_yaml_overrides():
    base, overrides = accuracy.parse_spec("unias-lite+model.head=deconv+train.lr=0.0005")
    assert base == "unias-lite"
    assert overrides == {"model": {"head": "deconv"}, "train": {"lr": 0.0005}}
    with pytest.raises(SystemExit, match="not key=value"):
        accuracy.parse_spec("unias-lite+model.head")
    assert accuracy.full_config("unias-lite+model.head=deconv").model.head == "deconv"


def test_every_decoder_width_scales_together_and_the_result_is_a_valid_config():
    train = {"epochs": 1, "batch": 8, "micro_batch": 8}
    edge = accuracy.run_config("unias-edge", 64, train)
    full = accuracy.full_config("unias-edge").to_dict()["model"]
    factor = 64 / full["hidden_dim"]
    assert edge["model"]["hidden_dim"] == 64
    for key in ("conv_dim", "mask_dim", "ffn_dim", "pixel_ffn_dim", "group_norm_groups"):
        assert edge["model"][key] == full[key] * factor, key
    assert edge["model"]["pixel_fine_dims"] == [v * factor for v in full["pixel_fine_dims"]]
    assert edge["train"]["epochs"] == 1 and edge["model"]["head"] == full["head"]
    config_from_dict(edge, "scaled unias-edge")  # what run_config trains must load
    with pytest.raises(SystemExit, match="does not scale to width 100"):
        accuracy.run_config("unias-edge", 100, train)


def _run(seed: int, pap: float, dsc: float) -> dict:
    values = {m: 0.5 for m in METRICS} | {"pixel_ap": pap, "dsc": dsc}
    per_class = {"brick": values, "tissue": values, "mean": values}
    return {"seed": seed, "metrics": per_class, "steps": 22, "train_loop_s": 10.0,
            "final_loss": 1.0, "resumed": False}


def _row(spec: str, runs: list[dict]) -> dict:
    return {"spec": spec, "epochs": 2, "command": "python benchmarks/accuracy.py", "runs": runs,
            "summary": summarise(runs),
            "reduced": {"decoder_params_m": 1.0, "decoder_gflops": 5.0},
            "full_width": {"decoder_gflops": 80.0 if spec == "ref" else 8.0}}


def test_summary_spread_and_difference_to_the_reference_row():
    ref = _row("ref", [_run(0, 0.10, 0.20), _run(1, 0.20, 0.10)])
    edge = _row("edge", [_run(0, 0.16, 0.14), _run(1, 0.16, 0.14)])
    assert ref["summary"]["metrics"]["mean"]["pixel_ap"] == pytest.approx(0.15)
    assert ref["summary"]["range"]["pixel_ap"] == pytest.approx(0.10)
    assert edge["summary"]["std"]["pixel_ap"] == pytest.approx(0.0)
    report = {
        "settings": {"classes": "brick,tissue", "per_class": 24, "data_seed": 0, "batch": 8,
                     "lr": 0.001, "width": 64, "backbone": "efficientnet_lite0",
                     "input_size": [224, 224], "test_per_class": 15},
        "machine": {"cpu_model": "test", "cpu_count": 2}, "reference": "ref",
        "rows": {"ref [2 ep]": ref, "edge [2 ep]": edge},
    }
    text = markdown(report)
    # the difference row: +1.00 pAP, -1.00 DSC, spreads ref / this
    assert "| edge [2 ep] | +1.00 | -1.00 | +0.00 | +0.00 | 10.00 / 0.00 | 10.00 / 0.00 |" in text
    assert "| 8.00 (0.100) |" in text  # full-width GFLOPs and the ratio to the reference
