"""The dependency direction of style.md, read from the source: runtime -> core,
calibration -> core, export -> train + core, and a core that reaches a stage only where
it means to (lazily, listed below with the reason). Every import counts: top-level and
inside functions, relative ones resolved, and `require("pkg")` / `import_module("pkg")`
with a literal name. The modules are found by walking the package folders."""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

STAGES = ("train", "export", "calibration", "runtime")
# What each stage may import besides itself and the core (style.md "Import direction").
MAY_IMPORT = {"runtime": set(), "calibration": set(), "export": {"train"}, "train": set()}
# The deploy-side stages run on a station or a Jetson without the training stack.
NO_TORCH = ("runtime", "calibration")
TORCH = ("torch", "torchvision", "timm")
# Where the core deliberately reaches a stage, always inside a function so that importing
# the core never loads a stage: (core module, stage module) -> why.
CORE_REACHES = {
    ("edgeas.artifacts", "edgeas.train.checkpoint"):
        "`edgeas inspect`/read_metadata open a .pt checkpoint with the training code",
    ("edgeas.cli", "edgeas.train.synth"): "the CLI dispatches `edgeas synth`",
    ("edgeas.cli", "edgeas.train.clip"): "the CLI dispatches `edgeas synth-clip`",
    ("edgeas.cli", "edgeas.train.run"): "the CLI dispatches `edgeas train`",
    ("edgeas.cli", "edgeas.train.evaluate"): "the CLI dispatches `edgeas eval`",
    ("edgeas.cli", "edgeas.train.head_fit"): "the CLI dispatches `edgeas fit-head`",
    ("edgeas.cli", "edgeas.train.conformance"): "the CLI dispatches `edgeas conformance`",
    ("edgeas.cli", "edgeas.train.official"): "the CLI dispatches `edgeas import-official`",
    ("edgeas.cli", "edgeas.export.command"): "the CLI dispatches `edgeas export`",
    ("edgeas.cli", "edgeas.export.engine"): "the CLI dispatches `edgeas build-engine`",
    ("edgeas.cli", "edgeas.calibration.command"): "the CLI dispatches `edgeas calibrate`",
    ("edgeas.cli_stream", "edgeas.runtime.command"): "the CLI dispatches `edgeas stream`",
    ("edgeas.cli", "edgeas.runtime.bench"): "the CLI dispatches `edgeas bench`",
    ("edgeas.cli_triton", "edgeas.runtime.triton_repo"):
        "the CLI dispatches `edgeas export-triton`",
    ("edgeas.threshold_fit", "edgeas.runtime.backends"):
        "`edgeas threshold fit` runs an ONNX model or engine on the runtime's backends",
    ("edgeas.threshold_fit", "edgeas.train.checkpoint"):
        "`edgeas threshold fit` runs and rewrites a .pt checkpoint with the training code",
}
# (edgeas.doctor needs no entry: its probes, edgeas.probes, import the packages themselves.)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    lazy: bool  # inside a function (or a method), not run when the module is imported


def _folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return Path(next(iter(spec.submodule_search_locations)))


def _modules() -> dict[str, Path]:
    """Every module of edgeas and its stage packages, from the files in their folders."""
    found: dict[str, Path] = {}
    for package in ("edgeas", *(f"edgeas.{s}" for s in STAGES)):
        root = _folder(package)
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            if any(not (root / Path(*rel.parts[:i]) / "__init__.py").is_file()
                   for i in range(1, len(rel.parts))):
                continue  # a folder that is not a package (data, scripts)
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _literal_import(node: ast.Call) -> str | None:
    """The module named by require("pkg", ...), importlib.import_module("pkg") or
    __import__("pkg"), when it is a literal."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("require", "import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, is_package, child)
                # `from edgeas import ort` imports the module edgeas.ort, not just edgeas
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                         for a in child.names]
            elif isinstance(child, ast.Call) and (name := _literal_import(child)):
                names = [name]
            out.extend(Import(module, n, child.lineno, lazy) for n in names)
            visit(child, inner)

    visit(tree, False)
    return out


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def stage(module: str) -> str | None:
    """The stage package a module belongs to; "core" for the rest of edgeas; None outside."""
    parts = module.split(".")
    if parts[0] != "edgeas":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else "core"


def test_the_walk_finds_every_stage_and_the_modules_that_matter():
    assert {stage(m) for m in MODULES} == {"core", *STAGES}
    for module in ("edgeas.cli", "edgeas.ort", "edgeas.train.model.unias",
                   "edgeas.export.engine", "edgeas.calibration.gate", "edgeas.runtime.backends"):
        assert module in MODULES, module
    assert any(i.lazy for i in IMPORTS) and any(not i.lazy for i in IMPORTS)


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_imports_only_the_core_and_what_it_builds_on(name):
    allowed = {"core", name, *MAY_IMPORT[name]}
    wrong = [f"{i.importer}:{i.line} imports {i.imported}" for i in IMPORTS
             if stage(i.importer) == name and stage(i.imported) not in (None, *allowed)]
    assert not wrong, wrong


def test_the_core_reaches_a_stage_only_where_listed_and_only_lazily():
    reached = [i for i in IMPORTS if stage(i.importer) == "core"
               and stage(i.imported) not in (None, "core")]
    unlisted = [f"{i.importer}:{i.line} imports {i.imported}" for i in reached
                if (i.importer, i.imported) not in CORE_REACHES]
    assert not unlisted, unlisted
    eager = [f"{i.importer}:{i.line}" for i in reached if not i.lazy]
    assert not eager, f"a stage imported when the core is imported: {eager}"
    stale = set(CORE_REACHES) - {(i.importer, i.imported) for i in reached}
    assert not stale, f"listed but no longer imported (drop them): {sorted(stale)}"


@pytest.mark.parametrize("name", NO_TORCH)
def test_runtime_and_calibration_never_import_torch(name):
    wrong = [f"{i.importer}:{i.line} imports {i.imported}" for i in IMPORTS
             if stage(i.importer) == name and i.imported.split(".")[0] in TORCH]
    assert not wrong, wrong
