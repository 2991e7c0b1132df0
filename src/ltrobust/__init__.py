"""ltrobust: adversarial robustness under long-tailed data.

Build long-tailed data sets, adversarially train with any long-tailed method (or combine any
long-tailed loss with any AT method), evaluate honestly (AutoAttack, adaptive attacks, per-class and
tail metrics, gradient-masking audit) and produce the paper-style tables and plots.
"""

__version__ = "0.1.0"

__all__ = ["evaluate"]


def __getattr__(name: str):
    """``ltrobust.evaluate`` (:func:`ltrobust.evaluation.api.evaluate`), imported on first use so that
    ``import ltrobust`` stays light."""
    if name == "evaluate":
        from .evaluation.api import evaluate

        return evaluate
    raise AttributeError(f"module 'ltrobust' has no attribute {name!r}")
