#!/usr/bin/env python3
"""The constraints (lock) file: write it from this environment, or compare one with it.

    python3 .ci/lock.py freeze [--extras train,export,runtime,dev] > constraints.txt
    python3 .ci/lock.py diff constraints.txt [--extras ...]

`freeze` pins, at the version installed here, every package edgeas's pyproject pulls in
with those extras, followed through their own requirements (markers evaluated here):
not the whole `pip freeze`, whose other packages (whatever else this Python holds) would
then be pinned too; not edgeas itself, pip, setuptools or wheel. Run it in the environment
that has just passed the tests (`make lock`). `diff` names what the environment it runs in
has at other versions than the file: what moved, when the newest-versions check fails.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import platform
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_PINNED = {"edgeas", "pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _root_requirements(extras: list[str]) -> list[tuple[str, str]]:
    """(requirement, extra it is listed under) from pyproject.toml: the file, not the
    installed metadata, which is stale when the pyproject changed after the install."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the metadata of the editable install instead
        dist = metadata.distribution("edgeas")
        return [(req, extra) for req in dist.requires or [] for extra in ["", *extras]]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [(req, "") for req in project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            sys.exit(f"lock: pyproject.toml has no extra {extra!r}")
        found += [(req, "") for req in optional[extra]]
    return found


def installed_tree(roots: list[tuple[str, str]], strict: bool = True) -> dict[str, str]:
    """{name: version installed here} of `roots` and everything they require, markers
    evaluated for this Python; a missing package stops a `freeze` (strict), not a `diff`."""
    from packaging.requirements import Requirement  # pytest's dependency: in every test env

    found: dict[str, str] = {}
    todo = list(roots)
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        text, extra = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = (canonical(req.name), frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            if strict:
                sys.exit(f"lock: {req.name} (needed as {text!r}) is not installed here; "
                         "run `make install` and the tests first")
            continue
        found[key[0]] = dist.version
        # Its own requirements: the base ones and those of the extras asked of it.
        todo += [(sub, e) for sub in dist.requires or [] for e in ["", *sorted(req.extras)]]
    return {name: v for name, v in sorted(found.items()) if name not in NOT_PINNED}


def freeze(extras: list[str]) -> list[str]:
    return [f"{name}=={version}" for name, version in
            installed_tree(_root_requirements(extras)).items()]


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.split(";", 1)[0].strip()
    return pins


def diff(path: Path, extras: list[str]) -> list[str]:
    """Rows for each package of edgeas's tree (with `extras`; and pytest, which runs the
    check) installed here at another version than `path` pins, or not pinned there."""
    pins = read_pins(path)
    here = installed_tree([*_root_requirements(extras), ("pytest", "")], strict=False)
    rows = [(name, pins.get(name, f"(not in {path.name})"), version)
            for name, version in here.items() if pins.get(name) != version]
    if not rows:
        return [f"all {len(here)} packages of edgeas's tree are at their {path.name} version"]
    width = max(len(r[0]) for r in rows)
    return [f"{'package':<{width}}  {path.name} -> installed here"] + [
        f"{name:<{width}}  {locked} -> {version}" for name, locked, version in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("freeze", help="print the pins of this environment")
    f.add_argument("--extras", default="train,export,runtime,dev")
    d = sub.add_parser("diff", help="what this environment has at other versions")
    d.add_argument("constraints", type=Path)
    d.add_argument("--extras", default="", help="those installed here (default: none)")
    args = parser.parse_args()
    extras = [e for e in args.extras.split(",") if e]
    if args.command == "freeze":
        print(f"# Written by `make lock` (.ci/lock.py freeze --extras {','.join(extras)}):")
        print("# the versions the tests passed with; `make install` installs these. Made on")
        print(f"# {platform.system()} {platform.machine()}, Python {platform.python_version()}.")
        print("\n".join(freeze(extras)))
    else:
        print("\n".join(diff(args.constraints, extras)))


if __name__ == "__main__":
    main()
