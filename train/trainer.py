"""The training loop: gradient accumulation, DDP, exact resume, clean stops.

Determinism: the data order of epoch e is a permutation seeded by (seed, e), and
augmentations are seeded per (seed, epoch, image), so a resumed run replays the
same batches; the global torch RNG (jitter, dropout) is saved in every checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeas.config import EdgeasConfig
from edgeas.errors import EdgeasError
from edgeas.train.distributed import DistInfo, all_reduce_sum, any_flag, shard


class TrainingError(EdgeasError):
    """Training cannot go on (a NaN loss, a stop that could not be saved)."""


def make_optimizer(cfg: EdgeasConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":  # plain SGD exists for the DDP equivalence test
        return torch.optim.SGD(params, lr=t.lr)
    return torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def global_batches(n: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    order = epoch_order(n, seed, epoch)
    return [order[i : i + batch] for i in range(0, n, batch)]


@dataclass
class Position:
    epoch: int = 0  # epochs fully done
    batch_in_epoch: int = 0  # global batches done within the current epoch
    step: int = 0  # optimizer steps done overall


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM; the loop saves at the next step boundary and returns."""

    requested: bool = False
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(
        self,
        cfg: EdgeasConfig,
        model: nn.Module,
        device: torch.device,
        info: DistInfo = DistInfo(),
    ) -> None:
        self.cfg = cfg
        self.model = model.to(device)
        self.device = device
        self.info = info
        self.decoder: nn.Module = model.decoder
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.decoder = DistributedDataParallel(model.decoder, device_ids=ids)
        params = [p for p in model.decoder.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = make_optimizer(cfg, params)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=cfg.train.lr_step_epochs, gamma=cfg.train.lr_gamma
        )
        self.use_amp = device.type == "cuda" and cfg.train.amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.position = Position()
        self.micro = (
            cfg.train.micro_batch if device.type == "cuda" else min(cfg.train.micro_batch, 16)
        )

    # -- one optimizer step -------------------------------------------------------------
    def accumulate_gradients(self, images: torch.Tensor, global_batch: int) -> float:
        """Forward/backward this rank's images in micro-batches; returns sum of loss x count.

        Each micro-batch loss is a mean, so weighting it by count / global batch makes
        the accumulated gradient that of the global-batch mean; DDP then averages over
        ranks, hence the extra factor `world`.
        """
        self.model.decoder.train()
        self.optimizer.zero_grad(set_to_none=True)
        chunks = images.split(self.micro)
        total = 0.0
        for i, chunk in enumerate(chunks):
            chunk = chunk.to(self.device, non_blocking=True)
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext()
            if self.info.enabled and not last:
                sync = self.decoder.no_sync()
            with sync, torch.autocast(self.device.type, enabled=self.use_amp):
                with torch.no_grad():
                    feats = self.model.backbone(chunk)
                out = self.decoder(feats)
                loss = self.model.loss(out)
                weight = chunk.shape[0] / global_batch * self.info.world
                self.scaler.scale(loss.float() * weight).backward()
            total += float(loss.detach()) * chunk.shape[0]
        return total

    def apply_update(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.cfg.train.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.params, self.cfg.train.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.position.step += 1

    # -- state --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "position": vars(self.position).copy(),
        }

    def load_state(self, data: dict[str, Any]) -> None:
        # a finished run's decision head is not part of training: it is fitted again at
        # the end of the resumed run, on the decoder's final state
        state = {k: v for k, v in data["model"].items() if not k.startswith("knn.")}
        self.model.load_state_dict(state)
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        if data.get("scaler"):
            self.scaler.load_state_dict(data["scaler"])
        torch.set_rng_state(data["rng"]["cpu"])
        if "cuda" in data["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(data["rng"]["cuda"])
        self.position = Position(**data["position"])

    # -- the loop -----------------------------------------------------------------------
    def run(
        self,
        dataset: Any,
        epochs: int,
        save: Callable[[str], None],
        log: Callable[[dict[str, Any]], None],
        max_steps: int | None = None,
        progress: Any = None,
        stop: StopRequest | None = None,
    ) -> str:
        """Train until `epochs` are done; returns why it ended: done | stopped | max_steps.

        `save(kind)` is called with "last" (newest state) or "epoch" (periodic keep).
        """
        from torch.utils.data import DataLoader

        t = self.cfg.train
        stop = stop or StopRequest()
        n = len(dataset)
        while self.position.epoch < epochs:
            epoch = self.position.epoch
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            batches = global_batches(n, t.batch, t.seed, epoch)
            # Every rank must take part in each step: drop a last batch smaller than the world.
            batches = [b for b in batches if len(b) >= self.info.world]
            todo = batches[self.position.batch_in_epoch :]
            local = [shard(b, self.info) for b in todo]
            # A private generator: the loader must not draw from the global RNG, whose state
            # (jitter, dropout) is part of the checkpoint and must replay exactly on resume.
            loader = DataLoader(
                dataset,
                batch_sampler=local,
                num_workers=t.workers,
                generator=torch.Generator().manual_seed(t.seed + epoch),
            )
            started, seen, loss_sum = time.perf_counter(), 0, 0.0
            for global_batch, (images, _) in zip(todo, loader):
                local_sum = self.accumulate_gradients(images, len(global_batch))
                batch_loss = all_reduce_sum(local_sum, self.info, self.device) / len(global_batch)
                if not math.isfinite(batch_loss):
                    raise TrainingError(
                        f"loss became {batch_loss} at epoch {epoch + 1}, step "
                        f"{self.position.step + 1}; no checkpoint was written for this step",
                        hint="lower train.lr, or check the data for broken images",
                    )
                self.apply_update()
                self.position.batch_in_epoch += 1
                seen += len(global_batch)
                loss_sum += batch_loss * len(global_batch)
                if progress is not None:
                    progress(epoch, seen, n, batch_loss, seen / (time.perf_counter() - started))
                if any_flag(stop.requested, self.info, self.device):
                    save("last")
                    return "stopped"
                if max_steps is not None and self.position.step >= max_steps:
                    save("last")
                    return "max_steps"
            self.scheduler.step()
            self.position.epoch += 1
            self.position.batch_in_epoch = 0
            seconds = time.perf_counter() - started
            log(
                {
                    "epoch": epoch + 1,
                    "step": self.position.step,
                    "loss": loss_sum / max(seen, 1),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "images_per_s": seen / max(seconds, 1e-9),
                    "seconds": seconds,
                }
            )
            save("last")
            if t.save_every and self.position.epoch % t.save_every == 0:
                save("epoch")
        return "done"
