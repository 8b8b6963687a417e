"""The nearest-neighbour decision head (edgeas.decision_head, train/memory_bank.py): its
arithmetic against independent implementations, its record, its config, and a station
that decides on it (the calls recomputed from the exported graph's outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_stream_support import CLASS, SIZE, edgeas, make_clip, read_events, video_frames

from edgeas.config import load_config
from edgeas.decision_head import head_map, head_maps, split_outputs
from edgeas.decisions import decision_score
from edgeas.errors import ArtifactError, ConfigError, ModelOutputError
from edgeas.record import ModelRecord
from edgeas.train.memory_bank import (
    NearestPatchHead,
    greedy_coreset,
    nearest_distance,
    patch_features,
)

# --------------------------------------------------------------------------- arithmetic


def _torch_head_map(grid: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """PatchCore's recipe in torch: bilinear (half-pixel) upsample, then a Gaussian of
    radius round(4 sigma) with a reflecting border, as separable convolutions."""
    x = torch.from_numpy(grid)[None, None]
    up = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    r = int(4 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).float()
    y = F.conv2d(F.pad(up, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y[0, 0].numpy()


@pytest.mark.parametrize("sigma", [0.0, 1.5, 4.0])
def test_head_map_is_the_upsampled_smoothed_grid(sigma):
    grid = np.random.default_rng(0).gamma(2.0, 1.0, (28, 28)).astype(np.float32)
    got = head_map(grid, (224, 224), sigma)
    if sigma == 0:
        want = F.interpolate(torch.from_numpy(grid)[None, None], size=(224, 224),
                             mode="bilinear", align_corners=False)[0, 0].numpy()
    else:
        want = _torch_head_map(grid, 224, sigma)
    assert got.shape == (224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    batch = head_maps(np.stack([grid, 2 * grid])[:, None], (224, 224), sigma)
    np.testing.assert_allclose(batch[1], 2 * got, rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelOutputError, match="shape"):
        head_map(np.zeros((2, 3, 4), np.float32), (8, 8), sigma)


def test_the_head_module_gives_exact_nearest_distances():
    gen = torch.Generator().manual_seed(1)
    # backbone-like levels: res1..res4 at strides 2..16 of a 64 px image
    feats = [torch.randn(2, c, 64 // s, 64 // s, generator=gen)
             for c, s in ((8, 2), (12, 4), (16, 8), (24, 16))]
    rows = patch_features(feats).permute(0, 2, 3, 1).reshape(-1, 40)
    bank = rows[torch.randperm(rows.shape[0], generator=gen)[:50]] + 0.1
    got = NearestPatchHead(bank)(feats)
    assert got.shape == (2, 8, 8)
    want = nearest_distance(rows, bank).view(2, 8, 8)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # a head loaded from a state dict computes with the loaded bank (nothing cached)
    loaded = NearestPatchHead(torch.zeros_like(bank))
    loaded.load_state_dict({"bank": bank})
    torch.testing.assert_close(loaded(feats), got)
    # brute force in float64 numpy for one patch
    x, b = rows[5].double().numpy(), bank.double().numpy()
    assert float(got.flatten()[5]) == pytest.approx(np.linalg.norm(b - x, axis=1).min(), rel=1e-4)


def test_the_coreset_is_k_center_greedy():
    """Five tight clusters far apart: a coreset of five keeps one point of each, and every
    point lies within the greedy algorithm's radius of the points kept."""
    gen = torch.Generator().manual_seed(2)
    centres = torch.eye(5) * 100
    points = torch.cat([c + torch.randn(40, 5, generator=gen) for c in centres])
    keep = greedy_coreset(points, 5 / 200, seed=0)
    assert sorted((keep // 40).tolist()) == [0, 1, 2, 3, 4]
    assert greedy_coreset(points, 1.0).tolist() == list(range(200))
    # a projection (more than 128 dims) keeps the same property
    wide = torch.cat([points, torch.zeros(200, 200)], dim=1)
    assert sorted((greedy_coreset(wide, 5 / 200) // 40).tolist()) == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- record, config


def _record_json(**head) -> dict:
    from sample_records import schema1_metadata

    data = schema1_metadata(schema=3, data_fingerprint=None, precision="fp32")
    if head:
        data["decision_head"] = head
    return data


def test_a_record_with_a_head_round_trips_and_bad_heads_are_named():
    head = {"kind": "knn", "output": "knn_dist", "stride": 8, "sigma": 4.0, "bank": 12,
            "map_threshold": 0.25}
    rec = ModelRecord.from_json(_record_json(**head), "m.onnx")
    assert rec.model.head is not None and rec.model.head.map_threshold == 0.25
    assert rec.model.outputs[-1] == "knn_dist" and len(rec.model.level_outputs) == 4
    data = rec.to_json()
    assert data["schema"] == 3 and data["decision_head"] == head
    assert ModelRecord.from_json(json.loads(json.dumps(data)), "x") == rec
    levels, grid = split_outputs(rec, [np.zeros(1)] * 5)
    assert len(levels) == 4 and grid is not None
    with pytest.raises(ModelOutputError, match="4 levels and a decision head, but 4"):
        split_outputs(rec, [np.zeros(1)] * 4)
    for bad, match in ((dict(head, kind="svm"), "kind 'svm'"),
                       (dict(head, output="dist_res1"), "also a level's output"),
                       (dict(head, stride=0), "stride >= 1"),
                       (dict(head, map_threshold=-1.0), "map_threshold"),
                       ({"kind": "knn"}, "kind, output, stride")):
        with pytest.raises(ArtifactError, match=match):
            ModelRecord.from_json(_record_json(**bad), "m.onnx")
    assert ModelRecord.from_json(_record_json(), "m.onnx").model.head is None


def test_the_decision_section_is_checked_on_load(tmp_path):
    assert load_config("demo-cpu").decision.head == "knn"
    assert load_config("tiny").decision.head == "map"  # the default: decide on the map
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: tiny\ndecision:\n  head: knnn\n")
    with pytest.raises(ConfigError, match="decision.head 'knnn'") as err:
        load_config(cfg)
    assert "knn" in (err.value.hint or "") and str(cfg) in err.value.message
    cfg.write_text("preset: tiny\ndecision:\n  coreset: 0\n")
    with pytest.raises(ConfigError, match="decision.coreset"):
        load_config(cfg)
    cfg.write_text("preset: tiny\ndecision:\n  bank: 3\n")
    with pytest.raises(ConfigError, match="bank"):
        load_config(cfg)


# --------------------------------------------------------------------------- a real model


@pytest.fixture(scope="module")
def head_model(tmp_path_factory) -> dict:
    from edgeas.train.synth import make_dataset

    root = tmp_path_factory.mktemp("head_model")
    data, run = root / "data", root / "run"
    make_dataset(data, classes=CLASS, per_class=16, seed=0, size=SIZE)
    cfg = root / "head.yaml"
    cfg.write_text("preset: tiny\ntrain:\n  batch: 4\n  micro_batch: 4\n  val_fraction: 0.25\n"
                   "decision:\n  head: knn\n  coreset: 0.02\nthreshold:\n  min_area: 16\n")
    trained = edgeas("train", "--config", str(cfg), "--data", str(data), "--out", str(run),
                     "--max-steps", "3")
    model = root / "model.onnx"
    edgeas("export", "--checkpoint", str(run / "last.pt"), "-o", str(model))
    return {"root": root, "data": data, "run": run, "model": model,
            "train_log": trained.stdout + trained.stderr}


def _onnx_outputs(model: Path, images: list[np.ndarray]) -> tuple[ModelRecord, list]:
    import onnxruntime as ort

    from edgeas.artifacts import read_onnx_record
    from edgeas.preprocess import preprocess_bgr

    record = read_onnx_record(model)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outs = []
    for img in images:
        x = preprocess_bgr(img, record.preprocessing)[None]
        outs.append(session.run(list(record.model.outputs), {session.get_inputs()[0].name: x}))
    return record, outs


def test_training_fits_the_bank_and_the_threshold_on_the_heads_maps(head_model):
    from edgeas.thresholds import fit_threshold
    from edgeas.train.checkpoint import load_checkpoint
    from edgeas.train.data import index_dataset, read_image, split_train_val

    assert "decision head: memory bank of" in head_model["train_log"]
    ckpt = load_checkpoint(head_model["run"] / "last.pt")
    bank = ckpt["model"]["knn.bank"]
    record = ModelRecord.from_json(ckpt["metadata"], "last.pt")
    head = record.model.head
    assert head is not None and head.bank == bank.shape[0] and head.map_threshold is not None
    index = index_dataset(head_model["data"])
    train, val = split_train_val(index.train, 0.25, 0)
    # 28 x 28 patches per 224 px training image, 2% kept
    assert bank.shape == (round(len(train) * 28 * 28 * 0.02), 40 + 112)
    _, outs = _onnx_outputs(head_model["model"], [read_image(s.path) for s in val])
    maps = np.stack([head_map(o[-1], record.preprocessing.input_size, head.sigma) for o in outs])
    want = fit_threshold(maps, "frame_fpr", 0.01, min_area=16)
    assert record.threshold.value == pytest.approx(want.value, rel=1e-4)
    assert record.threshold.min_area == 16 and record.threshold.images == len(val)


def test_the_station_decides_on_the_heads_map(head_model, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", "..X.X..X.")
    events = tmp_path / "events"
    run = edgeas("stream", "--model", str(head_model["model"]), "--video", str(clip.path),
                 "--events", str(events), "--summary-json", str(tmp_path / "summary.json"))
    assert "OK/NG decided on the knn decision head" in run.stdout + run.stderr
    record, outs = _onnx_outputs(head_model["model"], video_frames(clip.path))
    tau, sigma = record.threshold.value, record.model.head.sigma
    maps = [head_map(o[-1], record.preprocessing.input_size, sigma) for o in outs]
    expected = {i for i, m in enumerate(maps) if decision_score(m, 16) >= tau}
    got = read_events(events)
    assert {e["frame"] for e in got} == expected
    for e in got:  # the event's score is the head map's maximum, its threshold the head's
        assert e["score"] == pytest.approx(float(maps[e["frame"]].max()), rel=1e-4)
        assert e["threshold"] == pytest.approx(tau)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ng_frames"] == len(expected)
    assert summary["decision"].startswith("the knn decision head")


def test_a_finished_run_with_a_head_resumes_and_refits_it(head_model, tmp_path):
    import shutil

    from edgeas.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(head_model["run"], run)
    before = load_checkpoint(run / "last.pt")["position"]["step"]
    edgeas("train", "--config", str(head_model["root"] / "head.yaml"), "--data",
           str(head_model["data"]), "--out", str(run), "--resume", "--max-steps", "4")
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["position"]["step"] > before
    assert ckpt["model"]["knn.bank"].shape == load_checkpoint(
        head_model["run"] / "last.pt")["model"]["knn.bank"].shape


def test_fit_head_gives_a_trained_model_the_same_head_without_retraining(head_model, tmp_path):
    """The bank and the head's threshold depend only on the frozen backbone and the
    split: a model trained without a head, given one by `fit-head`, gets the same bank
    and the same threshold as the model trained with it; the old threshold is history."""
    import torch

    from edgeas.train.checkpoint import load_checkpoint

    cfg = tmp_path / "map.yaml"
    cfg.write_text((head_model["root"] / "head.yaml").read_text()
                   .replace("decision:\n  head: knn\n  coreset: 0.02\n", ""))
    edgeas("train", "--config", str(cfg), "--data", str(head_model["data"]), "--out",
           str(tmp_path / "run"), "--max-steps", "2")
    plain = tmp_path / "run" / "last.pt"
    assert "knn.bank" not in load_checkpoint(plain)["model"]
    edgeas("fit-head", "--checkpoint", str(plain), "--data", str(head_model["data"]),
           "--coreset", "0.02")
    got, want = (load_checkpoint(p) for p in (tmp_path / "run" / "last.knn.pt",
                                              head_model["run"] / "last.pt"))
    torch.testing.assert_close(got["model"]["knn.bank"], want["model"]["knn.bank"])
    new, ref = (ModelRecord.from_json(c["metadata"], "x") for c in (got, want))
    assert new.threshold.value == pytest.approx(ref.threshold.value, rel=1e-5)
    old = ModelRecord.from_json(load_checkpoint(plain)["metadata"], "x").threshold.value
    assert new.threshold.history[-1]["value"] == pytest.approx(old)
    # the same head; only the UniAS map's own value differs (another decoder)
    assert (new.model.head.bank, new.model.head.sigma) == (ref.model.head.bank, 4.0)
    result = edgeas("fit-head", "--checkpoint", str(plain), "--data", str(head_model["data"]),
                    "--out", str(plain), check=False)
    assert result.returncode == 2 and "is the checkpoint itself" in result.stdout + result.stderr


def test_commissioning_refits_the_threshold_on_a_camera_clip_of_normal_parts(head_model,
                                                                             tmp_path):
    """`synth-clip --split train` films the normal parts only; `threshold fit --images
    CLIP` fits on its decoded frames, resized as the station resizes them."""
    import shutil

    from edgeas.artifacts import read_onnx_record
    from edgeas.thresholds import fit_threshold

    clip = tmp_path / "commission.mp4"
    edgeas("synth-clip", str(head_model["data"]), "-o", str(clip), "--split", "train",
           "--hold", "1", "--frame", "320x240")
    doc = json.loads(clip.with_suffix(".json").read_text())
    trains = sorted((head_model["data"] / CLASS / "train" / "good").glob("*.png"))
    assert len(doc["frames"]) == len(trains) and not any(f["defect"] for f in doc["frames"])
    model = tmp_path / "model.onnx"
    shutil.copy(head_model["model"], model)
    edgeas("threshold", "fit", "--model", str(model), "--images", str(clip))
    record, outs = _onnx_outputs(head_model["model"], video_frames(clip))
    maps = np.stack([head_map(o[-1], (SIZE, SIZE), record.model.head.sigma) for o in outs])
    want = fit_threshold(maps, "frame_fpr", 0.01, min_area=16)
    new = read_onnx_record(model).threshold
    assert new.value == pytest.approx(want.value, rel=1e-4) and new.images == len(trains)
    assert new.history[-1]["value"] == pytest.approx(record.threshold.value)
    bad = edgeas("threshold", "fit", "--model", str(model), "--images",
                 str(tmp_path / "none.mp4"), check=False)
    assert bad.returncode != 0 and "none.mp4" in bad.stdout + bad.stderr
