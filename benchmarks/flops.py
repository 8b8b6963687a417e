"""Forward FLOPs of edgeas models: FlopCounterMode plus the CPU attention formula it
lacks, the ops it leaves uncounted (with their output sizes), and per-op and per-module
breakdowns. FLOPs = 2 x MACs. Shared by model_bench.py, lite_choice.py and accuracy.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

from edgeas.train.backbones import get_spec

aten = torch.ops.aten

# Upper end of the arithmetic per output element of the ops the counter skips (an add
# is 1, eval BatchNorm 2, GroupNorm / LayerNorm / bilinear resize / GELU up to ~10):
# used only to bound what the FLOP counts leave out.
UNCOUNTED_FLOPS_PER_ELEMENT = 10


def _sdpa_cpu_flops(
    query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *_: Any, **__: Any
) -> int:
    # Same formula as the CUDA SDPA kernels get in flop_counter's own registry.
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Formulas the stock FlopCounterMode lacks for ops this model runs on CPU.
EXTRA_FORMULAS: dict[Any, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
}
COUNTED_OPS = {*flop_registry, *EXTRA_FORMULAS}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without requires_grad while counting.

    FlopCounterMode's module tracker registers gradient hooks on module inputs that
    require grad, which fails under no_grad (e.g. on an expanded embedding weight).
    Nothing here needs gradients, so they are switched off and restored after.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _is_view(func: torch._ops.OpOverload) -> bool:
    # A view aliases its input without writing it: no arithmetic, nothing to report.
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


class UncountedOps(TorchDispatchMode):
    """Ops that run with no FLOP formula (FlopCounterMode adds 0 for them), with output sizes.

    Mirrors FlopCounterMode's dispatch: try to decompose an op first (a composite op such
    as `linear` becomes `addmm`), and only what does not decompose runs as itself.
    """

    def __init__(self, counted: set[Any]) -> None:
        super().__init__()
        self.counted = counted
        self.elements: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        with self:
            decomposed = func.decompose(*args, **kwargs)
        if decomposed is not NotImplemented:
            return decomposed
        out = func(*args, **kwargs)
        if func._overloadpacket not in self.counted and not _is_view(func):
            name = str(func._overloadpacket)
            self.calls[name] += 1
            outs = out if isinstance(out, (tuple, list)) else [out]
            self.elements[name] += sum(t.numel() for t in outs if isinstance(t, Tensor))
        return out


def flop_count(
    fn: Callable[[], Any], extra: dict[Any, Callable[..., int]] | None = None
) -> FlopCounterMode:
    with torch.no_grad(), FlopCounterMode(display=False, depth=None, custom_mapping=extra) as fc:
        fn()
    return fc


def uncounted(fn: Callable[[], Any]) -> dict[str, Any]:
    with torch.no_grad(), UncountedOps(COUNTED_OPS) as mode:
        fn()
    ops = {
        name: {"calls": mode.calls[name], "output_m_elements": round(n / 1e6, 3)}
        for name, n in mode.elements.most_common()
    }
    return {"ops": ops, "output_m_elements": round(sum(mode.elements.values()) / 1e6, 2)}


def by_op(fc: FlopCounterMode) -> dict[str, float]:
    return {str(op): gflops(n) for op, n in fc.get_flop_counts().get("Global", {}).items()}


def by_module(fc: FlopCounterMode, root: str, max_depth: int = 3) -> dict[str, float]:
    """GFLOPs per submodule (names relative to `root`) down to `max_depth` dots."""
    out = {}
    for name, ops in fc.get_flop_counts().items():
        if name.startswith(root + "."):
            rel = name[len(root) + 1 :]
            if rel.count(".") < max_depth:
                out[rel] = gflops(sum(ops.values()))
    return dict(sorted(out.items()))


def params_by_module(module: nn.Module, depth: int = 2) -> dict[str, float]:
    """Parameters (millions) of submodules `depth` levels down (e.g. predictor.out_agg)."""
    out = {}
    for name, sub in module.named_modules():
        if name and name.count(".") == depth - 1:
            out[name] = round(count_params(sub) / 1e6, 3)
    return out


def gflops(n: float) -> float:
    return round(n / 1e9, 3)


def full_network_gflops(backbone_name: str, size: int) -> float:
    """FLOPs of the whole ImageNet classifier (every stage, head conv, fc), for the spec check.

    edgeas stops the backbone at the stride-16 tap; the reference code runs the whole
    network, so the spec's backbone figure is this one.
    """
    import timm

    net = timm.create_model(get_spec(backbone_name).timm_name, pretrained=False).eval()
    x = torch.zeros(1, 3, size, size)
    with frozen(net):
        return gflops(flop_count(lambda: net(x)).get_total_flops())
