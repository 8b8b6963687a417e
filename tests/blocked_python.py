"""A fresh Python in which some packages cannot be imported: how the tests show that a
stage runs on a machine without torch, TensorRT, pycuda or ONNX Runtime (a station
image, a Jetson with the runtime-only install)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_CLI = "from edgeas.cli import main\nsys.argv = ['edgeas', *sys.argv[1:]]\nmain()\n"


def run_without(blocked: Sequence[str], body: str, *args: str,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `body` (dedented) with `args` in sys.argv[1:]; importing any of `blocked`
    raises ImportError there, and `sys` is already imported."""
    prelude = (f"import sys\nfor _name in {tuple(blocked)!r}:\n"
               "    sys.modules[_name] = None\n")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def edgeas_without(blocked: Sequence[str], *args: str,
                   timeout: float = 300) -> subprocess.CompletedProcess:
    """`edgeas ARGS` with `blocked` unimportable."""
    return run_without(blocked, _CLI, *args, timeout=timeout)
