"""`edgeas fit-head`: give an already trained checkpoint a nearest-neighbour decision head.

The head needs no training (train/memory_bank.py: a bank of the frozen backbone's
patches), so a model trained with `decision.head: map` gets one without retraining:
the bank from the run's own training split, then the threshold refitted on the head's
maps of the run's own held-out split (the split the config's val_fraction and seed
give, so no image the decoder was trained on decides the threshold), the old threshold
kept in `threshold.history`. The result is written to a new checkpoint (default
CHECKPOINT with `.knn.pt`), atomically; the original is left as it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.console import Console

from edgeas.errors import ConfigError, DataError

console = Console(highlight=False)


def default_output(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".knn.pt")


def fit_head_command(checkpoint: Path, data: Path, out: Path | None = None,
                     coreset: float | None = None, sigma: float | None = None) -> Path:
    import torch

    from edgeas.config import config_from_dict
    from edgeas.record import ModelRecord
    from edgeas.threshold_fit import _previous
    from edgeas.train.checkpoint import (
        checkpoint_payload,
        load_checkpoint,
        model_from_checkpoint,
        model_recipe,
        save_checkpoint,
    )
    from edgeas.train.data import data_fingerprint, index_dataset, split_train_val
    from edgeas.train.datasets import TrainImages
    from edgeas.train.run import fit_decision_head, fit_thresholds

    out = out or default_output(checkpoint)
    if out.resolve() == checkpoint.resolve():
        raise ConfigError(f"--out {out} is the checkpoint itself",
                          hint="write the model with a head to a new file")
    stored = load_checkpoint(checkpoint)
    old = ModelRecord.from_json(stored["metadata"], str(checkpoint))
    raw = dict(stored["config"])
    raw["decision"] = {**raw.get("decision", {}), "head": "knn",
                       **({} if coreset is None else {"coreset": coreset}),
                       **({} if sigma is None else {"sigma": sigma})}
    cfg = config_from_dict(raw, f"{checkpoint} (stored config, decision head)")
    _, model = model_from_checkpoint(stored, str(checkpoint))
    model.cfg = cfg
    index = index_dataset(data)
    fingerprint = data_fingerprint(index)
    if old.model.data_fingerprint and fingerprint != old.model.data_fingerprint:
        # another data set: its "held-out" split may hold images the decoder saw, or none
        console.print(f"[yellow]warning:[/] {data} is not the data set {checkpoint} was "
                      "trained on (fingerprints differ): the threshold's held-out images "
                      "may not be held out")
    unknown = sorted(set(index.classes) - set(old.model.classes)) if old.model.classes else []
    if unknown:
        raise DataError(f"{data}: class(es) {', '.join(unknown)} are not among the model's "
                        f"({', '.join(old.model.classes)})")
    train, val = split_train_val(index.train, cfg.train.val_fraction, cfg.train.seed)
    recipe = model_recipe(cfg, model)
    device = torch.device("cpu")
    fit_decision_head(cfg, model, TrainImages(train, recipe, None, index.classes,
                                              seed=cfg.train.seed), device)
    threshold = fit_thresholds(cfg, model, TrainImages(val, recipe, None, index.classes,
                                                       seed=cfg.train.seed), device)
    threshold = dataclasses.replace(threshold,
                                    history=(*old.threshold.history, _previous(old.threshold)))
    payload = {**stored, **checkpoint_payload(cfg, model, list(old.model.classes),
                                               old.model.data_fingerprint, threshold),
               "model": model.state_dict()}
    payload.pop("format", None)
    payload.pop("schema", None)
    save_checkpoint(out, payload)
    shown, before = ("unset" if v is None else f"{v:.5g}"
                     for v in (threshold.value, old.threshold.value))
    console.print(f"[green]decision head[/] written to {out}: threshold {shown} on the "
                  f"head's maps ({threshold.policy} {threshold.param:g}, {threshold.images} "
                  f"held-out images; was {before})")
    console.print(f"next: edgeas eval --checkpoint {out} --data {data}")
    return out
