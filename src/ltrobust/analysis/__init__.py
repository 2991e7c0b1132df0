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
``zero-grad``        share of input pixels with a zero gradient per PGD step,      RoBal Fig. 2
                     per class, under logit re-scaling
``sensitivity``      clean / robust accuracy against one swept config key,        Cho et al. Fig. 6-7; TAET Fig. 7
                     overall and tail (stored results only)
``cost``             time per epoch and peak memory per method (stored records)   TAET Fig. 6a; REAT Table 14
``epoch-choice``     clean / robust accuracy per epoch, and what each checkpoint  REAT Sec. 5 (its checkpoint
                     rule would report (stored per-epoch evaluations)             chosen on the test set)
===================  ============================================================  =================================

RoBal: Wu et al., CVPR 2021; REAT: Li et al., arXiv 2023; TAET: Wang et al., CVPR 2025 (docs/methods.md,
"References").

Example::

    from ltrobust.analysis import run_analysis
    paths = run_analysis("confusion", ["runs/NAME"], ["n_per_class=100"])   # {"png": ..., "json": ...}
    replot(paths["json"], "confusion-hires.png", dpi=200)                  # redraw from the stored numbers

Docs: ``docs/analysis.md``.
"""

from . import (ae_drift, attack_budget, confusion, cost, embedding, epoch_choice, feature_norm,  # noqa: F401
               gaussian_theory, sensitivity, zero_grad)  # (register)
from .base import Analysis, CommonOptions, RunContext, replot, run_analysis

__all__ = ["Analysis", "CommonOptions", "RunContext", "replot", "run_analysis"]
