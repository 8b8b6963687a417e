"""`edgeas calibrate --method auto / --sensitivity / --mixed-precision / --keep-float`: the
choice of calibration method per format, the per-block sensitivity analysis and the
mixed-precision plan of each INT8 format, with progress bars and the printed summary; the
numbers come from `sensitivity` and `scoring`.

Targets of the plan, per format (issue 21): the Q/DQ model (TensorRT) must keep the maps,
worst held-out anomaly-map cosine >= --min-cosine, and with --eval-data also lose at most
--max-pap-drop pAP points; the QOperator model (ONNX Runtime CPU) is held to the gate's
own rule: pAP with --eval-data, the cosine without.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgeas.calibration import evalset as ev
from edgeas.calibration import quantize as qz
from edgeas.calibration import sensitivity as sv
from edgeas.calibration.ranges import Ranges
from edgeas.calibration.scoring import Reference, Score, Targets
from edgeas.record import ModelRecord

# The ranking runs every block once: on a spread subset of the images, which orders the
# blocks as the full sets do at a fraction of the time (the plan's steps use every image).
RANK_HELD = 16
RANK_EVAL = 32
COSINE_ALWAYS = {"qdq": True, "qoperator": False}


@dataclass
class MixedOptions:
    sensitivity: bool = False  # rank every block of both formats, report it
    mixed_precision: bool = False  # keep the most sensitive blocks float until targets met
    keep_float: tuple[str, ...] = ()  # node-name prefixes kept float in both formats
    max_float_blocks: int = sv.MAX_FLOAT_BLOCKS
    min_cosine: float = 0.95
    max_pap_drop: float = 1.0
    rank_held: int = RANK_HELD
    rank_eval: int = RANK_EVAL


def targets_of(fmt: str, opts: MixedOptions) -> Targets:
    return Targets(opts.min_cosine, opts.max_pap_drop, COSINE_ALWAYS[fmt])


def build_reference(record: ModelRecord, fp32, held: np.ndarray, eval_data, console: Console
                    ) -> Reference:
    """FP32's maps on the held-out images and on every image of --eval-data (if given)."""
    images = masks = None
    classes: list[str] = []
    total = len(held)
    test = ev.index_eval_set(eval_data, record.model.classes) if eval_data else None
    if test is not None:
        images, masks = ev.load(test, range(len(test)), record.preprocessing)
        classes = list(test.classes)
        total += len(test)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("FP32 reference maps", total=total)
        ref = Reference(record, fp32, held, images, masks, classes,
                        lambda n: bar.advance(task, n))
    ref.advance = None
    return ref


def choose_methods(model, by_method: dict[str, Ranges], ref: Reference, opts: MixedOptions,
                   session_factory, console: Console
                   ) -> tuple[dict[str, Ranges], dict[str, tuple[Any, Score]], dict]:
    """--method auto: per format, the method whose all-INT8 model (but --keep-float) has
    the least damage against its targets (ties: the first of `by_method`). Returns
    ({format: its ranges}, {format: (that model, its score)}, the report)."""
    keep = sv.nodes_under(model, opts.keep_float) if opts.keep_float else []
    chosen: dict[str, Ranges] = {}
    first: dict[str, tuple[Any, Score]] = {}
    report: dict[str, Any] = {}
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("--method auto: scoring each method", total=len(by_method) * 2)
        for fmt in qz.FORMATS:
            targets = targets_of(fmt, opts)
            best = None
            report[fmt] = {}
            for method, ranges in by_method.items():
                candidate = qz.quantize(model, ranges, fmt, exclude=keep)
                score = ref.score(session_factory(candidate.SerializeToString()), targets)
                damage = score.damage(targets)
                report[fmt][method] = {"damage": None if math.isinf(damage) else damage,
                                       **score.to_json()}
                if best is None or damage < best[0]:
                    best = (damage, method, candidate, score)
                bar.advance(task, 1)
            assert best is not None
            _, method, candidate, score = best
            chosen[fmt], first[fmt] = by_method[method], (candidate, score)
            report[fmt]["chosen"] = method
            cos = score.cosine_min["anomaly_map"]
            pap = "" if score.pap_drop is None else f", pAP {-score.pap_drop:+.2f}"
            console.print(f"--method auto: {fmt} takes {method} (worst map cosine "
                          f"{'NaN/inf' if cos is None else f'{cos:.4f}'}{pap})")
    return chosen, first, report


def run(model, ranges: dict[str, Ranges], ref: Reference, opts: MixedOptions, session_factory,
        console: Console, first: dict[str, tuple[Any, Score]] | None = None
        ) -> tuple[dict[str, sv.Plan], dict]:
    """({format: the plan whose model to write}, the .sensitivity.json report); `ranges`
    per format, `first` the all-INT8 candidates per format when already scored."""
    blocks = sv.quantizable_blocks(model)
    keep = sv.nodes_under(model, opts.keep_float) if opts.keep_float else []
    small = ref.subset(opts.rank_held, opts.rank_eval)
    report: dict[str, Any] = {
        "blocks": {b: len(n) for b, n in blocks.items()}, "keep_float": list(opts.keep_float),
        "ranking_images": {"held_out": len(small.held),
                           "eval": 0 if small.eval_images is None else len(small.eval_images)},
        "plan_images": {"held_out": len(ref.held),
                        "eval": 0 if ref.eval_images is None else len(ref.eval_images)},
        "fp32_metrics": ref.fp32_metrics, "formats": {}}
    models = {}
    for fmt in qz.FORMATS:
        targets = targets_of(fmt, opts)
        if first and fmt in first:
            full, score = first[fmt]
        else:
            console.print(f"scoring the all-INT8 {fmt} model ...")
            full = qz.quantize(model, ranges[fmt], fmt, exclude=keep)
            score = ref.score(session_factory(full.SerializeToString()), targets)
        entry: dict[str, Any] = {"targets": targets.to_json(), "method": ranges[fmt].method,
                                 "all_int8": score.to_json()}
        ranking: list[sv.BlockResult] = []
        needed = opts.mixed_precision and not score.passed and opts.max_float_blocks > 0
        if opts.sensitivity or needed:
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task(f"sensitivity ({fmt}): one block INT8 at a time",
                                    total=len(blocks))
                ranking = sv.analyse(model, ranges[fmt], fmt, blocks, small, targets,
                                     lambda n, t=task: bar.advance(t, n), session_factory)
            entry["ranking"] = [r.to_json() for r in ranking]
            _print_ranking(fmt, ranking, console)
        if opts.mixed_precision and not score.passed:
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task(f"mixed precision ({fmt}): blocks kept float",
                                    total=opts.max_float_blocks + 1)
                chosen = sv.plan(model, ranges[fmt], fmt, ranking, blocks, ref, targets, keep,
                                 opts.max_float_blocks, (full, score),
                                 lambda n, t=task: bar.advance(t, n), session_factory)
            entry["plan"] = chosen.to_json()
            models[fmt] = chosen
            _print_plan(chosen, console)
        else:
            models[fmt] = sv.Plan(fmt, [], keep, full, score)
            verdict = "meets" if score.passed else "misses"
            console.print(f"{fmt}: all INT8{' but --keep-float' if keep else ''} {verdict} "
                          f"its targets{'' if score.passed else ': ' + '; '.join(score.problems)}")
        report["formats"][fmt] = entry
    return models, report


def _print_ranking(fmt: str, ranking: list[sv.BlockResult], console: Console) -> None:
    table = Table(title=f"{fmt}: the blocks INT8 hurts most (each alone INT8, the rest FP32)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("block", "nodes", "worst map cosine", "pAP change", "damage"):
        table.add_column(col, justify="left" if col == "block" else "right", no_wrap=True)
    for row in sv.summary_rows(ranking):
        table.add_row(*row)
    Console(stderr=True, width=max(console.width, 110)).print(table)


def _print_plan(chosen: sv.Plan, console: Console) -> None:
    s = chosen.score
    cos = s.cosine_min["anomaly_map"]
    pap = "" if s.pap_drop is None else f", pAP {-s.pap_drop:+.2f}"
    names = ", ".join(chosen.float_blocks) or "none"
    head = "[green]meets its targets[/]" if s.passed else "[yellow]misses its targets[/]"
    console.print(f"{chosen.fmt}: {len(chosen.float_blocks)} block(s) kept float ({names}; "
                  f"{len(chosen.float_nodes)} nodes): worst map cosine "
                  f"{'NaN/inf' if cos is None else f'{cos:.4f}'}{pap}: {head}")
