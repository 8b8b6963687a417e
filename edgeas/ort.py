"""ONNX Runtime, opened one way by every stage: the session factory, batched runs and the
agreement measures that export's parity check and calibration's gate report.

`onnxruntime` is imported inside `open_session`, so that importing this module needs
numpy only (the runtime imports on a station image without ONNX Runtime). The FP16
guard lives here, not in export, so that the runtime streaming a `model.fp16.onnx` on
the CPU gets it too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeas.errors import require
from edgeas.onnxio import has_fp16_initializers

CPU = ("CPUExecutionProvider",)
# ONNX Runtime 1.31's NCHWc layout transformer crashes (SIGSEGV) while optimising
# graphs that hold FP16 tensors; every other optimisation stays on, and FP32 graphs keep
# it (it is what makes convolutions fast on x86 CPUs).
FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)
# On the CPU, ONNX Runtime's fusion of a residual Add and the LayerNormalization after it
# (SkipLayerNormalization) is slower than the two ops it replaces: 200-360 against 50-78
# us on a (196, 1, 256) tensor, at 1 or 2 threads (ONNX Runtime 1.32, 2-core Xeon;
# benchmarks/results/ort_fusions.md). unias-edge has 26 of them: 3.3 ms a frame in FP32
# and in INT8. No other fusion's removal gained. GPU providers keep it.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
# The session config key that lists disabled optimizers: the choice is written there
# too, so that `session.get_session_options()` shows it.
DISABLED_OPTIMIZERS_KEY = "optimization.disable_specified_optimizers"
QUIET = 3  # ONNX Runtime log severity: errors only (its default, 2, prints warnings)


def disabled_optimizers(model: bytes | str | os.PathLike,
                        providers: Sequence[str] = CPU) -> tuple[str, ...]:
    """The optimizers a session on `model` with `providers` runs without: the FP16 guard,
    and the fusions that are slower on the CPU when the CPU is the only provider."""
    names = FP16_DISABLED_OPTIMIZERS if has_fp16_initializers(model) else ()
    if all(p == CPU[0] for p in providers):
        names += CPU_DISABLED_OPTIMIZERS
    return names


def open_session(
    model: bytes | str | os.PathLike,
    providers: Sequence[str] = CPU,
    *,
    threads: int | None = None,
    inter_threads: int | None = None,
    quiet: bool = True,
    extra: str = "runtime",
    profile_prefix: str | None = None,
    disabled: Sequence[str] | None = None,
):
    """An `onnxruntime.InferenceSession` on serialized model bytes or a model file.

    `threads`/`inter_threads` set the intra/inter-op thread counts (ONNX Runtime's own
    choice when None); `quiet` keeps ONNX Runtime's warnings out of the log; `extra`
    names the edgeas extra whose install a missing onnxruntime asks for;
    `profile_prefix` turns on ONNX Runtime's profiler, its trace file named from it;
    `disabled`, the optimizers to switch off instead of edgeas's choice
    (`disabled_optimizers`; benchmarks/ort_fusions.py compares the two).
    """
    ort = require("onnxruntime", "onnxruntime", extra)
    options = ort.SessionOptions()
    if quiet:
        options.log_severity_level = QUIET
    if threads:
        options.intra_op_num_threads = int(threads)
    if inter_threads:
        options.inter_op_num_threads = int(inter_threads)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if disabled is None:
        disabled = disabled_optimizers(model, providers)
    if disabled:
        options.add_session_config_entry(DISABLED_OPTIMIZERS_KEY, ",".join(disabled))
    source = model if isinstance(model, bytes) else str(Path(model))
    # The keyword is the documented way to disable an optimizer; the config entry above
    # only records it where it can be read back.
    return ort.InferenceSession(source, options, providers=list(providers),
                                disabled_optimizers=list(disabled) or None)


def run(session, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run every image; a graph with a static batch N is fed chunks of N (the last one
    padded by repeating its final image, the padding dropped from the results)."""
    inp = session.get_inputs()[0]
    static = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = static or len(images)
    names = [o.name for o in session.get_outputs()]
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for s in range(0, len(images), step):
        part = images[s : s + step]
        real = len(part)
        if static and real < static:
            part = np.concatenate([part, np.repeat(part[-1:], static - real, axis=0)])
        for name, value in zip(names, session.run(names, {inp.name: part})):
            chunks[name].append(value[:real])
    return {n: np.concatenate(v) for n, v in chunks.items()}


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (protocol's relative error)."""
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    scale = float(np.max(np.abs(want)))
    return err / scale if scale > 0 else err


def cosine_per_image(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Cosine similarity of each image's values; 1.0 where both are all zero (or one is),
    NaN where either holds NaN or inf (a min over images is then NaN, never a pass)."""
    a = got.reshape(len(got), -1).astype(np.float64)
    b = want.reshape(len(want), -1).astype(np.float64)
    finite = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    a, b = np.where(finite[:, None], a, 0.0), np.where(finite[:, None], b, 0.0)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, np.sum(a * b, axis=1) / np.maximum(norms, 1e-300), 1.0)
    return np.where(finite, cos, np.nan)


def accuracy(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per output: worst per-image cosine (maps only: a per-image scalar has none; None
    too when a map holds NaN or inf, where `cosine_per_image` says NaN), max abs
    and relative error, finiteness and the number of images with non-finite values."""
    out = {}
    for name, ref in want.items():
        g = got[name]
        is_map = ref[0].size > 1
        bad = int(np.sum(~np.isfinite(g.reshape(len(g), -1)).all(axis=1)))
        out[name] = {
            "cosine_min": (float(np.min(cosine_per_image(g, ref)))
                           if is_map and not bad else None),
            "max_abs": float(np.max(np.abs(g.astype(np.float64) - ref))),
            "relative": relative_error(g, ref),
            "finite": not bad,
            "nonfinite_images": bad,
        }
    return out
