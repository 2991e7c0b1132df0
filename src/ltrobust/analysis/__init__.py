"""The papers' analyses as commands: ``ltrobust analyze KIND RUN_OR_CHECKPOINT... [key=value]``.

Each analysis writes ``<run>/analysis/<kind>.json`` (the numbers) and ``<kind>.png`` (the figure drawn from
those numbers); ``out=DIR`` writes elsewhere. Registered in :data:`ltrobust.registry.ANALYSES`:

===================  ============================================================  =================================
kind                 what                                                          paper
===================  ============================================================  =================================
``feature-norm``     ``||f(x+delta)|| / ||f(x)||`` of attacked vs robust images;   RoBal Fig. 3
                     classifier weight norms vs training counts
``embedding``        t-SNE of clean and adversarial features (or logits)           REAT Fig. 2, 7, 10; TAET Fig. 3
``ae-drift``         distance between consecutive epochs' AEs of the same image   REAT Fig. 3
``attack-budget``    robust accuracy vs PGD steps and vs eps, per run and tail     REAT Fig. 4a, 8
``gaussian-theory``  tail errors of optimal / logistic-regression classifiers      Cho et al. (ICLR 2025), Theorem 1,
                                                                                   Corollary 1, Fig. 2-3
``confusion``        clean and adversarial confusion; where tail AEs land          REAT Fig. 1, 5; SPEC 4
===================  ============================================================  =================================

RoBal: Wu et al., CVPR 2021; REAT: Li et al., arXiv 2023; TAET: Wang et al., CVPR 2025 (docs/methods.md,
"References").

Example::

    from ltrobust.analysis import run_analysis
    paths = run_analysis("confusion", ["runs/NAME"], ["n_per_class=100"])   # {"png": ..., "json": ...}
    replot(paths["json"], "confusion-hires.png", dpi=200)                  # redraw from the stored numbers

Docs: ``docs/analysis.md``.
"""

from . import ae_drift, attack_budget, confusion, embedding, feature_norm, gaussian_theory  # noqa: F401 (register)
from .base import Analysis, CommonOptions, RunContext, replot, run_analysis

__all__ = ["Analysis", "CommonOptions", "RunContext", "replot", "run_analysis"]
