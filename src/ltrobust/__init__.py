"""ltrobust: adversarial robustness under long-tailed data.

Build long-tailed data sets, adversarially train with any long-tailed method (or combine any
long-tailed loss with any AT method), evaluate honestly (AutoAttack, adaptive attacks, per-class and
tail metrics, gradient-masking audit) and produce the paper-style tables and plots.

The public Python API (imported on first use, so ``import ltrobust`` stays light):

- :func:`evaluate`: the attack suite of ``ltrobust eval`` on any model and any data; returns an
  :class:`EvalResult` (printed, the short table of the command line).
- :class:`EvalResult`: accuracy, balanced accuracy, worst class and tail per attack; ``.to_pandas()``,
  ``.to_csv()``, ``.save()``.
- :func:`load_run`: a run folder or checkpoint of ``ltrobust train`` back as its deployed model.
- :func:`build_report`: the tables, figures and HTML page of ``ltrobust report``.

Example::

    import ltrobust
    res = ltrobust.evaluate(model, (x_test, y_test), attacks="clean,pgd20,aa", name="my-cnn")
    print(res)
"""

__version__ = "0.1.0"

#: name -> (module, attribute) of the public API, imported on first access
_LAZY = {
    "evaluate": ("ltrobust.evaluation.api", "evaluate"),
    "EvalResult": ("ltrobust.evaluation.api", "EvalResult"),
    "load_run": ("ltrobust.evaluation.runs", "load_run"),
    "build_report": ("ltrobust.report", "build_report"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """The names of :data:`_LAZY` (``ltrobust.evaluate``, ...), imported on first use so that
    ``import ltrobust`` stays light."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later accesses skip __getattr__
        return value
    raise AttributeError(f"module 'ltrobust' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's own names plus the lazily imported public API (tab completion, ``dir(ltrobust)``)."""
    return sorted(set(globals()) | set(_LAZY))
