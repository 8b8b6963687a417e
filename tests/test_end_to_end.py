"""synth -> train -> eval through the CLI, and a trained model beats an untrained one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_stream_support import edgeas


def _edgeas(*args: str):
    return edgeas(*args, timeout=1200)  # training and engine builds outlast the default


@pytest.mark.slow
def test_synth_train_eval_beats_untrained(tmp_path):
    from edgeas.config import config_from_dict
    from edgeas.decisions import DECISION_METRICS
    from edgeas.metrics import metric_names
    from edgeas.record import ModelRecord
    from edgeas.train.checkpoint import load_checkpoint
    from edgeas.train.evaluate import compute_metrics, predict_test_set
    from edgeas.train.model.unias import build_model

    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    _edgeas("synth", str(data), "--classes", "brick,tissue", "--per-class", "12", "--seed", "1")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("preset: tiny\ntrain:\n  batch: 4\n  micro_batch: 4\n  lr: 0.003\n")
    _edgeas("train", "--config", str(cfg), "--data", str(data), "--out", str(run),
            "--epochs", "6")
    _edgeas("eval", "--checkpoint", str(run / "last.pt"), "--data", str(data), "--out", str(out))

    result = json.loads((out / "metrics.json").read_text())
    assert set(result) == {"brick", "tissue", "mean"}
    assert set(result["mean"]) == set(metric_names(with_deploy=True)) | set(DECISION_METRICS)
    for name in ("pr_curves.png", "pap_dsc.png", "examples.png", "decisions.png"):
        assert (out / name).stat().st_size > 10_000
    # the settings compared, each in both modes; the model's own reference figure is the
    # table's, and fused is measured against it on the same maps
    check = json.loads((out / "aggregation.json").read_text())
    assert (check["setting"], check["mode"]) == ("official", "fused")
    assert set(check["settings"]) == {"official", "none"}
    own = check["settings"]["official"]
    assert own["reference"]["pixel_ap"] == pytest.approx(result["mean"]["pixel_ap"])
    assert 0 < own["fused"]["pixel_ap"] <= 1 and 0 <= check["fused_vs_reference"][
        "same_decision"] <= 1
    gap = check["fused_vs_reference"]["pixel_ap_points"]
    assert gap == pytest.approx(100 * (own["fused"]["pixel_ap"] - own["reference"]["pixel_ap"]))
    print(f"fused - reference pAP: {gap:+.2f} points")

    stored = load_checkpoint(run / "last.pt")
    torch.manual_seed(0)
    untrained = build_model(config_from_dict(stored["config"]))
    record = ModelRecord.from_json(stored["metadata"], "last.pt")
    base = compute_metrics(predict_test_set(untrained, record, Path(data)), None)
    trained_pap, untrained_pap = result["mean"]["pixel_ap"], base["mean"]["pixel_ap"]
    print(f"pAP trained {trained_pap:.4f} vs untrained {untrained_pap:.4f}")
    assert not math.isnan(trained_pap)
    assert trained_pap > 3 * untrained_pap and trained_pap > untrained_pap + 0.05
