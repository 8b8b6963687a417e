"""`edgeas eval` and `edgeas threshold fit` on a model with a decision head: the OK/NG
figures and the refitted threshold come from the head's maps (the ones training fitted
the threshold on), the pixel metrics from the UniAS map, and the UniAS map's own decision
figures are reported as `map_...`. One tiny model with a knn head, trained for one step
and exported once per module; every expected value is recomputed here from the model's
raw outputs with edgeas.decision_head, edgeas.decisions, edgeas.metrics and
edgeas.thresholds."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
TARGET = 0.2  # frame_fpr target of the threshold fits (few images: a coarse one)
MIN_AREA = 4


@pytest.fixture(scope="module")
def head_model(tmp_path_factory) -> dict[str, Path]:
    """A synthetic data set, a 3-step checkpoint with a knn decision head, its ONNX."""
    from edgeas.export.command import export_command
    from edgeas.train.run import train_command
    from edgeas.train.synth import make_dataset

    root = tmp_path_factory.mktemp("head")
    data = root / "data"
    # 160 px: the smallest input the tiny preset accepts, half the pixels of its 224
    make_dataset(data, classes=["brick", "coins"], per_class=8, seed=0, size=160)
    cfg = root / "cfg.yaml"
    cfg.write_text("preset: tiny\ninput_size: [160, 160]\ntrain:\n  epochs: 1\n  batch: 2\n"
                   "  micro_batch: 2\ndecision:\n  head: knn\n")
    # one step: what is tested is the head fitted after training, not what training learnt
    train_command(str(cfg), data, root / "run", max_steps=1)
    onnx_path = root / "m.onnx"
    export_command(root / "run" / "last.pt", None, False, onnx_path, dynamic_batch=True)
    return {"data": data, "ckpt": root / "run" / "last.pt", "onnx": onnx_path}


def _checkpoint(path: Path):
    from edgeas.record import ModelRecord
    from edgeas.train.checkpoint import load_checkpoint, model_from_checkpoint

    stored = load_checkpoint(path)
    _, model = model_from_checkpoint(stored, str(path))
    return model, ModelRecord.from_json(stored["metadata"], str(path))


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def test_eval_decides_on_the_head_and_reports_the_map_alone(head_model, tmp_path, capsys):
    from edgeas.decision_head import head_maps
    from edgeas.decisions import DECISION_METRICS, decision_report
    from edgeas.metrics import MAD_PARTS, dice_per_image, evaluate, metric_names
    from edgeas.postprocess import record_setting
    from edgeas.train.data import index_dataset
    from edgeas.train.datasets import TestImages
    from edgeas.train.evaluate import HEAD_FIGURES, eval_command
    from edgeas.train.inference import aggregate_maps, predict_maps

    out = tmp_path / "eval"
    eval_command(head_model["ckpt"], head_model["data"], out)
    printed = capsys.readouterr()
    result = json.loads((out / "metrics.json").read_text())

    # the same test images through the checkpoint, every map rebuilt here
    model, record = _checkpoint(head_model["ckpt"])
    head = record.model.head
    assert head is not None and head.kind == "knn"
    index = index_dataset(head_model["data"])
    dataset = TestImages(index.test, record.preprocessing)
    levels, grids = predict_maps(model, dataset)
    size = tuple(record.preprocessing.input_size)
    masks = np.stack([dataset[i][1].numpy() for i in range(len(dataset))])
    classes = [s.cls for s in index.test]
    mode, smoothing, use = record_setting(record)
    decide = head_maps(grids, size, head.sigma)
    station = aggregate_maps(levels, size, mode, smoothing, use)
    reference = evaluate(aggregate_maps(levels, size, "reference", smoothing, use), masks,
                         classes)
    tau, min_area = record.threshold.value, record.min_area
    assert tau is not None
    on_head = decision_report(decide, masks, classes, tau, min_area)[0]
    on_map = decision_report(station, masks, classes, None, min_area)[0]
    images_head = evaluate(decide, masks, classes)
    # the comparison below can tell the two maps apart on this model
    curve = ("recall_at_fng_1", "recall_at_fng_5")
    assert ([on_head["mean"][k] for k in curve], images_head["mean"]["image_auroc"]) != (
        [on_map["mean"][k] for k in curve], reference["mean"]["image_auroc"])

    labels = np.asarray(classes)
    assert set(result) == {"brick", "coins", "mean"}
    for cls, got in result.items():
        assert set(got) == (set(metric_names(with_deploy=True)) | set(DECISION_METRICS)
                            | {"map_" + k for k in HEAD_FIGURES})
        # OK/NG figures: the head's maps at the stored threshold
        for k in DECISION_METRICS:
            assert _close(got[k], on_head[cls][k]), (cls, k)
        for k in ("image_auroc", "image_ap", "image_f1max"):
            assert _close(got[k], images_head[cls][k]), (cls, k)
            assert _close(got["map_" + k], reference[cls][k]), (cls, k)
        # the UniAS map alone: its threshold-free decision figures in the station's mode
        for k in curve:
            assert _close(got["map_" + k], on_map[cls][k]), (cls, k)
        # pixel metrics stay the UniAS map's
        for k in ("pixel_ap", "pixel_auroc", "dsc", "aupro"):
            assert _close(got[k], reference[cls][k]), (cls, k)
        assert _close(got["map_mad"], reference[cls]["mad"])
        if cls != "mean":
            # mAD of what is shown: the head's image parts, the map's pixel parts
            assert _close(got["mad"], float(np.mean([got[k] for k in MAD_PARTS])))
            keep = labels == cls
            assert got["dsc_deploy"] == pytest.approx(
                dice_per_image(decide[keep], masks[keep], tau))

    # aggregation.json: the UniAS map's own figures, the head named, no call compared
    check = json.loads((out / "aggregation.json").read_text())
    assert check["decided_on"] == {"decision_head": "knn", "output": head.output}
    assert check["fused_vs_reference"]["same_decision"] is None
    own = check["settings"][check["setting"]]
    assert own[mode]["recall_at_fng_1"] == pytest.approx(on_map["mean"]["recall_at_fng_1"])
    assert own["reference"]["image_auroc"] == pytest.approx(reference["mean"]["image_auroc"])
    assert (out / "decisions.png").stat().st_size > 10_000
    text = " ".join((printed.out + printed.err).split())
    assert "OK/NG is decided on the knn decision head" in text
    assert re.search(r"UniAS map\W+-\W+-\W+\d", text)  # its row: no frame figures, curves


def _onnx_head_maps(path: Path, record, images: np.ndarray) -> np.ndarray:
    """The head's maps straight from ONNX Runtime (not through edgeas' backends)."""
    from edgeas.decision_head import head_maps

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (grids,) = session.run([record.model.head.output], {name: images})
    return head_maps(grids, record.preprocessing.input_size, record.model.head.sigma)


def test_threshold_fit_refits_on_the_head_maps(head_model, tmp_path):
    import torch

    from edgeas.aggregate import aggregate_batch
    from edgeas.artifacts import read_record
    from edgeas.decision_head import head_maps
    from edgeas.imageio import read_bgr
    from edgeas.postprocess import record_setting
    from edgeas.preprocess import preprocess_bgr
    from edgeas.threshold_fit import FitRequest, threshold_fit_command
    from edgeas.thresholds import fit_threshold

    folder = head_model["data"] / "brick" / "train" / "good"
    files = sorted(folder.glob("*.png"))
    model, record = _checkpoint(head_model["ckpt"])
    images = np.stack([preprocess_bgr(read_bgr(p), record.preprocessing) for p in files])
    req = FitRequest(param=TARGET, min_area=MIN_AREA)

    def expected(maps: np.ndarray) -> float:
        return fit_threshold(maps, "frame_fpr", TARGET, min_area=MIN_AREA, margin=1.0).value

    # the checkpoint: torch's own forward pass
    model.eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(images))
    size = record.preprocessing.input_size
    want = expected(head_maps(out.knn.numpy(), size, record.model.head.sigma))
    ckpt = _copy(head_model["ckpt"], tmp_path / "last.pt")
    got = threshold_fit_command(ckpt, folder, req).threshold
    assert got.value == pytest.approx(want, rel=1e-6)
    assert read_record(ckpt).threshold == got and len(got.history) == 1
    # not what the UniAS map would have given (the test can tell them apart)
    levels = [d.numpy() for d in out.dists]
    on_map = expected(aggregate_batch(levels, size, *record_setting(record)))
    assert want != pytest.approx(on_map, rel=1e-3)

    # the ONNX model: edgeas' backend, its outputs split after the level maps
    onnx_path = _copy(head_model["onnx"], tmp_path / "m.onnx")
    want_onnx = expected(_onnx_head_maps(onnx_path, record, images))
    fitted = threshold_fit_command(onnx_path, folder, req, "cpu")
    assert fitted.threshold.value == pytest.approx(want_onnx, rel=1e-6)
    assert fitted.model.head == record.model.head and read_record(onnx_path) == fitted
    assert fitted.threshold.value == pytest.approx(got.value, rel=1e-3)  # torch vs ORT
