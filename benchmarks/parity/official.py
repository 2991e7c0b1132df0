"""The authors' code, run unchanged on the CPU: a scratch copy of the checkout, imported for a with-block.

Nothing in the checkout is edited and none of its lines is copied into ltrobust. :class:`Checkout` copies
the repository (without ``.git``) to a scratch folder, puts that folder first on ``sys.path`` and, when the
block ends, removes every module imported from it, the stand-ins and the path entry, and deletes the copy.

Three ways to reach their code, from most to least direct:

- :meth:`Checkout.module`: a plain import, for files without side effects at import (loss functions,
  model definitions, dataset classes);
- :meth:`Checkout.definitions`: for scripts whose top level parses the command line and loads data
  (``train_*.py``): the file is parsed with :mod:`ast` and only the chosen top-level statements run (their
  imports, the named ``def`` / ``class`` statements, the assignments that define the named variables),
  compiled from the file itself so tracebacks point at their lines; nothing else of the file runs;
- :meth:`Checkout.statement`: one assignment inside a function that cannot run as a whole (the
  ``optimizer = optim.SGD(...)`` line of ``main()``), executed as written in a namespace the harness gives;
- :meth:`Checkout.args`: their ``argparse`` parser built by its own statements, then ``parse_args(argv)``:
  the defaults of the script (and any flags the README's command passes);
- :meth:`Checkout.cells`: code cells of a Jupyter notebook (TAET's training loops), run unchanged in one
  namespace, the cells chosen by the caller.

:func:`cpu_only` makes ``.cuda()`` / ``.to("cuda")`` / ``torch.cuda.is_available()`` CPU calls for the
duration and restores them after; a third-party module their code imports but that is not installed (mmcv)
gets a declared stand-in (:class:`Checkout` ``stubs``), listed in the report.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .core import ParityError


# ----------------------------------------------------------------------------------------- device
def _cpu_device(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("cuda"):
        return "cpu"
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device("cpu")
    return value


@contextlib.contextmanager
def cpu_only() -> Iterator[None]:
    """Their device calls land on the CPU: ``Tensor.cuda()`` and ``Module.cuda()`` return the object itself,
    ``.to("cuda")`` / ``.to(torch.device("cuda"))`` go to the CPU, ``torch.cuda.is_available()`` is False.
    Everything is restored when the block ends."""
    saved = {(torch.Tensor, "cuda"): torch.Tensor.cuda, (nn.Module, "cuda"): nn.Module.cuda,
             (torch.Tensor, "to"): torch.Tensor.to, (nn.Module, "to"): nn.Module.to,
             (torch.cuda, "is_available"): torch.cuda.is_available}
    tensor_to, module_to = torch.Tensor.to, nn.Module.to

    def t_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        args = tuple(_cpu_device(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return tensor_to(self, *args, **kwargs)

    def m_to(self: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        args = tuple(_cpu_device(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return module_to(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.Tensor.to = t_to  # type: ignore[method-assign]
    nn.Module.to = m_to  # type: ignore[method-assign]
    torch.cuda.is_available = lambda: False  # type: ignore[assignment]
    try:
        yield
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


# ------------------------------------------------------------------------------------------- AST
def _assigned_names(node: ast.AST) -> set[str]:
    """Names a statement binds at its own level (assignments, also inside if / try / with / for)."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and sub is not node:
            continue
        if isinstance(sub, ast.Assign):
            for t in sub.targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(sub, (ast.AnnAssign, ast.AugAssign)) and isinstance(sub.target, ast.Name):
            names.add(sub.target.id)
    return names


def _import_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        return ["." * node.level + (node.module or "")]
    return []


def _is_parser_statement(node: ast.stmt, parser: str) -> bool:
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == parser for t in node.targets)
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        f = node.value.func
        return isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == parser \
            and f.attr != "parse_args"
    return False


class Checkout:
    """The authors' repository at ``path``, importable from a scratch copy while the with-block runs.

    Args:
        path: the checkout (a git clone or an unpacked archive).
        stubs: stand-ins for third-party modules their code imports but that are not installed:
            ``{"mmcv.parallel": {"collate": fn}}``; used only when the real module cannot be imported, and
            listed in :attr:`stand_ins`.

    Example::

        with Checkout("/work/official/AT-BSL") as ck, cpu_only():
            loss_mod = ck.module("at_bsl_loss")
            defs = ck.definitions("train_at_bsl_cifar10.py", ["adjust_learning_rate"], {"args": args})
    """

    def __init__(self, path: str | Path, stubs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir():
            raise ParityError(f"no checkout at {self.path}: clone the authors' repository there, or pass its "
                              "folder with --official PATH.")
        self.stubs = dict(stubs or {})
        self.stand_ins: list[str] = []
        self.root: Path | None = None
        self._saved_path: list[str] = []
        self._stub_names: list[str] = []

    # ------------------------------------------------------------------ provenance
    @property
    def commit(self) -> str:
        """``git rev-parse HEAD`` of the checkout, or ``"unknown"`` for a folder without git."""
        try:
            out = subprocess.run(["git", "-C", str(self.path), "rev-parse", "HEAD"], capture_output=True,
                                 text=True, timeout=30, check=True)
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    @property
    def dirty(self) -> bool:
        """True when ``git status`` shows changes in the checkout (its files differ from the commit)."""
        try:
            out = subprocess.run(["git", "-C", str(self.path), "status", "--porcelain"], capture_output=True,
                                 text=True, timeout=30, check=True)
            return bool(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            return False

    # ------------------------------------------------------------------ with-block
    def __enter__(self) -> "Checkout":
        self.root = Path(tempfile.mkdtemp(prefix="parity-official-"))
        shutil.copytree(self.path, self.root / "code", ignore=shutil.ignore_patterns(".git", "__pycache__"))
        self.root = self.root / "code"
        self._saved_path = list(sys.path)
        sys.path.insert(0, str(self.root))
        self._saved_dont_write = sys.dont_write_bytecode
        sys.dont_write_bytecode = True
        self._limits = _limits()
        for name, attrs in self.stubs.items():
            try:
                importlib.import_module(name)
            except ImportError:
                self._install_stub(name, attrs)
        return self

    def _install_stub(self, name: str, attrs: Mapping[str, Any]) -> None:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in sys.modules:
                mod = types.ModuleType(sub)
                mod.__path__ = []  # a package, so that submodules resolve
                sys.modules[sub] = mod
                self._stub_names.append(sub)
                if i > 1:
                    setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], mod)
        for attr, value in attrs.items():
            setattr(sys.modules[name], attr, value)
            self.stand_ins.append(f"{name}.{attr}")

    def __exit__(self, *exc: Any) -> None:
        assert self.root is not None
        root = str(self.root)
        for name, mod in list(sys.modules.items()):
            file = getattr(mod, "__file__", None) or ""
            if file.startswith(root) or name in self._stub_names:
                del sys.modules[name]
        sys.path[:] = self._saved_path
        sys.dont_write_bytecode = self._saved_dont_write
        _restore_limits(self._limits)
        shutil.rmtree(self.root.parent, ignore_errors=True)
        self.root = None

    # ------------------------------------------------------------------ access
    def file(self, rel: str) -> Path:
        assert self.root is not None, "use the Checkout in a with-block"
        f = self.root / rel
        if not f.is_file():
            raise ParityError(f"{self.path / rel} is missing: the checkout is not the repository this module "
                              f"expects (another commit or layout).")
        return f

    def module(self, name: str) -> types.ModuleType:
        """``import name`` from the checkout (its own import-time side effects run, as in their scripts)."""
        assert self.root is not None, "use the Checkout in a with-block"
        rel = name.replace(".", "/")
        if not (self.root / f"{rel}.py").is_file() and not (self.root / rel).is_dir():
            raise ParityError(f"{self.path} has no module {name} ({rel}.py): the checkout is not the repository "
                              "this module expects (another commit or layout).")
        return importlib.import_module(name)

    def _tree(self, rel: str) -> tuple[Path, ast.Module]:
        f = self.file(rel)
        return f, ast.parse(f.read_text(), filename=str(f))

    def definitions(self, rel: str, names: Sequence[str], namespace: Mapping[str, Any] | None = None,
                    skip_imports: Sequence[str] = ()) -> dict[str, Any]:
        """Run only the chosen top-level statements of the file ``rel`` and return its namespace.

        The statements kept, in file order: every ``import`` (except modules starting with an entry of
        ``skip_imports``), each ``def`` / ``class`` named in ``names``, and each other statement that binds
        a name in ``names`` (an assignment, or an ``if`` whose branches assign it). ``namespace`` supplies
        the globals the kept statements read but the file sets elsewhere (``args`` from its parser,
        ``samples_per_cls`` from its data loading); it is applied after the file's imports, so it can also
        replace an imported name (an observing wrapper of their loss function). Raises :class:`ParityError`
        when a name is not defined by the file.
        """
        f, tree = self._tree(rel)
        wanted, found, keep = set(names), set(), []
        for node in tree.body:
            mods = _import_modules(node)
            if mods:
                if not any(m.lstrip(".").startswith(tuple(skip_imports)) for m in mods if skip_imports):
                    keep.append(node)
                continue
            bound = {node.name} if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                else _assigned_names(node)
            if bound & wanted:
                keep.append(node)
                found |= bound & wanted
        missing = wanted - found
        if missing:
            raise ParityError(f"{self.path / rel} defines no {', '.join(sorted(missing))} at its top level: the "
                              "checkout is not the commit this module was written for.")
        ns: dict[str, Any] = {"__name__": f"official_{f.stem}", "__file__": str(f), "__builtins__": __builtins__}
        imports = [n for n in keep if _import_modules(n)]
        rest = [n for n in keep if not _import_modules(n)]
        # their imports first, then the harness's names (so a provided pgd_loss is not re-imported over), then
        # the chosen definitions in file order
        exec(compile(ast.Module(body=imports, type_ignores=[]), str(f), "exec"), ns)  # noqa: S102 (their code)
        ns.update(namespace or {})
        exec(compile(ast.Module(body=rest, type_ignores=[]), str(f), "exec"), ns)  # noqa: S102 (their code)
        return ns

    def statement(self, rel: str, target: str, namespace: Mapping[str, Any], function: str | None = None) -> Any:
        """Run the first assignment ``target = ...`` of ``rel`` (inside ``function`` when given; else anywhere,
        e.g. under ``if __name__ == "__main__":``) in ``namespace`` and return the value it assigns: the
        optimiser line of ``main()``, the AutoAttack line of an evaluation script."""
        f, tree = self._tree(rel)
        scope: ast.AST = tree
        if function is not None:
            funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
            if not funcs:
                raise ParityError(f"{self.path / rel} has no function {function}(): another commit or layout.")
            scope = funcs[0]
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == target for t in node.targets):
                ns = dict(namespace)
                ns.setdefault("__builtins__", __builtins__)
                exec(compile(ast.Module(body=[node], type_ignores=[]), str(f), "exec"), ns)  # noqa: S102
                return ns[target]
        where = f"{function}() in " if function else ""
        raise ParityError(f"{where}{self.path / rel} assigns no {target}: another commit or layout.")

    def source_facts(self, rel: str, function: str | None = None) -> ast.AST:
        """The parsed file (or one function of it), for checks that read a fact off their code (a constant,
        which loader a call receives) instead of running it."""
        _, tree = self._tree(rel)
        if function is None:
            return tree
        for n in tree.body:
            if isinstance(n, ast.FunctionDef) and n.name == function:
                return n
        raise ParityError(f"{self.path / rel} has no function {function}(): another commit or layout.")

    def cell_sources(self, rel: str) -> list[str]:
        """The code cells of the Jupyter notebook ``rel``, in order, as their text (markdown cells left out)."""
        import json

        nb = json.loads(self.file(rel).read_text())
        return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                for c in nb.get("cells", []) if c.get("cell_type") == "code"]

    def cells(self, rel: str, indices: Sequence[int], namespace: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run the code cells ``indices`` (0-based among the code cells) of the notebook ``rel``, unchanged and in
        the given order, in one namespace (``namespace`` first: the globals a cell reads that another cell,
        not run, would set); returns the namespace. Each cell is compiled under the name ``<file>#cell<i>`` so
        that tracebacks point at it. Cells with shell or magic lines (``!``, ``%``) are refused."""
        f, sources = self.file(rel), self.cell_sources(rel)
        ns: dict[str, Any] = {"__name__": f"official_{f.stem}", "__builtins__": __builtins__}
        ns.update(namespace or {})
        for i in indices:
            if i >= len(sources):
                raise ParityError(f"{self.path / rel} has {len(sources)} code cells, no cell {i}: another commit.")
            if any(line.lstrip().startswith(("!", "%")) for line in sources[i].splitlines()):
                raise ParityError(f"{self.path / rel} code cell {i} has shell or magic lines: not run.")
            exec(compile(sources[i], f"{f}#cell{i}", "exec"), ns)  # noqa: S102 (their code)
        return ns

    def args(self, rel: str, argv: Sequence[str] = (), parser: str = "parser") -> Any:
        """Their command-line arguments: the file's own ``parser = argparse.ArgumentParser(...)`` and
        ``parser.add_argument(...)`` statements (nothing else of the file), then ``parse_args(argv)``."""
        f, tree = self._tree(rel)
        keep = [n for n in tree.body if _import_modules(n) and any(m == "argparse" for m in _import_modules(n))]
        keep += [n for n in tree.body if _is_parser_statement(n, parser)]
        if len(keep) < 2:
            raise ParityError(f"{self.path / rel} builds no argparse parser named {parser!r} at its top level.")
        ns: dict[str, Any] = {"__name__": f"official_{f.stem}", "__builtins__": __builtins__}
        exec(compile(ast.Module(body=keep, type_ignores=[]), str(f), "exec"), ns)  # noqa: S102
        return ns[parser].parse_args(list(argv))


def _limits() -> dict[int, tuple[int, int]]:
    """Process resource limits their imports may change (AT-BSL's loader raises the open-file limit)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return {}
    return {resource.RLIMIT_NOFILE: resource.getrlimit(resource.RLIMIT_NOFILE)}


def _restore_limits(saved: Mapping[int, tuple[int, int]]) -> None:
    if saved:
        import resource

        for which, value in saved.items():
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(which, value)


@contextlib.contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``owner.name = value`` for the block (a stand-in or an observer), then restore it."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


class Recorder(nn.Module):
    """Wraps a model and records every forward call's input and output (detached copies), so that what
    their code computes inside a function that returns only a count (an error total, a loss) can be read
    back: ``calls`` is a list of ``(training, input, output)``."""

    def __init__(self, model: nn.Module, keep: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.keep = keep  #: keep only the last ``keep`` calls (attacks with thousands of queries)
        self.calls: list[tuple[bool, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.model(x, *args, **kwargs)
        logits = out[-1] if isinstance(out, (tuple, list)) else out
        self.calls.append((self.model.training, x.detach().clone(), logits.detach().clone()))
        if self.keep is not None and len(self.calls) > self.keep:
            del self.calls[0]
        return out


def quiet() -> contextlib.AbstractContextManager:
    """Silence their ``print`` calls (progress lines) for the block."""
    import io

    return contextlib.redirect_stdout(io.StringIO())


def call_with_seed(fn: Callable[..., Any], seeds: Iterator[int]) -> Callable[..., Any]:
    """``fn`` with ``torch.manual_seed(next(seeds))`` before each call: the harness fixes the global RNG
    stream their function draws its random start from (the same seed is given to ltrobust's step)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        torch.manual_seed(next(seeds))
        return fn(*args, **kwargs)

    return wrapped
