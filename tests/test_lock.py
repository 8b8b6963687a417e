"""constraints.txt (`make lock`) against pyproject.toml: a pin outside a range would make
`make install` fail to resolve, so a range moved without a new lock fails here first."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_pin_is_inside_the_pyprojects_ranges():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    requirements = pytest.importorskip("packaging.requirements")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    checked = 0
    for text in listed:
        req = requirements.Requirement(text)
        name = req.name.lower().replace("_", "-").replace(".", "-")
        if name in pins:
            assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])
            checked += 1
    assert checked >= 15  # the core and the extras' direct dependencies, not a stray few
    assert "edgeas" not in pins and "pip" not in pins and "setuptools" not in pins
