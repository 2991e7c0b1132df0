"""The package layering, read from the source: a lower layer never imports a higher one.

Pipeline: data -> models -> attacks / losses -> methods -> training / evaluation -> analysis / experiments
-> report -> cli, over the base modules (errors, registry, config, io, device, run_folder) that every layer may use.
Every ``import`` and ``from ... import`` of every module is read with :mod:`ast` (function-local imports
included, since a lazy import is still a dependency), resolved to the ltrobust package it names, and checked
against :data:`FORBIDDEN`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ltrobust"

BASE = {"errors", "registry", "config", "io", "device", "run_folder"}
UPPER = {"methods", "training", "evaluation", "analysis", "experiments", "report", "cli"}

#: package -> packages it must never import (the rules of the architecture issue, plus the ranks between them)
FORBIDDEN: dict[str, set[str]] = {
    **{low: set(UPPER) for low in ("data", "models", "losses", "attacks")},
    "methods": {"training", "evaluation", "analysis", "experiments", "report", "cli"},
    "training": {"analysis", "experiments", "report", "cli"},
    "evaluation": {"training", "analysis", "experiments", "report", "cli"},
    "analysis": {"experiments", "report", "cli"},
    "experiments": {"analysis", "report", "cli"},
    "report": {"training", "methods", "attacks", "experiments", "analysis", "cli"},
    **{base: {"data", "models", "losses", "attacks"} | UPPER for base in BASE},
}
# the lowest layers also stay apart: data knows no model, models know no attack or loss
FORBIDDEN["data"] |= {"models", "attacks", "losses"}
FORBIDDEN["models"] |= {"attacks", "losses"}


def package_of(module: str) -> str | None:
    """``ltrobust.training.trainer`` -> ``training``; ``ltrobust.io`` -> ``io``; other top-level names -> None."""
    parts = module.split(".")
    if parts[0] != "ltrobust" or len(parts) < 2:
        return None
    return parts[1]


def module_name(path: Path, root: Path = SRC) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, absolute module)`` for every ltrobust import in ``source`` (relative imports resolved)."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or node.level and not node.module:  # `from . import x` names submodules
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return [(n, m) for n, m in out if m.startswith("ltrobust")]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that break :data:`FORBIDDEN`, as readable lines."""
    own = package_of(module)
    bad = []
    for line, target in imported_modules(source, module, is_package):
        other = package_of(target)
        if own is None or other is None or other == own:
            continue
        if other in FORBIDDEN.get(own, set()):
            bad.append(f"{module}:{line} imports {target} ({own} must not import {other})")
    return bad


def test_no_module_imports_a_higher_layer():
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 50  # the whole package was read
    bad = []
    for path in modules:
        bad += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_every_package_has_a_rule():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= set(FORBIDDEN) | {"cli"}, sorted(packages | modules - set(FORBIDDEN))


@pytest.mark.parametrize("module, source, expected", [
    ("ltrobust.attacks.pgd", "from ..methods.base import Method\n", "attacks must not import methods"),
    ("ltrobust.methods.self_distill", "def f():\n    from ..training.trainer import Trainer\n",
     "methods must not import training"),
    ("ltrobust.report.build", "import ltrobust.training.trainer\n", "report must not import training"),
    ("ltrobust.report.collect", "from ltrobust.experiments import sweep\n", "report must not import experiments"),
    ("ltrobust.config", "from .attacks.suite import parse_attack\n", "config must not import attacks"),
    ("ltrobust.evaluation.runs", "from .. import cli\n", "evaluation must not import cli"),
    ("ltrobust.data", "from ..models import build_model\n", "data must not import models"),
])
def test_the_checker_catches_a_forbidden_import(module, source, expected):
    is_package = module == "ltrobust.data"
    assert any(expected in v for v in violations(source, module, is_package)), violations(source, module, is_package)


@pytest.mark.parametrize("module, source", [
    ("ltrobust.methods.robal", "from ..losses import robal_loss\nfrom ..models.heads import CosineHead\n"),
    ("ltrobust.training.trainer", "from ..evaluation.evaluator import quick_robustness\n"),
    ("ltrobust.experiments.recipe", "from ..training.trainer import Trainer\nfrom ..evaluation.runs import load_run\n"),
    ("ltrobust.cli", "from .report import build_report\nfrom .experiments import train\n"),
])
def test_the_checker_allows_downward_imports(module, source):
    assert violations(source, module) == []


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module -> the ltrobust modules it imports (function-local imports included), each resolved to the
    longest module name that exists (``from .splits import X`` -> ``ltrobust.data.splits``)."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for mod, path in paths.items():
        targets = set()
        for _, target in imported_modules(path.read_text(), mod, path.name == "__init__.py"):
            parts = target.split(".")
            while parts and ".".join(parts) not in paths:
                parts.pop()
            if parts and ".".join(parts) != mod:
                targets.add(".".join(parts))
        graph[mod] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_modules_import_each_other_in_one_direction():
    """No import circle between modules (issue 29 item 22: data/loader <-> splits <-> stream): inside a package
    too, a module reads only modules below it (data: augment <- stream <- splits <- loader <- lt)."""
    cycles = import_cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_catches_a_circle():
    graph = {"a.loader": {"a.splits"}, "a.splits": {"a.stream"}, "a.stream": {"a.loader"}, "a.lt": {"a.loader"}}
    assert import_cycles(graph) == [["a.loader", "a.splits", "a.stream"]]
    assert import_cycles({"a.x": {"a.y"}, "a.y": set()}) == []
