"""Reports and plots from stored results (``ltrobust report``): this package reads JSON, never trains or attacks.

- :mod:`.collect`: find run folders, eval JSON, metrics, audits and analyses; group seeds into variants
- :mod:`.tables`: the paper-style table, the head / body / tail table, per-class tables
- :mod:`.plots`: per-class bars, trade-off scatter, AE prediction distribution, audit curve, training curves
- :mod:`.page`: Markdown and single-page HTML rendering
- :mod:`.build`: :func:`build_report`

See ``docs/reports.md``.
"""

from .build import OPTIONS, build_report

__all__ = ["OPTIONS", "build_report"]
