"""`edgeas threshold fit`: refit a model's threshold on a station's own normal images.

Retraining is not needed to move tau: the model runs on the images (an ONNX model or an
engine through the runtime's backends, no torch; a checkpoint through torch), their maps
are made at model resolution where the station decides (a decision head's maps when the
model has one, edgeas.decision_head; else the aggregated maps in the record's mode),
the policy fits tau with the decision rule's min_area, and the new record is
written back into the same file (ONNX metadata_props, the engine's sidecar, or the
checkpoint), atomically. The replaced threshold record goes to `threshold.history`.

With `--class C` only that class's per-class value is refitted, with the record's own
policy, parameter, margin and min_area (all per-class values share them); without it the
all-class value is refitted and the per-class values, fitted on other images, move to the
history with the rest of the old record.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from edgeas import postprocess as pp
from edgeas.artifacts import CHECKPOINT_SUFFIXES, ENGINE_SUFFIXES, read_record, sidecar_path
from edgeas.errors import ConfigError, DataError, ModelOutputError
from edgeas.record import ModelRecord, Threshold

console = Console(stderr=True, soft_wrap=True)  # a message stays on one line
BATCH = 8  # images per inference when the model takes any batch size


@dataclass(frozen=True)
class FitRequest:
    """The command's options; None = the default (see `settings`)."""

    policy: str | None = None
    param: float | None = None
    min_area: int | None = None
    margin: float | None = None
    cls: str | None = None


@dataclass(frozen=True)
class FitSettings:
    policy: str
    param: float
    min_area: int
    margin: float


def settings(record: ModelRecord, req: FitRequest, model: str) -> FitSettings:
    """What the fit uses. Without --class: the given values, else the station default
    policy (frame_fpr) and its parameter, margin 1 and the record's min_area. With
    --class: the record's own threshold setting, which the per-class values share."""
    old = record.threshold
    if req.cls is not None:
        pp.check_class(record, req.cls, model)
        own = FitSettings(old.policy, old.param, old.min_area, old.margin)
        given = {"--policy": (req.policy, own.policy), "--param": (req.param, own.param),
                 "--min-area": (req.min_area, own.min_area),
                 "--margin": (req.margin, own.margin)}
        differ = [f"{k} {v!r} (the record's: {o!r})" for k, (v, o) in given.items()
                  if v is not None and v != o]
        if differ:
            raise ConfigError(
                f"--class {req.cls}: a per-class threshold shares the record's setting, but "
                + ", ".join(differ),
                hint="drop those options, or first refit the all-class threshold with them "
                "(without --class)")
        return own
    policy = pp.threshold_policy(req.policy or pp.DEFAULT_POLICY, "--policy").name
    param = pp.THRESHOLD_POLICIES[policy].check(req.param, f"--param ({policy})")
    margin = pp.MARGIN.check(req.margin, "--margin")
    area = record.min_area if req.min_area is None else req.min_area
    if isinstance(area, bool) or int(area) != area or area < 0:
        raise ConfigError(f"--min-area must be a whole number >= 0, got {area!r}")
    return FitSettings(policy, param, int(area), margin)


# --------------------------------------------------------------------------- images -> maps


VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v")
MAX_VIDEO_FRAMES = 10_000


def video_frames(video: Path, input_hw) -> list[np.ndarray]:
    """Every frame of a video of normal parts, resized to the model's input as the station
    resizes a frame (so a camera's codec and scaling are in the fitted maps)."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise DataError(f"--images {video}: OpenCV cannot open this video")
    h, w = int(input_hw[0]), int(input_hw[1])
    frames = []
    try:
        while len(frames) < MAX_VIDEO_FRAMES:
            ok, frame = cap.read()
            if not ok:
                break
            if frame.shape[:2] != (h, w):
                frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise DataError(f"--images {video}: no frame could be decoded")
    return frames


def image_files(images: Path, cls: str | None, input_hw=None) -> list:
    """The normal images: a folder, a data set root (its CLASS/train/good with --class,
    every class's train/good otherwise), or a video of normal parts from the station's
    camera (its frames, resized to `input_hw` as the station does)."""
    from edgeas.calibimages import normal_images

    images = Path(images)
    if not images.exists():
        raise ConfigError(f"--images {images}: no such folder or video")
    if images.is_file() and images.suffix.lower() in VIDEO_SUFFIXES and input_hw is not None:
        return video_frames(images, input_hw)
    folder = images / cls / "train" / "good" if cls is not None else None
    root = folder if folder is not None and folder.is_dir() else images
    try:
        return normal_images(root, "--images", "held-out normal images")
    except DataError as exc:
        raise DataError(f"threshold fit needs held-out normal images to fit on; {exc.message}",
                        hint="point --images at normal images of the station that the model "
                        "was not trained on") from exc


def _batches(files: list[Path], recipe, size: int):
    from edgeas.imageio import read_bgr
    from edgeas.preprocess import preprocess_bgr

    for start in range(0, len(files), size):
        chunk = files[start:start + size]
        yield np.stack([preprocess_bgr(read_bgr(p, "normal image") if isinstance(p, Path)
                                       else p, recipe) for p in chunk])


def _outputs_from_backend(path: Path, record: ModelRecord, files: list[Path],
                          device: str) -> list[np.ndarray]:
    """Every output of the model on the images, in `record.model.outputs` order."""
    from edgeas.runtime.backends import open_backend

    backend = open_backend(path, device)
    try:
        size = backend.batch or BATCH
        chunks = [backend.infer(b) for b in _batches(files, record.preprocessing, size)]
    finally:
        backend.close()
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def _outputs_from_checkpoint(path: Path, record: ModelRecord, files: list[Path]
                             ) -> tuple[list[np.ndarray], np.ndarray | None]:
    """(level maps, the decision head's grids or None) of the checkpoint's model: the same
    forward pass as `edgeas.train.inference.predict_maps` (not imported: the core reaches
    the training code only through edgeas.train.checkpoint)."""
    import torch

    from edgeas.train.checkpoint import load_checkpoint, model_from_checkpoint

    _, model = model_from_checkpoint(load_checkpoint(path), str(path))
    model.eval()  # the decision head only runs in eval mode
    chunks: list[list[np.ndarray]] = []
    grids: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in _batches(files, record.preprocessing, BATCH):
            out = model(torch.from_numpy(batch))
            chunks.append([d.float().numpy() for d in out.dists])
            if out.knn is not None:
                grids.append(out.knn.float().numpy())
    levels = [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
    return levels, np.concatenate(grids) if grids else None


def normal_maps(path: Path, record: ModelRecord, files: list[Path],
                device: str = "auto") -> np.ndarray:
    """(N, H, W) maps the station decides on, at model size: the decision head's
    (edgeas.decision_head) when the model has one, else the maps of the record's
    aggregation (setting and mode)."""
    from edgeas.aggregate import aggregate_batch
    from edgeas.decision_head import head_maps, split_outputs
    from edgeas.postprocess import record_setting

    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        levels, grids = _outputs_from_checkpoint(path, record, files)
    else:
        levels, grids = split_outputs(record, _outputs_from_backend(path, record, files, device))
    size = record.preprocessing.input_size
    head = record.model.head
    if head is None:
        return aggregate_batch(levels, size, *record_setting(record))
    if grids is None:
        raise ModelOutputError(f"{path}: the record names a decision head "
                               f"({head.output}) but the model gave no distance grid",
                               hint="use the checkpoint or export that the record came with")
    return head_maps(grids, size, head.sigma)


# --------------------------------------------------------------------------- the new record


def _previous(old: Threshold) -> dict[str, Any]:
    """The old record as one history entry (its own history is carried separately)."""
    entry = old.to_json()
    entry.pop("history", None)
    entry["replaced_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    return entry


def refitted(record: ModelRecord, value: float, images: int, how: FitSettings,
             cls: str | None) -> ModelRecord:
    old = record.threshold
    history = (*old.history, _previous(old))
    if cls is not None:
        threshold = pp.make_threshold(old.value, old.policy, old.param, old.mode,
                                      min_area=old.min_area, images=old.images,
                                      margin=old.margin,
                                      per_class={**old.per_class, cls: value}, history=history)
        return record.with_postprocess(dataclasses.replace(record.postprocess,
                                                           threshold=threshold))
    mode = record.aggregation.mode
    threshold = pp.make_threshold(value, how.policy, how.param, mode, min_area=how.min_area,
                                  images=images, margin=how.margin, history=history)
    # the station applies the min_area the threshold was fitted with
    return record.with_postprocess(dataclasses.replace(record.postprocess, threshold=threshold,
                                                       min_area=how.min_area))


def write_record(path: Path, record: ModelRecord) -> Path:
    """Write `record` into the artifact it came from; returns the file written."""
    from edgeas.fileio import atomic_write_text

    suffix = path.suffix.lower()
    meta = record.to_json()
    if suffix == ".onnx":
        from edgeas.onnxio import write_metadata_file

        write_metadata_file(path, meta)
        return path
    if suffix in CHECKPOINT_SUFFIXES:
        from edgeas.train.checkpoint import load_checkpoint, save_checkpoint

        data = load_checkpoint(path)
        data["metadata"] = meta
        save_checkpoint(path, data)
        return path
    side = sidecar_path(path)
    atomic_write_text(side, json.dumps(meta, indent=2) + "\n")
    return side


def threshold_fit_command(model: Path, images: Path, req: FitRequest,
                          device: str = "auto") -> ModelRecord:
    from edgeas.thresholds import fit_threshold

    model = Path(model)
    if not model.is_file():
        raise ConfigError(f"--model {model}: file not found")
    suffix = model.suffix.lower()
    if suffix not in (".onnx", *CHECKPOINT_SUFFIXES, *ENGINE_SUFFIXES):
        raise ConfigError(f"--model {model}: not a checkpoint (.pt), ONNX model or engine")
    record = read_record(model)
    how = settings(record, req, str(model))
    files = image_files(images, req.cls, record.preprocessing.input_size)
    maps = normal_maps(model, record, files, device)
    fit = fit_threshold(maps, how.policy, how.param, min_area=how.min_area, margin=how.margin)
    if fit.warning:
        console.print(f"[yellow]warning:[/] {fit.warning}")
    new = refitted(record, fit.value, fit.images, how, req.cls)
    ModelRecord.from_json(new.to_json(), str(model))  # what is written reads back
    written = write_record(model, new)
    old = record.threshold
    before = old.per_class.get(req.cls, old.value) if req.cls else old.value
    head = record.model.head
    on = record.aggregation.mode if head is None else f"{head.kind} decision head"
    shown = "unset" if before is None else f"{before:.6g}"
    console.print(
        f"[green]threshold[/]{f' of class {req.cls}' if req.cls else ''}: {shown} -> "
        f"{fit.value:.6g} ({how.policy} {how.param:g}, min_area {how.min_area}, margin "
        f"{how.margin:g}, {on} maps at "
        f"{'x'.join(map(str, record.preprocessing.input_size))}, {fit.images} images of "
        f"{images}); wrote {written}, the old record kept in threshold.history "
        f"({len(new.threshold.history)} in all)")
    return new
