"""Activation ranges of every float tensor of an FP32 ONNX, from calibration images.

One pass over the images feeds a histogram of |x| per tensor; the three methods read the
clipping value amax from it: `minmax` (the largest |x|), `percentile` (99.999th
percentile of |x|, ONNX Runtime's default) and `entropy` (TensorRT's KL-divergence
search). ONNX Runtime's own calibrators are not used for the collection: its histogram
calibrators keep every intermediate output of every image in memory before binning
(about 140 MB per image for the tiny preset, so tens of GB for 256 images), and its
entropy search is either degenerate (128 bins: one candidate, the min-max range) or, with
2048 bins, a Python loop that had not finished the tiny preset's 1006 tensors after
several minutes. The ranges go to ONNX Runtime's quantizer as its calibration cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeas.errors import CalibrationError, require

METHODS = ("entropy", "percentile", "minmax")
BINS = 2048  # histogram of |x|, as TensorRT's entropy calibrator
QUANT_BINS = 128  # int8 levels on one side of zero
PERCENTILE = 99.999
# The entropy search tries every _COARSE-th clip, then every clip within _COARSE bins of
# the best one: about 8x cheaper than trying all ~1900, at the risk of missing a
# narrower minimum between coarse candidates.
_COARSE = 8
_FLOAT_TYPES = (1, 10)  # onnx.TensorProto.FLOAT, FLOAT16
PASSTHROUGH = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand",
               "Tile")
# Values of one tensor and image that feed its histogram. Above this a regular subsample
# (min and max stay exact): with >= 28 images that is >= 7 M values per tensor, ample for
# 2048 bins and a 1e-5 tail, and it makes the pass several times faster.
SAMPLE = 1 << 18


def _passthrough(model, consts: set[str]) -> dict[str, str]:
    """Outputs of ops that only move or repeat values -> their data input: such a tensor
    has exactly its input's range, so it is not collected but copied."""
    return {n.output[0]: n.input[0] for n in model.graph.node
            if n.op_type in PASSTHROUGH and n.input and n.input[0] not in consts}


def augment(model) -> tuple[object, list[str], dict[str, str]]:
    """A copy of `model` whose outputs also include every float activation tensor
    (graph input and node outputs, not initializers or constants) except those of
    value-preserving ops; the names collected; and {passthrough tensor: its source}."""
    onnx = require("onnx", "onnx", "export")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    consts = {i.name for i in model.graph.initializer}
    # Constant nodes hold weights-like values that need no activation range.
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    copied = _passthrough(model, consts)
    names = [i.name for i in model.graph.input if i.name not in consts]
    names += [o for n in model.graph.node for o in n.output if o and o not in consts]
    names = [n for n in dict.fromkeys(names) if types.get(n) in _FLOAT_TYPES]
    collected = [n for n in names if n not in copied]
    copied = {k: v for k, v in copied.items() if k in names}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in collected:
        if name not in have:
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    return out, collected, copied


class Histograms:
    """Per tensor: min, max and a BINS-bin histogram of |x| over [0, cap], the cap set by
    the first image. When a value exceeds the cap, the cap doubles and bins merge in
    pairs: no count moves to a wrong bin (unlike re-binning at arbitrary edges), and the
    values up to the final max|x| still span at least BINS / 2 bins."""

    def __init__(self) -> None:
        self.hist: dict[str, np.ndarray] = {}
        self.cap: dict[str, float] = {}
        self.low: dict[str, float] = {}
        self.high: dict[str, float] = {}
        self.count = 0  # images seen

    def update(self, name: str, value: np.ndarray) -> None:
        flat = np.asarray(value, np.float32).ravel()
        if flat.size == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())  # NaN and inf propagate to these
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CalibrationError(
                f"tensor {name} is NaN or infinite on a calibration image",
                hint="check the FP32 model: run `edgeas export` again and look at its parity",
            )
        amax = max(-lo, hi)
        if name not in self.hist:
            self.hist[name] = np.zeros(BINS, np.int64)
            self.cap[name] = amax if amax > 0 else 1e-30
            self.low[name], self.high[name] = lo, hi
        self.low[name], self.high[name] = min(self.low[name], lo), max(self.high[name], hi)
        while amax > self.cap[name]:
            h = self.hist[name]
            self.hist[name] = np.concatenate([h[0::2] + h[1::2], np.zeros(BINS // 2, np.int64)])
            self.cap[name] *= 2.0
        if flat.size > SAMPLE:
            stride = -(-flat.size // SAMPLE)
            # the phase moves with each image, so together they cover every position
            flat = flat[self.count % stride :: stride]
        scaled = np.abs(flat)
        scaled *= np.float32(BINS / self.cap[name])
        counts = np.bincount(scaled.astype(np.int64), minlength=BINS + 1)
        counts[BINS - 1] += counts[BINS:].sum()  # |x| == cap lands one past the end
        self.hist[name] += counts[:BINS]

    def amax(self, name: str, method: str) -> float:
        hist, width = self.hist[name], self.cap[name] / BINS
        peak = max(abs(self.low[name]), abs(self.high[name]))
        if peak == 0.0:
            return 0.0
        if method == "minmax":
            return peak
        if method == "percentile":
            cdf = np.cumsum(hist) / hist.sum()
            edge = int(np.searchsorted(cdf, PERCENTILE / 100.0)) + 1
            return min(edge * width, peak)
        if method == "entropy":
            return min(entropy_bins(hist) * width, peak)
        raise CalibrationError(f"unknown calibration method {method!r}")


def kl_divergences(hist: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """KL(P || Q) of clipping at each candidate bin count i (TensorRT's entropy
    calibration): P is hist[:i] with the outliers added to its last bin, Q the same bins
    quantised to QUANT_BINS levels and expanded back, each level's count spread evenly
    over its non-empty bins.

    Evaluated from prefix sums per quantisation level rather than per bin (O(128) per
    candidate instead of O(i)), which makes the search over all tensors take seconds:
    with H = total count, B = sum of the bins before the last, S_g / C_g the count /
    non-empty bins of level g, S'_g = S_g without the last bin,
    KL = (sum h log h - B log H - sum_g S'_g log(S_g / C_g) + B log sum(S)) / H + last bin.
    """
    cands = np.asarray(cands, np.int64)
    h = hist.astype(np.float64)
    total = float(h.sum())
    zero = np.zeros(1)
    cum = np.concatenate([zero, np.cumsum(h)])
    cum_nz = np.concatenate([zero, np.cumsum(h > 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        cum_hlogh = np.concatenate([zero, np.cumsum(np.where(h > 0, h * np.log(h), 0.0))])
        levels = np.arange(QUANT_BINS + 1)
        edge = (levels[None, :] * cands[:, None] + QUANT_BINS - 1) // QUANT_BINS  # ceil
        sums = np.diff(cum[edge], axis=1)
        nonempty = np.diff(cum_nz[edge], axis=1)
        last = cands - 1
        h_last = h[last]
        kept = cum[cands]  # sum of Q's counts: every bin up to the clip
        before = cum[last]
        s_prime = sums.copy()
        s_prime[:, -1] -= h_last  # the last bin is scored separately (it gains the outliers)
        log_level = np.where(sums > 0, np.log(sums / np.maximum(nonempty, 1)), 0.0)
        body = (cum_hlogh[last] - before * np.log(total) - np.sum(s_prime * log_level, axis=1)
                + before * np.log(kept)) / total
        p_last = h_last + (total - kept)
        q_last = np.where(h_last > 0, sums[:, -1] / np.maximum(nonempty[:, -1], 1), 0.0)
        tail = np.where(p_last > 0, p_last / total * np.log(p_last / total * kept / q_last), 0.0)
    kl = body + tail
    kl[(p_last > 0) & (q_last == 0)] = np.inf  # clipped mass where Q has none
    return kl


def entropy_bins(hist: np.ndarray) -> int:
    """Number of bins (from the left) whose clip minimises the KL divergence."""
    hist = hist.copy()
    # The first bin of a post-ReLU tensor holds most of its values; left as is, it decides
    # the search alone (what NVIDIA's pytorch-quantization does too).
    if hist.size > 1:
        hist[0] = hist[1]
    last = int(np.flatnonzero(hist)[-1]) + 1 if hist.any() else 1
    if last <= QUANT_BINS:
        return last  # fewer bins than int8 levels: nothing to clip
    hist = hist[:last]

    def best(cands: np.ndarray) -> int:
        kl = kl_divergences(hist, cands)
        if not np.isfinite(kl).any():
            return last
        # ties go to the widest clip: clipping less is the safer error
        return int(cands[len(cands) - 1 - int(np.argmin(kl[::-1]))])

    coarse = best(np.arange(QUANT_BINS, last + 1, _COARSE))
    return best(np.arange(max(QUANT_BINS, coarse - _COARSE), min(last, coarse + _COARSE) + 1))


@dataclass
class Ranges:
    """amax per tensor, plus the observed min/max (for asymmetric uint8 activations)."""

    method: str
    amax: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    images: int


def _histograms(model, batches: Iterable[np.ndarray], session_factory: Callable[[bytes], object],
                advance: Callable[[int], None] | None) -> tuple[Histograms, dict[str, str]]:
    augmented, names, copied = augment(model)
    session = session_factory(augmented.SerializeToString())
    input_name = session.get_inputs()[0].name
    hists = Histograms()
    for batch in batches:
        values = session.run(names, {input_name: batch})
        for name, value in zip(names, values):
            hists.update(name, value)
        hists.count += len(batch)
        if advance is not None:
            advance(len(batch))
    if not hists.count:
        raise CalibrationError("no calibration images were run")
    return hists, copied


def _ranges(hists: Histograms, copied: dict[str, str], method: str) -> Ranges:
    amax = {n: hists.amax(n, method) for n in hists.hist}
    low, high = dict(hists.low), dict(hists.high)
    for name, source in copied.items():  # in graph order, so chains resolve front to back
        if source in amax:
            amax[name], low[name], high[name] = amax[source], low[source], high[source]
    return Ranges(method, amax, low, high, hists.count)


def collect(
    model,
    batches: Iterable[np.ndarray],
    method: str,
    session_factory: Callable[[bytes], object],
    advance: Callable[[int], None] | None = None,
) -> Ranges:
    """Run the augmented `model` over `batches` (each (B, 3, H, W) float32) and compute
    the ranges of every float tensor with `method`."""
    return collect_methods(model, batches, (method,), session_factory, advance)[method]


def collect_methods(
    model,
    batches: Iterable[np.ndarray],
    methods: Sequence[str],
    session_factory: Callable[[bytes], object],
    advance: Callable[[int], None] | None = None,
) -> dict[str, Ranges]:
    """The ranges of every method in `methods` from one pass over the images (the
    histograms are the same; only the clip read from them differs)."""
    for method in methods:
        if method not in METHODS:
            raise CalibrationError(f"unknown calibration method {method!r}",
                                   hint=f"choose one of {', '.join(METHODS)}")
    hists, copied = _histograms(model, batches, session_factory, advance)
    return {method: _ranges(hists, copied, method) for method in methods}
