"""`edgeas train`: set up data, model and trainer from a config; write the run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeas.config import EdgeasConfig, config_from_dict, load_config, save_config
from edgeas.errors import ConfigError

console = Console(stderr=True)


def _overrides(epochs: int | None, batch: int | None) -> dict[str, Any]:
    train: dict[str, Any] = {}
    if epochs is not None:
        train["epochs"] = epochs
    if batch is not None:
        train["batch"] = batch
    return {"train": train} if train else {}


def fit_thresholds(cfg: EdgeasConfig, model, val_set, device):
    """Deployment threshold from held-out normal images, on maps of the runtime's mode at
    model resolution, with the config's decision rule (min_area); the same fit on each
    class's held-out images gives the per-class thresholds."""
    import numpy as np

    from edgeas.postprocess import config_setting, make_threshold
    from edgeas.thresholds import fit_threshold
    from edgeas.train.inference import aggregate_maps, decision_maps, predict_maps

    t, mode = cfg.threshold, cfg.aggregation.mode
    setting = {"min_area": t.min_area, "margin": t.margin}
    if len(val_set) == 0:
        console.print(
            "[yellow]warning:[/] no held-out normal images: threshold left unset "
            "(the runtime will then require --threshold)"
        )
        return make_threshold(None, t.policy, t.param, mode, images=0, **setting)
    levels, grids = predict_maps(model, val_set, batch=8, device=device)
    maps = decision_maps(levels, grids, tuple(cfg.input_size), mode,
                         *config_setting(cfg.aggregation), cfg.decision.sigma)
    fit = fit_threshold(maps, t.policy, t.param, **setting)
    if grids is not None:  # UniAS's own map: the heat map's scale (DecisionHead.map_threshold)
        own = aggregate_maps(levels, tuple(cfg.input_size), mode, *config_setting(cfg.aggregation))
        model.knn.map_threshold = fit_threshold(own, t.policy, t.param, **setting).value
    classes = np.array([s.cls for s in val_set.samples])
    per_class, short = {}, []
    for cls in dict.fromkeys(classes.tolist()):
        one = fit_threshold(maps[classes == cls], t.policy, t.param, **setting)
        per_class[cls] = one.value
        if one.warning:
            short.append(f"{cls} ({one.images})")
    if fit.warning:
        console.print(f"[yellow]warning:[/] {fit.warning}")
    if short:  # one line for all classes: a per-class warning each would bury the rest
        console.print(f"[yellow]warning:[/] the per-class thresholds of {', '.join(short)} "
                      "rest on too few held-out images to resolve the target")
    return make_threshold(fit.value, t.policy, t.param, mode, images=fit.images,
                          per_class=per_class, **setting)


def fit_decision_head(cfg: EdgeasConfig, model, train_set, device) -> None:
    """The nearest-neighbour decision head: a memory bank of the training images' patches
    (train/memory_bank.py), from the frozen backbone, attached to `model`."""
    import time

    import torch
    from rich.progress import Progress
    from torch.utils.data import DataLoader

    from edgeas.train.memory_bank import fit_bank

    def batches():  # a private generator: the global RNG (saved in checkpoints) stays put
        loader = DataLoader(train_set, batch_size=8, generator=torch.Generator())
        return (item[0].to(device) for item in loader)

    t0 = time.perf_counter()
    model.eval()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("memory bank: features", total=len(train_set))
        bank, patches = fit_bank(model.backbone, batches, cfg.decision.coreset, cfg.train.seed,
                                 lambda n: bar.advance(task, n))
    model.attach_bank(bank.cpu())
    model.knn.to(device)
    console.print(f"decision head: memory bank of {bank.shape[0]} of {patches} training "
                  f"patches ({cfg.decision.coreset:g} coreset, {bank.shape[1]} channels) in "
                  f"{time.perf_counter() - t0:.1f} s")


def train_command(
    config: str,
    data: Path,
    out: Path,
    epochs: int | None = None,
    batch: int | None = None,
    resume: bool = False,
    max_steps: int | None = None,
) -> Path:
    import torch

    from edgeas.train.checkpoint import (
        checkpoint_payload,
        load_checkpoint,
        model_recipe,
        save_checkpoint,
    )
    from edgeas.train.data import data_fingerprint, index_dataset, split_train_val
    from edgeas.train.datasets import TrainImages
    from edgeas.train.distributed import barrier, init_from_env, shutdown
    from edgeas.train.model.unias import build_model
    from edgeas.train.trainer import StopRequest, Trainer

    out = Path(out)
    last = out / "last.pt"
    stored = None
    if resume:
        stored = load_checkpoint(last)
        cfg = config_from_dict(
            _merge_stored(stored["config"], _overrides(epochs, batch)), f"{last} (stored config)"
        )
    else:
        if last.exists():
            raise ConfigError(
                f"{out} already holds a run ({last})",
                hint="add --resume to continue it, or choose another --out",
            )
        cfg = load_config(config, _overrides(epochs, batch))

    # Every rank builds the same data order and the same initial decoder.
    # The rank's device is chosen before the group is joined: it decides NCCL or gloo.
    info, device = init_from_env()
    torch.manual_seed(cfg.train.seed)
    index = index_dataset(data)
    fingerprint = data_fingerprint(index)
    train_samples, val_samples = split_train_val(
        index.train, cfg.train.val_fraction, cfg.train.seed
    )
    model = build_model(cfg, pretrained=False if stored else None)
    recipe = model_recipe(cfg, model)
    dataset = TrainImages(
        train_samples, recipe, cfg.train.augment, index.classes, seed=cfg.train.seed
    )
    trainer = Trainer(cfg, model, device, info)
    if stored is not None:
        trainer.load_state(stored)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        console.print(
            f"training [bold]{cfg.preset or config}[/] on {len(train_samples)} images "
            f"of {len(index.classes)} classes ({', '.join(index.classes)}), "
            f"{len(val_samples)} held out; device {device}, {info.world} process(es)"
        )

    threshold = None  # unset until fitted after training

    def save(kind: str) -> None:
        if not info.is_main:
            return
        payload = {
            **checkpoint_payload(cfg, model, index.classes, fingerprint, threshold),
            **trainer.state(),
        }
        save_checkpoint(last, payload)
        if kind == "epoch":
            save_checkpoint(out / f"epoch_{trainer.position.epoch:04d}.pt", payload)

    def log(record: dict[str, Any]) -> None:
        if not info.is_main:
            return
        with open(out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    stop = StopRequest()
    stop.install()
    try:
        with _progress(info.is_main, cfg.train.epochs) as progress:
            reason = trainer.run(dataset, cfg.train.epochs, save, log, max_steps, progress, stop)
    finally:
        stop.restore()
    if reason != "stopped" and info.is_main:
        if cfg.decision.head == "knn":
            fit_decision_head(cfg, model, TrainImages(train_samples, recipe, None,
                                                      index.classes, seed=cfg.train.seed),
                              device)
        val_set = TrainImages(val_samples, recipe, None, index.classes, seed=cfg.train.seed)
        threshold = fit_thresholds(cfg, model, val_set, device)
        save("last")
        _summary(out, reason, trainer, threshold)
    elif info.is_main:
        console.print(
            f"stopped at epoch {trainer.position.epoch + 1}, step "
            f"{trainer.position.step}; state saved to {last}. Continue with: "
            f"edgeas train --config {config} --data {data} --out {out} --resume"
        )
    barrier(info)
    shutdown(info)
    return last


def _merge_stored(stored: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(stored)
    if overrides:
        merged["train"] = {**stored["train"], **overrides["train"]}
    return merged


def _summary(out: Path, reason: str, trainer, threshold) -> None:
    value = threshold.value
    shown = "unset" if value is None else f"{value:.5f}"
    console.print(
        f"[green]{'finished' if reason == 'done' else 'stopped after max steps'}[/]: "
        f"epoch {trainer.position.epoch}, step {trainer.position.step}; threshold {shown} "
        f"({threshold.policy} {threshold.param:g}, {threshold.mode} maps, min_area "
        f"{threshold.min_area}, {threshold.images} held-out images); checkpoint "
        f"{out / 'last.pt'}"
    )
    console.print(f"next: edgeas eval --checkpoint {out / 'last.pt'} --data DATA")


class _progress:
    """A rich progress bar with loss and images/s, on rank 0 only."""

    def __init__(self, enabled: bool, epochs: int) -> None:
        self.enabled, self.epochs = enabled, epochs
        self.bar = None
        self.task = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} img"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[ips]:.1f} img/s"),
            TimeRemainingColumn(),
            console=console,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task(
            "train", total=1, epoch=0, epochs=self.epochs, loss=0.0, ips=0.0
        )
        return self.update

    def update(self, epoch: int, seen: int, total: int, loss: float, ips: float) -> None:
        self.bar.update(self.task, completed=seen, total=total, epoch=epoch + 1, loss=loss, ips=ips)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
