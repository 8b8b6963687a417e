"""Which of ONNX Runtime's CPU graph fusions pay on a model: each one switched off in turn.

    python benchmarks/ort_fusions.py --onnx MODEL.onnx [--int8 MODEL.int8.cpu.onnx]
                                     [--rounds 8] [--out benchmarks/results]

A session is opened per variant, all with intra-op 2 / inter-op 1 threads: `edgeas`, the
optimizers edgeas's own sessions use (edgeas.ort.open_session: SkipLayerNormFusion off on
the CPU); `all fusions`, ONNX Runtime's defaults; then edgeas's choice with one more
optimizer off each. Runs are interleaved (rounds of 3 calls of each variant, the order
reversed every other round) so that load changes hit all alike; the table gives the
median per variant, its ratio to `edgeas` and the largest relative difference of its
outputs from `edgeas`'s. A second table times the fused op on its own: a residual Add
and LayerNormalization on a (196, 1, 256) tensor, fused (SkipLayerNormalization) and not,
at 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from publish import write_results

from edgeas.ort import CPU_DISABLED_OPTIMIZERS, disabled_optimizers, open_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import loadavg, machine_facts  # noqa: E402
from ort_profile import add_model_arguments, models_given, test_image  # noqa: E402

CANDIDATES = ("MatMulAddFusion", "MatmulTransposeFusion", "MatMulScaleFusion",
              "NchwcTransformer", "GeluFusion", "BiasGeluFusion", "BiasSoftmaxFusion",
              "LayerNormFusion", "ConvActivationFusion", "TransposeOptimizer")
CALLS = 3
WARMUP = 3


def session(model: bytes | str, disabled: list[str], threads: int = 2):
    """edgeas's session factory with `disabled` as the optimizers switched off."""
    return open_session(model, threads=threads, inter_threads=1, disabled=disabled)


def interleaved(sessions: dict[str, Any], feeds: dict[str, dict], rounds: int
                ) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for name, s in sessions.items():
        for _ in range(WARMUP):
            s.run(None, feeds[name])
    for r in range(rounds):
        order = list(sessions) if r % 2 == 0 else list(sessions)[::-1]
        for name in order:
            for _ in range(CALLS):
                t0 = time.perf_counter()
                sessions[name].run(None, feeds[name])
                times[name].append(1e3 * (time.perf_counter() - t0))
    return times


def model_variants(path: Path, image: np.ndarray, rounds: int) -> dict[str, Any]:
    edgeas = list(disabled_optimizers(str(path)))
    variants = {"edgeas": edgeas,
                "all fusions": [n for n in edgeas if n not in CPU_DISABLED_OPTIMIZERS]}
    variants.update({f"- {c}": [*edgeas, c] for c in CANDIDATES if c not in edgeas})
    sessions = {k: session(str(path), v) for k, v in variants.items()}
    feed = {sessions["edgeas"].get_inputs()[0].name: image}
    feeds = {k: feed for k in sessions}
    reference = sessions["edgeas"].run(None, feed)
    before = loadavg()
    times = interleaved(sessions, feeds, rounds)
    base = statistics.median(times["edgeas"])
    rows = []
    for name, t in times.items():
        outs = sessions[name].run(None, feed)
        diff = max(float(np.abs(o - r).max() / max(np.abs(r).max(), 1e-12))
                   for o, r in zip(outs, reference))
        rows.append({"variant": name, "disabled": variants[name],
                     "ms_median": statistics.median(t), "ratio": statistics.median(t) / base,
                     "max_rel_diff": diff, "runs": len(t)})
    return {"model": path.name, "rows": rows, "load_before": before, "load_after": loadavg()}


def residual_layernorm(shape=(196, 1, 256)):
    from onnx import TensorProto, helper, numpy_helper

    c = shape[-1]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "skip"], ["s"]),
         helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1)],
        "residual_layernorm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        [numpy_helper.from_array(np.ones(c, np.float32), "gamma"),
         numpy_helper.from_array(np.zeros(c, np.float32), "beta")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def op_probe(rounds: int) -> list[dict[str, Any]]:
    model = residual_layernorm().SerializeToString()
    rng = np.random.default_rng(0)
    feed = {n: rng.normal(size=(196, 1, 256)).astype(np.float32) for n in ("x", "skip")}
    sessions, feeds = {}, {}
    for threads in (1, 2):
        for fused in (True, False):
            key = f"{'fused' if fused else 'unfused'}, {threads} thread{'s' * (threads > 1)}"
            sessions[key] = session(model, [] if fused else list(CPU_DISABLED_OPTIMIZERS),
                                    threads)
            feeds[key] = feed
    times = interleaved(sessions, feeds, rounds * 20)
    return [{"variant": k, "us_median": 1e3 * statistics.median(t), "runs": len(t)}
            for k, t in times.items()]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = ["# ONNX Runtime CPU fusions: which ones pay (issue 16)", "",
             f"`{report['command']}`", "",
             f"ONNX Runtime {m.get('onnxruntime', '')}, {m.get('cpu_model', '?')}, "
             f"{m.get('cpu_count', '?')} CPUs (shared), intra-op 2 / inter-op 1 threads, batch "
             "1. `edgeas`: the optimizers edgeas's sessions use; `all fusions`: ONNX Runtime's "
             "defaults; `- X`: edgeas's choice with X off too. Runs interleaved; ratio = "
             "median / edgeas's median (below 1: faster than edgeas).", ""]
    for name, r in report["models"].items():
        lines += [f"## {name} ({r['model']})", "",
                  f"Load {r['load_before']} -> {r['load_after']}.", "",
                  "| variant | ms median | ratio | max rel. diff of outputs | runs |",
                  "|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['variant']} | {row['ms_median']:.1f} | {row['ratio']:.3f} | "
                         f"{row['max_rel_diff']:.1e} | {row['runs']} |")
        lines.append("")
    lines += ["## The fused op on its own", "",
              "Residual Add + LayerNormalization on a (196, 1, 256) tensor (one transformer "
              "block's tokens of unias-edge).", "",
              "| variant | us median | runs |", "|---|---|---|"]
    for row in report["op_probe"]:
        lines.append(f"| {row['variant']} | {row['us_median']:.0f} | {row['runs']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    a = p.parse_args()
    given = models_given(a)
    import onnxruntime

    image = test_image(a.onnx)
    models = {}
    for kind, path in given:
        models[kind] = model_variants(path, image, a.rounds)
        best = min(models[kind]["rows"], key=lambda r: r["ms_median"])
        print(f"{kind}: edgeas {models[kind]['rows'][0]['ms_median']:.1f} ms, "
              f"fastest {best['variant']} {best['ms_median']:.1f} ms", file=sys.stderr)
    report = {"machine": {**machine_facts(), "onnxruntime": onnxruntime.__version__},
              "command": "python benchmarks/ort_fusions.py " + shlex.join(sys.argv[1:]),
              "models": models, "op_probe": op_probe(a.rounds)}
    write_results(a.out, "ort_fusions", report, markdown(report))


if __name__ == "__main__":
    main()
