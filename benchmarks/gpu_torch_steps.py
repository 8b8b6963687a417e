"""The PyTorch steps of `make gpu-check` (benchmarks/gpu_check.py runs each in its own
process): training on CUDA with mixed precision, and each preset's latency in FP16 with
CUDA graphs.

    python benchmarks/gpu_torch_steps.py train|latency --result OUT.json [--dry]

`--dry` (CI, CPU): the same code on the tiny preset, two steps, FP32 on the CPU; what
needs the device is reported as skipped. Models are random-init (backbones included):
throughput and latency do not depend on the weights, and the lent machine has no network.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_PRESETS = ("unias-edge", "unias-lite")
# The first step's loss under CUDA autocast (FP16) against the CPU's FP32 on the same
# batch and weights: FP16 rounding of activations moves a mean-of-cosines loss by well
# under 1%; 2% leaves room without hiding a wrong graph (those differ by far more).
AMP_LOSS_RTOL = 2e-2


def _images(count: int, size: int, recipe) -> np.ndarray:
    """`count` normal images of the built-in data set, preprocessed (N, 3, H, W)."""
    import cv2

    from edgeas.preprocess import preprocess_bgr
    from edgeas.train.synth import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(Path(tmp) / "data", per_class=max(2, count // 3 + 1), seed=0, size=size)
        paths = sorted(Path(tmp, "data").glob("*/train/good/*.png"))[:count]
        return np.stack([preprocess_bgr(cv2.imread(str(p)), recipe) for p in paths])


def _model(preset: str, overrides: dict[str, Any] | None = None):
    import torch

    from edgeas.config import load_config
    from edgeas.train.checkpoint import model_recipe
    from edgeas.train.model.unias import build_model

    cfg = load_config(preset, overrides)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, pretrained=False)
    return cfg, model, model_recipe(cfg, model)


def _first_loss(cfg, model, batch, device) -> float:
    """One step's loss (Trainer.accumulate_gradients) with jitter and dropout off, so
    that CPU and CUDA see the same function of the same batch."""
    import torch

    from edgeas.train.trainer import Trainer

    trainer = Trainer(cfg, model, torch.device(device))
    return trainer.accumulate_gradients(torch.from_numpy(batch), batch.shape[0]) / batch.shape[0]


def train(dry: bool, budget_s: float) -> dict[str, Any]:
    import torch

    from edgeas.train.trainer import Trainer

    cuda = torch.cuda.is_available() and not dry
    presets = ("tiny",) if dry else TRAIN_PRESETS
    out: dict[str, Any] = {"checks": [], "figures": {}, "notes": []}
    if not cuda:
        out["notes"].append("CUDA mixed precision skipped: needs the device (dry run: the "
                            "tiny preset, FP32 on the CPU, two steps)")
    calm = {"model": {"jitter_scale": 0.0, "dropout": 0.0}}  # deterministic for the check
    for preset in presets:
        cfg, model, recipe = _model(preset, calm)
        batch = _images(2, cfg.input_size[0], recipe)
        cpu_loss = _first_loss(cfg, copy.deepcopy(model), batch, "cpu")
        fig: dict[str, Any] = {"first_loss_cpu_fp32": cpu_loss}
        if cuda:
            amp_loss = _first_loss(cfg, copy.deepcopy(model), batch, "cuda")
            rel = abs(amp_loss - cpu_loss) / max(abs(cpu_loss), 1e-12)
            fig.update(first_loss_cuda_amp=amp_loss, relative_difference=rel)
            out["checks"].append({
                "name": f"{preset}: first-step loss, CUDA AMP vs CPU FP32",
                "ok": bool(rel <= AMP_LOSS_RTOL),
                "detail": f"{amp_loss:.6g} vs {cpu_loss:.6g}: relative {rel:.2e} "
                          f"(tolerance {AMP_LOSS_RTOL:g})"})
        # throughput: the preset's own batch and widths, images already on the device
        if cuda:  # the preset as trained (jitter, dropout); the dry run reuses the model
            cfg, model, recipe = _model(preset)
        device = torch.device("cuda" if cuda else "cpu")
        size = cfg.train.batch if cuda else 2
        images = _images(min(size, 48), cfg.input_size[0], recipe) if cuda else batch
        pool = torch.from_numpy(images).to(device)
        trainer = Trainer(cfg, model, device)
        gen = torch.Generator().manual_seed(0)
        steps, warm = (300, 10) if cuda else (2, 1)
        done, start, deadline = 0, 0.0, time.perf_counter() + budget_s / len(presets)
        for step in range(steps):
            if step == warm:
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            index = torch.randint(0, pool.shape[0], (size,), generator=gen).to(device)
            trainer.accumulate_gradients(pool[index], size)
            trainer.apply_update()
            done = step + 1
            if time.perf_counter() > deadline and step >= warm + 5:
                break
        if cuda:
            torch.cuda.synchronize()
        timed = done - warm
        seconds = time.perf_counter() - start
        fig.update(batch=size, steps=done, timed_steps=timed,
                   images_per_s=timed * size / seconds if seconds > 0 else None,
                   amp=trainer.use_amp, device=str(device),
                   peak_memory_gib=(torch.cuda.max_memory_allocated() / 2**30) if cuda else None)
        out["figures"][preset] = fig
    return out


def latency(dry: bool, budget_s: float) -> dict[str, Any]:
    """Each preset's exported network (ExportGraph: image -> four level maps) in FP16,
    captured in a CUDA graph, replayed: a PyTorch proxy, not TensorRT."""
    import torch

    from edgeas.config import available_presets
    from edgeas.export.torch_graph import ExportGraph

    cuda = torch.cuda.is_available() and not dry
    presets = ["tiny"] if dry else sorted(available_presets())
    out: dict[str, Any] = {"checks": [], "figures": {}, "notes": [
        "PyTorch FP16 + CUDA graphs, random-init weights: a proxy for the engine's latency, "
        "not TensorRT"]}
    if not cuda:
        out["notes"].append("CUDA graphs skipped: needs the device (dry run: tiny, FP32, CPU)")
    deadline = time.perf_counter() + budget_s
    for preset in presets:
        if time.perf_counter() > deadline:
            out["notes"].append(f"{preset}: not timed, the step's time ran out")
            continue
        cfg, model, _ = _model(preset)
        graph = ExportGraph(model, with_map=False).eval()
        device = torch.device("cuda" if cuda else "cpu")
        dtype = torch.float16 if cuda else torch.float32
        graph = graph.to(device=device, dtype=dtype)
        row = {}
        for batch in ((1, 8) if cuda else (1,)):
            x = torch.randn(batch, 3, *cfg.input_size, device=device, dtype=dtype)
            row[f"batch_{batch}"] = _time(graph, x, cuda)
        out["figures"][preset] = row
        del graph, model
        if cuda:
            torch.cuda.empty_cache()
    return out


def _time(graph, x, cuda: bool) -> dict[str, float]:
    import torch

    with torch.inference_mode():
        if not cuda:
            start = time.perf_counter()
            graph(x)
            ms = (time.perf_counter() - start) * 1e3
            return {"ms": ms, "images_per_s": x.shape[0] / ms * 1e3}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as PyTorch asks
            for _ in range(3):
                graph(x)
        torch.cuda.current_stream().wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            graph(x)
        times = []
        for _ in range(30):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            captured.replay()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        ms = float(np.median(times))
        return {"ms": ms, "p90_ms": float(np.percentile(times, 90)),
                "images_per_s": x.shape[0] / ms * 1e3}


STEPS = {"train": train, "latency": latency}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_steps import step_main

    step_main(STEPS, __doc__.splitlines()[0], 120.0)
