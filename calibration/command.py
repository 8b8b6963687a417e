"""`edgeas calibrate`: INT8 models from normal images, checked against FP32 before use.

Writes, beside -o model.int8.onnx: model.int8.cpu.onnx (ONNX Runtime CPU), model.int8.cache
(TensorRT 10's legacy calibration cache) with model.int8.cache.json (the ONNX and images it
was made from, so that `build-engine --calib-cache` reuses it) and model.int8.json (what was
done and how accurate it is); with --sensitivity, --mixed-precision or --keep-float also
model.int8.sensitivity.json (the per-block analysis and the plan, calibration/mixed.py).
--method auto collects the three methods' ranges in one pass and takes, per format, the
one whose INT8 model scores best against FP32 (mixed.choose_methods).
The models are written before the accuracy gate runs, so that a failed gate leaves them
for inspection; the exit code says whether they passed.
A model with a decision head keeps the head's subgraph float in every INT8 file and out
of the TensorRT cache (quantize.py), and the gate judges its decision map too (gate.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgeas import calibcache, calibimages
from edgeas.calibration import evalset as ev
from edgeas.calibration import gate as gt
from edgeas.calibration import images as im
from edgeas.calibration import mixed as mx
from edgeas.calibration import quantize as qz
from edgeas.calibration import ranges as rg
from edgeas.errors import ArtifactError, CalibrationError, ConfigError, require
from edgeas.fileio import atomic_write_bytes, atomic_write_text
from edgeas.head_graph import head_tensors
from edgeas.ort import open_session
from edgeas.preprocess import Recipe
from edgeas.record import ModelRecord

console = Console(stderr=True, soft_wrap=True)
CHUNK = 8  # images per ONNX Runtime call (dynamic-batch graphs) and per gate step
AUTO = "auto"  # --method auto: each format takes the method that scores best


@dataclass
class CalibrateOptions:
    num: int = 256
    method: str = "entropy"
    eval_data: Path | None = None
    allow_drop: bool = False
    max_pap_drop: float = 1.0
    min_cosine: float = 0.95
    trt_version: str = calibcache.DEFAULT_VERSION
    sensitivity: bool = False
    mixed_precision: bool = False
    keep_float: tuple[str, ...] = ()
    max_float_blocks: int = mx.sv.MAX_FLOAT_BLOCKS

    def mixed(self) -> mx.MixedOptions:
        return mx.MixedOptions(self.sensitivity, self.mixed_precision, tuple(self.keep_float),
                               self.max_float_blocks, self.min_cosine, self.max_pap_drop)


def output_paths(output: Path) -> dict[str, Path]:
    """-o model.int8.onnx -> the four files it stands for."""
    stem = output.name[: -len(".onnx")]
    return {"qdq": output, "qoperator": output.with_name(f"{stem}.cpu.onnx"),
            "cache": output.with_name(f"{stem}.cache"),
            "report": output.with_name(f"{stem}.json"),
            "sensitivity": output.with_name(f"{stem}.sensitivity.json")}


def _check_args(onnx_path: Path, output: Path, opts: CalibrateOptions) -> None:
    if not onnx_path.is_file():
        raise ConfigError(f"--onnx {onnx_path}: file not found")
    if output.suffix != ".onnx":
        raise ConfigError(f"-o {output}: the output must be an .onnx file (model.int8.onnx)")
    if output.resolve() == onnx_path.resolve():
        raise ConfigError(f"-o {output} would overwrite the FP32 model")
    if opts.method not in (*rg.METHODS, AUTO):
        raise ConfigError(f"--method {opts.method}: choose one of "
                          f"{', '.join((*rg.METHODS, AUTO))}")
    if not 0.0 < opts.min_cosine <= 1.0:
        raise ConfigError(f"--min-cosine {opts.min_cosine}: expected a value in (0, 1]")
    if not opts.max_pap_drop >= 0.0:
        raise ConfigError(f"--max-pap-drop {opts.max_pap_drop}: expected >= 0 (points)")
    if opts.max_float_blocks < 0:
        raise ConfigError(f"--max-float-blocks {opts.max_float_blocks}: expected >= 0")
    calibcache.version_number(opts.trt_version)  # raises on a malformed version


def _static_batch(model) -> int | None:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _batches(tensors: np.ndarray, batch: int | None) -> Iterator[np.ndarray]:
    """Chunks for the calibration session; a static batch B takes whole batches only."""
    step = batch or CHUNK
    usable = len(tensors) // step * step if batch else len(tensors)
    for s in range(0, usable, step):
        yield tensors[s : s + step]


def _session_factory(model_bytes: bytes):
    return open_session(model_bytes, extra="export")


def _load(paths: list[Path], recipe: Recipe) -> np.ndarray:
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("reading images", total=len(paths))
        return im.load_tensors(paths, recipe, lambda n: bar.advance(task, n))


def _calibrate(model, tensors: np.ndarray, method: str) -> dict[str, rg.Ranges]:
    """{method: ranges}: every method for --method auto, else the one asked for."""
    batch = _static_batch(model)
    methods = rg.METHODS if method == AUTO else (method,)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"collecting ranges ({method})", total=len(tensors))
        return rg.collect_methods(model, _batches(tensors, batch), methods, _session_factory,
                                  lambda n: bar.advance(task, n))


def _int8_record(model_record: ModelRecord, fmt: str, calibration: dict[str, Any],
                 plan: mx.sv.Plan | None, keep_float: tuple[str, ...], method: str,
                 head_nodes: int = 0) -> ModelRecord:
    quantization = qz.describe(fmt, head_nodes)
    if plan is not None and plan.float_nodes:  # nodes left float: which and why
        quantization.update(float_nodes=len(plan.float_nodes), keep_float=list(keep_float),
                            float_blocks=plan.float_blocks)
    if calibration["method"] == AUTO:
        quantization["method"] = method
    stage = {"calibration": calibration, "quantization": quantization}
    return model_record.with_stage("calibration", stage, precision="int8")


def _gate(model_record: ModelRecord, model, written: dict[str, Any], held: np.ndarray,
          opts: CalibrateOptions) -> gt.GateResult:
    sessions = {fmt: _session_factory(written[fmt].SerializeToString()) for fmt in qz.FORMATS}
    gate = gt.Gate(model_record, _session_factory(model.SerializeToString()), sessions)
    recipe = model_record.preprocessing
    test = (ev.index_eval_set(opts.eval_data, model_record.model.classes) if opts.eval_data
            else None)
    total = len(held) + (len(test) if test else 0)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("accuracy gate: FP32 vs INT8", total=total)
        for s in range(0, len(held), CHUNK):
            gate.add(held[s : s + CHUNK], "held_out")
            bar.advance(task, len(held[s : s + CHUNK]))
        if test is not None:
            for s in range(0, len(test), CHUNK):
                idx = list(range(s, min(len(test), s + CHUNK)))
                images, masks = ev.load(test, idx, recipe)
                gate.add(images, "eval", masks, [test.classes[i] for i in idx])
                bar.advance(task, len(idx))
    result = gate.result(opts.min_cosine, opts.max_pap_drop)
    if test is not None:
        result.report["eval_data"] = {"root": str(test.root), "images": len(test),
                                      "classes": sorted(set(test.classes))}
    return result


def _print_table(report: dict[str, Any], model_record: ModelRecord, has_eval: bool) -> None:
    levels = list(model_record.model.level_names)
    head = model_record.model.head  # its output and its decision map get columns too
    maps = [*levels, *([head.output] if head else []), "map", *(["decision"] if head else [])]
    table = Table(title="INT8 vs FP32 under ONNX Runtime: worst per-image cosine"
                  + ("; pAP and DSC (change in points)" if has_eval else ""),
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ["model", "images", *maps] + (["pAP", "DSC"] if has_eval else []):
        table.add_column(col, justify="left" if col in ("model", "images") else "right",
                         no_wrap=True)
    for row in gt.table_rows(report, list(model_record.model.outputs)):
        table.add_row(*(row if has_eval else row[:-2]))
    # piped output would be cut to 80 columns, too few for the cosines
    Console(stderr=True, width=max(console.width, 110)).print(table)
    if "fp32_metrics" in report:
        fp = report["fp32_metrics"]
        console.print(f"FP32 on --eval-data: pAP {100 * fp['pixel_ap']:.2f}, "
                      f"DSC {100 * fp['dsc']:.2f}")


def _failure_message(failures: list[str]) -> str:
    # pAP losses first: they are what a station loses; at most two, the rest are in the report
    ordered = sorted(failures, key=lambda f: "pAP" not in f)
    more = f" (+{len(ordered) - 2} more)" if len(ordered) > 2 else ""
    return "; ".join(ordered[:2]) + more


def _plans(model_record: ModelRecord, model, by_method: dict[str, rg.Ranges],
           held: np.ndarray, opts: CalibrateOptions, files: dict[str, Path]
           ) -> tuple[dict[str, mx.sv.Plan], dict[str, rg.Ranges], dict[str, Any]]:
    """({format: the plan whose model to write} when --method auto, --sensitivity,
    --mixed-precision or --keep-float chose it, else {}; {format: its ranges}; what the
    report records: the method choice, and whether .sensitivity.json was written)."""
    planned = opts.sensitivity or opts.mixed_precision or opts.keep_float
    if opts.method != AUTO and not planned:
        return {}, {fmt: by_method[opts.method] for fmt in qz.FORMATS}, {}
    ref = mx.build_reference(model_record, _session_factory(model.SerializeToString()), held,
                             opts.eval_data, console)
    notes: dict[str, Any] = {}
    first = None
    if opts.method == AUTO:
        per_format, first, notes["method_choice"] = mx.choose_methods(
            model, by_method, ref, opts.mixed(), _session_factory, console)
    else:
        per_format = {fmt: by_method[opts.method] for fmt in qz.FORMATS}
    if not planned:
        assert first is not None
        keep: list[str] = []
        return ({fmt: mx.sv.Plan(fmt, [], keep, *first[fmt]) for fmt in qz.FORMATS},
                per_format, notes)
    plans, report = mx.run(model, per_format, ref, opts.mixed(), _session_factory, console,
                           first)
    atomic_write_text(files["sensitivity"], json.dumps(report, indent=2, sort_keys=True))
    console.print(f"[green]wrote[/] {files['sensitivity']}")
    notes["sensitivity"] = str(files["sensitivity"])
    return plans, per_format, notes


def _float_inputs(model, nodes: list[str]) -> set[str]:
    wanted = set(nodes)
    consts = {i.name for i in model.graph.initializer}
    return {i for n in model.graph.node if n.name in wanted for i in n.input
            if i and i not in consts}


def calibrate_command(onnx_path: Path, images: Path, output: Path,
                      opts: CalibrateOptions) -> dict[str, Any]:
    from edgeas.artifacts import read_onnx_record, sha256_file
    from edgeas.onnxio import check, set_metadata

    onnx_path, images, output = Path(onnx_path), Path(images), Path(output)
    _check_args(onnx_path, output, opts)
    onnx = require("onnx", "onnx", "export")
    start = time.perf_counter()
    model_record = read_onnx_record(onnx_path)
    if model_record.precision != "fp32":
        raise ConfigError(f"--onnx {onnx_path} is a {model_record.precision} model",
                          hint="calibrate the FP32 model.onnx that `edgeas export` wrote")
    recipe = model_record.preprocessing
    paths = calibimages.list_images(images, opts.num, images_option="--images", num_option="--num")
    if len(paths) < calibimages.WARN_IMAGES:
        console.print(f"[yellow]warning:[/] {len(paths)} calibration images; "
                      f">= {calibimages.WARN_IMAGES} are recommended")
    tensors = _load(paths, recipe)
    image_check = im.check_images(tensors, recipe, paths)
    for warning in image_check.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    keep, hold = im.split_holdout(len(paths))
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # protobuf decode errors have no common base class
        raise ArtifactError(f"{onnx_path}: not a readable ONNX model ({exc})") from exc
    mx.sv.nodes_under(model, opts.keep_float)  # a wrong --keep-float fails before the work
    head_nodes = qz.float_head(model)  # the decision head's nodes: float in every model
    if model_record.model.head is not None and not head_nodes:
        raise ArtifactError(f"{onnx_path}: the record names a decision head output "
                            f"{model_record.model.head.output!r} that the graph lacks",
                            hint="export the model again with `edgeas export`")
    by_method = _calibrate(model, tensors[keep], opts.method)
    counted = next(iter(by_method.values())).images
    used = [paths[i] for i in keep[:counted]]
    record = {"images": counted,
              "file_list_sha256": calibimages.file_list_sha256(used, images),
              "method": opts.method, "held_out": len(hold), "source": str(images)}
    files = output_paths(output)
    written: dict[str, Any] = {}
    plans, per_format, notes = _plans(model_record, model, by_method, tensors[hold], opts,
                                      files)
    for fmt in qz.FORMATS:
        plan = plans.get(fmt)
        if plan is None:
            console.print(f"quantizing ({fmt}) ...")
            int8 = qz.quantize(model, per_format[fmt], fmt)
        else:
            int8 = plan.model
        set_metadata(int8, _int8_record(model_record, fmt, record, plan, opts.keep_float,
                                        per_format[fmt].method, len(head_nodes)).to_json())
        if fmt == "qdq":
            problems = qz.qdq_problems(int8)
            if problems:  # a bug here, not the user's: TensorRT would refuse the file
                raise CalibrationError(f"the Q/DQ model is not TensorRT-ready: {problems[0]}")
            check(int8, "the Q/DQ INT8 model")
        atomic_write_bytes(files[fmt], int8.SerializeToString())
        written[fmt] = int8
        console.print(f"[green]wrote[/] {files[fmt]}")
    # TensorRT 10's implicit INT8 runs a layer whose input has no scale in float: the inputs
    # of the nodes the Q/DQ plan keeps float leave the cache, so that both routes agree.
    float_inputs = _float_inputs(model, plans["qdq"].float_nodes if "qdq" in plans else [])
    # The decision head's own tensors leave it too, so that TensorRT 10 keeps its layers
    # float; its inputs (backbone features the levels share) keep their scales.
    float_inputs |= head_tensors(model)
    ranges = per_format["qdq"]  # TensorRT's: the Q/DQ model's ranges
    amax = {k: v for k, v in ranges.amax.items() if k not in float_inputs}
    cache_text, skipped = calibcache.render(amax, opts.trt_version)
    atomic_write_text(files["cache"], cache_text)
    cache_record = calibcache.calibrate_record(sha256_file(onnx_path), recipe.input_size,
                                              {**record, "method": ranges.method},
                                              opts.trt_version)
    atomic_write_text(calibcache.record_path(files["cache"]),
                      json.dumps(cache_record, indent=2, sort_keys=True))
    console.print(f"[green]wrote[/] {files['cache']} ({calibcache.header(opts.trt_version)})")

    result = _gate(model_record, model, written, tensors[hold], opts)
    _print_table(result.report, model_record, opts.eval_data is not None)
    report = {
        "onnx": str(onnx_path),
        "files": {**{k: str(v) for k, v in files.items()},
                  "cache_record": str(calibcache.record_path(files["cache"]))},
        "calibration": record, "images": image_check.to_json(),
        "ranges": {"tensors": len(ranges.amax), "method": opts.method,
                   "per_format": {fmt: r.method for fmt, r in per_format.items()}},
        **({"method_choice": notes["method_choice"]} if "method_choice" in notes else {}),
        "quantization": {fmt: qz.describe(fmt, len(head_nodes)) for fmt in qz.FORMATS},
        "trt_cache": {"header": calibcache.header(opts.trt_version),
                      "tensors": len(amax) - len(skipped), "left_out": skipped,
                      "left_out_float": sorted(float_inputs & set(ranges.amax))},
        "float": {fmt: {"blocks": p.float_blocks, "nodes": len(p.float_nodes)}
                  for fmt, p in plans.items()},
        "gate": result.report, "allow_drop": opts.allow_drop,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if "sensitivity" not in notes:
        del report["files"]["sensitivity"]
    atomic_write_text(files["report"], json.dumps(report, indent=2, sort_keys=True))
    console.print(f"[green]wrote[/] {files['report']}")
    if not result.passed:
        reason = _failure_message(result.failures)
        if not opts.allow_drop:
            raise CalibrationError(
                f"INT8 accuracy gate failed: {reason}",
                hint=f"the files are written for inspection ({files['report'].name}); try "
                "--method auto (the best of the three per format) and --mixed-precision "
                "(keeps the most sensitive blocks in float), calibrate on more or more "
                "typical normal images, or accept the loss with --allow-drop",
            )
        console.print(f"[yellow]warning:[/] accuracy gate failed ({reason}); kept by --allow-drop")
    elif opts.eval_data is not None:
        also = (f"; every decision map's cosine to FP32 is >= {opts.min_cosine:g}"
                if model_record.model.head else "")
        console.print(f"[green]accuracy gate passed:[/] no variant loses more than "
                      f"{opts.max_pap_drop:g} pAP point(s) on {opts.eval_data}{also}")
    else:
        maps = "anomaly and decision map's" if model_record.model.head else "anomaly map's"
        console.print(f"[green]accuracy gate passed:[/] every {maps} cosine to FP32 is "
                      f">= {opts.min_cosine:g} on the held-out images (no labelled data given)")
    console.print(f"next: edgeas build-engine --onnx {output} "
                  f"-o {output.with_suffix('.engine')}")
    console.print(f"  (TensorRT {opts.trt_version}'s implicit INT8, e.g. for DLA: edgeas "
                  f"build-engine --onnx {onnx_path} --precision int8 "
                  f"--calib-cache {files['cache']})")
    return report
