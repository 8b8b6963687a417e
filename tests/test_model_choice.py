"""`edgeas stream --precision`: which file beside the named model runs (no model needed)."""

from __future__ import annotations

import pytest

from edgeas.errors import ConfigError
from edgeas.runtime.model_choice import base_stem, sibling


@pytest.mark.parametrize("name", ["model.onnx", "model.fp16.onnx", "model.int8.onnx",
                                  "model.int8.cpu.onnx"])
def test_every_written_file_has_the_same_base(tmp_path, name):
    assert base_stem(tmp_path / name) == tmp_path / "model"


def test_the_sibling_of_each_precision(tmp_path):
    for name in ("line.onnx", "line.fp16.onnx", "line.int8.onnx", "line.int8.cpu.onnx"):
        (tmp_path / name).write_bytes(b"")
    named = str(tmp_path / "line.int8.cpu.onnx")
    assert sibling(named, "fp32") == tmp_path / "line.onnx"
    assert sibling(named, "fp16") == tmp_path / "line.fp16.onnx"
    assert sibling(str(tmp_path / "line.onnx"), "int8") == tmp_path / "line.int8.cpu.onnx"
    assert sibling(str(tmp_path / "line.onnx"), "int8", "cpu") == tmp_path / "line.int8.cpu.onnx"
    assert sibling(str(tmp_path / "line.onnx"), "int8", "gpu") == tmp_path / "line.int8.onnx"


def test_bad_requests_are_one_line_errors(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match="expected one of fp32, fp16, int8"):
        sibling(str(tmp_path / "m.onnx"), "int4")
    with pytest.raises(ConfigError, match="not an ONNX file"):
        sibling(str(tmp_path / "m.engine"), "fp16")
    with pytest.raises(ConfigError, match="no .*m.fp16.onnx beside"):
        sibling(str(tmp_path / "m.onnx"), "fp16")
