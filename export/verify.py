"""ONNX Runtime as the reference runner: sessions, batched runs, error statistics and the
real images every exported graph is checked on. No torch here."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeas.errors import require
from edgeas.preprocess import Recipe, preprocess_bgr

# ONNX Runtime 1.31's NCHWc layout transformer crashes (SIGSEGV) while optimising
# graphs that hold FP16 tensors; every other optimisation stays on.
_FP16_DISABLED = ["NchwcTransformer"]


def _has_fp16(model_bytes: bytes) -> bool:
    onnx = require("onnx", "onnx", "export")
    model = onnx.load_from_string(model_bytes)
    f16 = onnx.TensorProto.FLOAT16
    return any(t.data_type == f16 for t in model.graph.initializer)


def ort_session(model_bytes: bytes):
    """A CPU InferenceSession on serialized model bytes, quiet unless something fails."""
    ort = require("onnxruntime", "onnxruntime", "export")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    disabled = _FP16_DISABLED if _has_fp16(model_bytes) else None
    return ort.InferenceSession(
        model_bytes, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )


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
    a = got.reshape(len(got), -1).astype(np.float64)
    b = want.reshape(len(want), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, np.sum(a * b, axis=1) / np.maximum(norms, 1e-300), 1.0)


def accuracy(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per output: worst per-image cosine (maps only: a per-image scalar has none), max
    abs and relative error, finiteness."""
    out = {}
    for name, ref in want.items():
        g = got[name]
        is_map = ref[0].size > 1
        out[name] = {
            "cosine_min": float(np.min(cosine_per_image(g, ref))) if is_map else None,
            "max_abs": float(np.max(np.abs(g.astype(np.float64) - ref))),
            "relative": relative_error(g, ref),
            "finite": bool(np.isfinite(g).all()),
        }
    return out


def sample_images(meta: dict[str, Any], count: int = 4, seed: int = 0) -> np.ndarray:
    """`count` real images (photographs from scikit-image, normal and with a drawn defect,
    from the built-in inspection set), preprocessed with the artifact's own recipe."""
    from edgeas.train.synth import CLASSES, DEFECT_KINDS, make_defective, make_normal

    recipe = Recipe.from_metadata(meta)
    size = max(recipe.input_size)
    rng = np.random.default_rng(seed)
    classes = sorted(CLASSES)
    frames = []
    for i in range(count):
        cls = classes[(i // 2 * 3) % len(classes)]
        if i % 2 == 0:
            frames.append(make_normal(cls, size, rng))
        else:
            frames.append(make_defective(cls, DEFECT_KINDS[i % len(DEFECT_KINDS)], size, rng)[1])
    return np.stack([preprocess_bgr(f, recipe) for f in frames])
