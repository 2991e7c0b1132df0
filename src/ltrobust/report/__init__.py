"""Reports, plots and sweeps from stored results (``ltrobust report``, ``ltrobust sweep``).

- :mod:`.collect`: find run folders, eval JSON, metrics, audits and analyses; group seeds into variants
- :mod:`.tables`: the paper-style table, the head / body / tail table, per-class tables
- :mod:`.plots`: per-class bars, trade-off scatter, AE prediction distribution, audit curve, training curves
- :mod:`.page`: Markdown and single-page HTML rendering
- :mod:`.build`: :func:`build_report`
- :mod:`.sweep`: :func:`~.sweep.run_sweep` (grids of runs, locally, in parallel or on Ray)

See ``docs/reports.md``.
"""

from .build import build_report

__all__ = ["build_report"]
