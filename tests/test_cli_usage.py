"""Usage errors through the installed `edgeas` entry point: one `error:` line naming the
culprit, one `hint:` line, exit 2, no traceback, with whichever typer/click is installed.

Needs only the core dependencies (no torch, no ONNX Runtime): CI also runs this file in a
fresh venv holding the newest versions the pyproject's ranges allow (`make test-newest`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _entry_point() -> str:
    # The interpreter's own bin folder first: a venv that runs the tests without being
    # activated still tests its own `edgeas`, not another environment's.
    here = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("edgeas", path=here)
    if found is None:
        pytest.skip("no `edgeas` entry point on PATH (pip install -e . makes it)")
    return found


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="40")  # narrow: an error must stay one line anyway
    env.pop("EDGEAS_DEBUG", None)
    return subprocess.run([_entry_point(), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["exprot"], "'export'"),  # did-you-mean: the command meant is named
        (["train", "--config", "tiny"], "--data"),  # a required option left out
        (["stream", "--model", "m.onnx", "--bogus-flag"], "--bogus-flag"),
        (["synth", "out", "--per-class", "ten"], "--per-class"),  # not an integer
        (["--no-such-flag"], "--no-such-flag"),  # an unknown option of the root
        (["inspect"], "file"),  # a missing argument
    ],
    ids=["unknown-command", "missing-option", "unknown-option", "bad-value", "root-option",
         "missing-argument"],
)
def test_a_usage_error_is_one_line_and_a_hint_and_exits_2(args, culprit, tmp_path):
    run = _run(*args, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2, run.stderr
    assert lines[0].startswith("error: ") and culprit.lower() in lines[0].lower(), lines
    assert lines[1].startswith("hint: ") and "--help" in lines[1], lines
    assert not (tmp_path / "out").exists()  # nothing ran


def test_the_hint_names_the_command_that_was_mistyped(tmp_path):
    run = _run("train", "--config", "tiny", cwd=tmp_path)
    assert run.stderr.splitlines()[-1] == "hint: run 'edgeas train --help'"


def test_a_mistyped_command_is_suggested_once(tmp_path):
    """Newer typers suggest by themselves and edgeas does for older ones: not twice."""
    first = _run("exprot", cwd=tmp_path).stderr.splitlines()[0]
    assert first == "error: No such command 'exprot'. Did you mean 'export'?"


def test_help_still_exits_0(tmp_path):
    run = _run("--help", cwd=tmp_path)
    assert run.returncode == 0 and "export" in run.stdout, run.stderr


@pytest.mark.parametrize("module", ["click", "typer._click"])
def test_both_clicks_are_reported(module, capsys):
    """The plain click package (typer < 0.26) and typer's vendored copy (>= 0.26): each
    one's usage error is reported the same way, whichever of them is installed."""
    exceptions = pytest.importorskip(f"{module}.exceptions",
                                     reason=f"{module} is not installed with this typer")
    from edgeas.cli_errors import report_click_error

    assert report_click_error(exceptions.UsageError("No such option: --x")) == 2
    assert capsys.readouterr().err == "error: No such option: --x\n"
    assert report_click_error(ValueError("not click's")) is None
