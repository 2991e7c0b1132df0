"""docs/ARCHITECTURE.md shows only signatures the code has.

Each ```python block of the document starts with ``# module: ltrobust.x.y``; every ``def`` in it (at top
level, or inside a ``class``) is compared with ``inspect.signature`` of that object: the same parameter
names in the same order (``*args`` / ``**kwargs`` included), and the same default wherever the document
shows one.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"
BLOCK = re.compile(r"```python\n# module: (?P<module>[\w.]+)\n(?P<code>.*?)```", re.S)


def documented() -> list[tuple[str, str, ast.FunctionDef]]:
    """``(module, qualified name, def node)`` for every def of every python block."""
    out = []
    for m in BLOCK.finditer(DOC.read_text()):
        tree = ast.parse(m["code"])
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                out.append((m["module"], node.name, node))
            elif isinstance(node, ast.ClassDef):
                out += [(m["module"], f"{node.name}.{f.name}", f) for f in node.body if isinstance(f, ast.FunctionDef)]
    return out


def doc_params(node: ast.FunctionDef) -> list[tuple[str, ast.expr | None]]:
    a = node.args
    plain = a.posonlyargs + a.args
    defaults = [None] * (len(plain) - len(a.defaults)) + list(a.defaults)
    params = [(p.arg, d) for p, d in zip(plain, defaults)]
    if a.vararg:
        params.append(("*" + a.vararg.arg, None))
    params += [(p.arg, d) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        params.append(("**" + a.kwarg.arg, None))
    return params


def code_params(obj) -> list[tuple[str, object]]:
    out = []
    for p in inspect.signature(obj).parameters.values():
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        out.append((prefix + p.name, p.default))
    return out


ENTRIES = documented()


def test_the_document_shows_signatures_of_every_layer():
    modules = {m.split(".")[1] for m, _, _ in ENTRIES}
    assert {"models", "data", "attacks", "losses", "methods", "training", "evaluation", "experiments",
            "report"} <= modules
    assert ("ltrobust.methods.base", "Method.__init__") in {(m, q) for m, q, _ in ENTRIES}


@pytest.mark.parametrize("module, qualname, node", ENTRIES, ids=[f"{m}.{q}" for m, q, _ in ENTRIES])
def test_documented_signature_matches_the_code(module, qualname, node):
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = inspect.getattr_static(obj, part) if inspect.isclass(obj) else getattr(obj, part)
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    doc, code = doc_params(node), code_params(obj)
    assert [n for n, _ in doc] == [n for n, _ in code], f"{module}.{qualname}"
    for (name, d), (_, actual) in zip(doc, code):
        if d is not None:
            shown = eval(compile(ast.Expression(d), "<doc>", "eval"), {"torch": torch})  # noqa: S307 (our own doc)
            assert shown == actual, f"{module}.{qualname}: {name}={ast.unparse(d)} in the doc, {actual!r} in the code"
