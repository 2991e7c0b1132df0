"""ltrobust: adversarial robustness under long-tailed data.

Build long-tailed data sets, adversarially train with any long-tailed method (or combine any
long-tailed loss with any AT method), evaluate honestly (AutoAttack, adaptive attacks, per-class and
tail metrics, gradient-masking audit) and produce the paper-style tables and plots.
"""

__version__ = "0.1.0"
