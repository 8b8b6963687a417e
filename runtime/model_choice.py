"""`edgeas stream --precision`: the model file of another precision written beside the one
named, chosen only when asked and always said.

`edgeas export --precision fp16` writes `model.fp16.onnx` beside `model.onnx`, and
`edgeas calibrate` writes `model.int8.onnx` (Q/DQ, for TensorRT and GPU execution
providers) and `model.int8.cpu.onnx` (QOperator: what runs fast on a CPU). A station
names one of them; `--precision` swaps in the sibling instead of making the user spell
its name, and a missing sibling is an error that says which command writes it.
"""

from __future__ import annotations

from pathlib import Path

from edgeas.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8")
# longest first: "model.int8.cpu" must lose ".int8.cpu", not only ".cpu"
_SUFFIXES = (".int8.cpu", ".int8", ".fp16")


def base_stem(path: Path) -> Path:
    """model.int8.cpu.onnx, model.int8.onnx, model.fp16.onnx, model.onnx -> model."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    for suffix in _SUFFIXES:
        if stem.endswith(suffix):
            return path.with_name(stem[: -len(suffix)])
    return path.with_name(stem)


def sibling(model: str, precision: str, device: str = "auto") -> Path:
    """The file of `precision` beside `model` (an ONNX path). INT8 is the QOperator model
    unless the device is a GPU (`--device gpu`), where the Q/DQ model runs."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    path = Path(model)
    if path.suffix.lower() != ".onnx":
        raise ConfigError(f"--precision picks an ONNX file beside the model; {model} is not "
                          "an ONNX file (an engine's precision is fixed when it is built)",
                          hint="edgeas build-engine --precision fp16|int8")
    base = base_stem(path)
    name = {"fp32": ".onnx", "fp16": ".fp16.onnx",
            "int8": ".int8.onnx" if device == "gpu" else ".int8.cpu.onnx"}[precision]
    chosen = base.with_name(base.name + name)
    if not chosen.is_file():
        writer = {"fp32": f"edgeas export --checkpoint CKPT -o {base}.onnx",
                  "fp16": f"edgeas export --checkpoint CKPT -o {base}.onnx --precision fp16",
                  "int8": f"edgeas calibrate --onnx {base}.onnx --images DIR "
                          f"-o {base}.int8.onnx"}[precision]
        raise ConfigError(f"--precision {precision}: no {chosen} beside {model}",
                          hint=f"it is written by: {writer}")
    return chosen
