"""`edgeas eval`'s comparison of aggregation settings and modes (aggregation.json).

The smoothing is a modelling choice whose best value depends on the model and the data
(protocol.md section 3), so eval measures it on every model instead of assuming it: for
the model's own setting and for `official` and `none` (the same level set), each in both
modes, pAP, DSC, image AUROC and the threshold-free decision figures (recall at 1% / 5%
false NG). For the model's setting it also measures what the fast `fused` mode costs
against the straightforward `reference`: the pAP difference and the fraction of test
images whose OK/NG call at the stored threshold is the same (the bar: |difference| <=
0.2 points, >= 99.5% of images).

For a model with a decision head every figure here is still the UniAS map's own (what
each setting and mode does to the heat map, and what the map alone would decide): the
OK/NG call is the head's, which the aggregation does not touch, so the stored threshold
(in the head's units) is not applied to these maps and `same_decision` is null;
`decided_on` names the head.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeas.record import ModelRecord

if TYPE_CHECKING:
    from edgeas.train.evaluate import Predictions

COMPARED = ("official", "none")
MODES = ("reference", "fused")
FIGURES = ("pixel_ap", "dsc", "image_auroc", "recall_at_fng_1", "recall_at_fng_5")
HEADS = ("pAP", "DSC", "image AUROC", "recall @1% fNG", "recall @5% fNG")
TARGETS = {"same_decision": 0.995, "pixel_ap_points": 0.2}


def _figures(maps: np.ndarray, pred: Predictions, min_area: int,
             threshold: float | None) -> tuple[dict[str, float], np.ndarray]:
    """The mean figures of one set of maps, and its decision scores."""
    from edgeas.decisions import decision_report, decision_scores
    from edgeas.metrics import evaluate

    mean = evaluate(maps, pred.masks, pred.classes)["mean"]
    scores = decision_scores(maps, min_area)
    decisions = decision_report(maps, pred.masks, pred.classes, threshold, min_area,
                                scores=scores)[0]["mean"]
    figures = {k: float(mean[k]) for k in FIGURES[:3]}
    figures.update({k: float(decisions[k]) for k in FIGURES[3:]})
    return figures, scores


def _maps_of(pred: Predictions, record: ModelRecord, pairs, mode: str) -> np.ndarray:
    """The maps of a setting (smoothing `pairs`, the record's level set) in `mode`,
    reusing what eval already computed for the model's own setting."""
    from edgeas.postprocess import level_indices
    from edgeas.train.inference import aggregate_maps

    agg = record.aggregation
    if tuple(pairs) == tuple(agg.blur):
        if mode == "reference":
            return pred.maps
        if mode == pred.decision_mode:
            return pred.aggregated_maps
    size = tuple(record.preprocessing.input_size)
    return aggregate_maps(pred.levels, size, mode, pairs,
                          level_indices(agg.levels, record.model.level_names))


def compare_settings(pred: Predictions, record: ModelRecord, threshold: float | None,
                     min_area: int) -> dict[str, Any]:
    """The JSON of aggregation.json (see the module docstring)."""
    from edgeas.postprocess import SMOOTHINGS, smoothing_name

    head = record.model.head
    # a head's threshold is in its own units: it makes no call on the UniAS maps
    call_at = threshold if head is None else None
    own = record.aggregation.blur
    own_name = smoothing_name(own)
    settings: dict[str, dict[str, dict[str, float]]] = {}
    own_scores: dict[str, np.ndarray] = {}
    for name in dict.fromkeys([own_name, *COMPARED]):
        pairs = own if name == own_name else SMOOTHINGS[name]
        settings[name] = {}
        for mode in MODES:
            maps = _maps_of(pred, record, pairs, mode)
            settings[name][mode], scores = _figures(maps, pred, min_area, call_at)
            if name == own_name:
                own_scores[mode] = scores
    ref, fused = (settings[own_name][m] for m in MODES)
    same = None
    if call_at is not None:
        calls = [own_scores[m] >= float(call_at) for m in MODES]
        same = float(np.mean(calls[0] == calls[1]))
    report = {
        "setting": own_name, "levels": list(record.aggregation.levels),
        "mode": record.aggregation.mode, "threshold": threshold, "min_area": min_area,
        "images": len(pred.classes), "settings": settings,
        "fused_vs_reference": {
            "pixel_ap_points": 100 * (fused["pixel_ap"] - ref["pixel_ap"]),
            "same_decision": same,
        },
        "targets": TARGETS,
    }
    if head is not None:  # a key only then: a model without a head writes what it did
        report["decided_on"] = {"decision_head": head.kind, "output": head.output}
    return report


def _pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.2f}"


def print_settings(report: dict[str, Any], console: Console | None = None) -> None:
    """The settings table and the fused-vs-reference line, as eval prints them."""
    console = console or Console()
    decider = report.get("decided_on")
    table = Table(title="aggregation settings (percent; * = the model's setting and mode)",
                  caption=None if decider is None else "the UniAS map's own figures: OK/NG "
                  f"is decided by the {decider['decision_head']} decision head, which the "
                  "aggregation does not change")
    table.add_column("smoothing")
    table.add_column("mode")
    for head in HEADS:
        table.add_column(head, justify="right")
    for name, modes in report["settings"].items():
        for mode, figures in modes.items():
            mark = " *" if (name, mode) == (report["setting"], report["mode"]) else ""
            table.add_row(name + mark, mode, *(_pct(figures[k]) for k in FIGURES))
    console.print(table)
    check = report["fused_vs_reference"]
    same = check["same_decision"]
    if decider is not None:
        decided = f"OK/NG is the {decider['decision_head']} decision head's call either way"
    elif same is None:
        decided = "no stored threshold to decide with"
    else:
        decided = f"the same OK/NG call on {100 * same:.1f}% of {report['images']} images"
    console.print(f"fused vs reference ({report['setting']}): pAP "
                  f"{check['pixel_ap_points']:+.2f} points, {decided} (bar: "
                  f"|pAP| <= {TARGETS['pixel_ap_points']}, >= "
                  f"{100 * TARGETS['same_decision']:.1f}%)")
