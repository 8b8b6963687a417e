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


def _report(rows: dict) -> dict:
    return {
        "settings": {"classes": "brick,tissue", "per_class": 24, "data_seed": 0, "batch": 8,
                     "lr": 0.001, "width": 64, "backbone": "efficientnet_lite0",
                     "input_size": [224, 224], "test_per_class": 15},
        "machine": {"cpu_model": "test", "cpu_count": 2}, "reference": "ref", "rows": rows,
    }


def test_summary_spread_and_difference_to_the_reference_row():
    ref = _row("ref", [_run(0, 0.10, 0.20), _run(1, 0.20, 0.10)])
    edge = _row("edge", [_run(0, 0.16, 0.14), _run(1, 0.16, 0.14)])
    assert ref["summary"]["metrics"]["mean"]["pixel_ap"] == pytest.approx(0.15)
    assert ref["summary"]["range"]["pixel_ap"] == pytest.approx(0.10)
    assert edge["summary"]["std"]["pixel_ap"] == pytest.approx(0.0)
    text = markdown(_report({"ref [2 ep]": ref, "edge [2 ep]": edge}))
    # the difference row: +1.00 pAP, -1.00 DSC, spreads ref / this
    assert "| edge [2 ep] | +1.00 | -1.00 | +0.00 | +0.00 | 10.00 / 0.00 | 10.00 / 0.00 |" in text
    assert "| 8.00 (0.100) |" in text  # full-width GFLOPs and the ratio to the reference


def _decided(seed: int, pap: float, recall_1: float) -> dict:
    run = _run(seed, pap, 0.2)
    values = dict(run["metrics"]["mean"]) | {"frame_recall": 0.5, "frame_false_ng": 0.0,
                                             "recall_at_fng_1": recall_1,
                                             "recall_at_fng_5": recall_1}
    run["metrics"] = {"brick": values, "tissue": values, "mean": values}
    return run


def test_rerunning_some_seeds_keeps_the_others_and_decisions_average_what_has_them():
    old = _row("edge", [_run(0, 0.10, 0.2), _run(1, 0.12, 0.2), _run(2, 0.14, 0.2)])
    runs = accuracy.merge_runs(old, [_decided(1, 0.30, 0.40), _decided(3, 0.50, 0.60)])
    assert [r["seed"] for r in runs] == [0, 1, 2, 3]
    assert runs[1]["metrics"]["mean"]["pixel_ap"] == 0.30  # the rerun replaced seed 1
    summary = summarise(runs)
    assert summary["decision_seeds"] == [1, 3]
    assert summary["decisions"]["recall_at_fng_1"] == pytest.approx(0.50)
    assert summarise([_run(0, 0.1, 0.2)])["decisions"] == {}  # no run has them


def test_the_decision_table_sets_uniAS_rows_beside_the_baseline():
    edge = _row("edge", [_run(0, 0.10, 0.2), _decided(1, 0.30, 0.40), _decided(2, 0.50, 0.60)])
    old = _row("ref", [_run(0, 0.10, 0.2)])
    base = {m: 0.9 for m in (*METRICS, "frame_recall", "frame_false_ng", "recall_at_fng_1",
                             "recall_at_fng_5")}
    report = _report({"ref [2 ep]": old, "edge [2 ep]": edge})
    report["baselines"] = {"patchcore": {
        "label": "kNN", "metrics": {"mean": base}, "command": "python benchmarks/accuracy.py",
        "bank": 10, "patches": 100, "fit_s": 1.0, "test_s_per_image": 0.1, "threshold": 2.5,
        "held_out": 8}}
    text = markdown(report)
    section = text[text.index("## Decisions"):]
    # pAP over the seeds that have decision figures (1 and 2), not seed 0
    assert "| edge [2 ep] | 1,2 | 40.00 | 50.00 | 50.00 | 0.00 | 50.00 | 50.00 |" in section
    assert "| ref [2 ep] |" not in section  # no run of it was evaluated with decisions
    assert "| kNN | - | 90.00 | 90.00 | 90.00 | 90.00 | 90.00 | 90.00 |" in section
    assert "bank 10 of 100 patches" in section


def _with_settings(run: dict, pap_none: float, same: float) -> dict:
    figures = {"pixel_ap": 0.5, "dsc": 0.4, "image_auroc": 0.7, "recall_at_fng_1": 0.3}
    none = dict(figures, pixel_ap=pap_none)
    run["aggregation"] = {
        "setting": "official", "mode": "fused",
        "settings": {"official": {"reference": figures, "fused": figures},
                     "none": {"reference": none, "fused": none}},
        "fused_vs_reference": {"pixel_ap_points": 0.1, "same_decision": same}}
    return run


def test_the_settings_table_averages_eval_s_comparison_over_seeds():
    runs = [_with_settings(_run(0, 0.1, 0.2), 0.6, 1.0), _with_settings(_run(1, 0.1, 0.2), 0.7,
                                                                        0.99), _run(2, 0.1, 0.2)]
    text = markdown(_report({"ref [2 ep]": _row("ref", [_run(0, 0.1, 0.2)]),
                             "edge [2 ep]": _row("edge", runs)}))
    section = text[text.index("## Aggregation settings"):]
    assert "| ref [2 ep] |" not in section  # no run of it has eval's comparison
    assert "| edge [2 ep] | 0,1 | none | fused | 65.00 | 40.00 | 70.00 | 30.00 | - | - |" in section
    # the model's own setting in the mode it deploys: the fused-vs-reference columns
    assert ("| edge [2 ep] | 0,1 | official | fused | 50.00 | 40.00 | 70.00 | 30.00 | +0.10 "
            "| 99.0% (worst seed) |") in section
