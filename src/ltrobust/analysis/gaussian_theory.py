r"""``gaussian-theory``: the binary Gaussian-mixture analysis of adversarial training on long-tailed data of
Cho, Lee and Kim ("Long-tailed Adversarial Training with Self-Distillation", ICLR 2025, arXiv:2503.06461).

Setting (Sec. 3.1-3.3 and Appendix A of that paper). A binary task with imbalance ratio ``r >= 1`` (Eq. 2)::

    y = +1 (head) with probability r / (r + 1),   y = -1 (tail) with probability 1 / (r + 1),
    x_1, ..., x_d  i.i.d.  N(eta * y, 1)                                   (Eq. 2; the paper writes n for d)

linear classifiers ``f(x) = sign(w . x + b)`` (Eq. 3), the standard error ``Pr(f(x) != y)`` and the robust
error ``Pr(exists delta, ||delta||_inf <= eps : f(x + delta) != y)`` (Definition 1; it includes the clean
errors, delta = 0). By symmetry the optimal weights are equal (Lemmas 1-2); with ``w = 1/sqrt(d) * 1``
(``||w||_2 = 1``) the optimal biases are ``b*_nat = ln r / (2 sqrt(d) eta)`` (Eq. 11, minimising the standard
error) and ``b*_rob = ln r / (2 sqrt(d) (eta - eps))`` (Eq. 16, minimising the robust error). Theorem 1
gives the **tail-class** (y = -1) errors, for ``0 < eps < eta``, with ``Phi`` the standard normal CDF::

    R_nat^{-1}(f*_nat) = Phi(-sqrt(d) eta           + ln r / (2 sqrt(d) eta))             (Eq. 4, Eq. 12)
    R_rob^{-1}(f*_nat) = Phi(-sqrt(d) (eta - eps)   + ln r / (2 sqrt(d) eta))             (Eq. 4, Eq. 13)
    R_nat^{-1}(f*_rob) = Phi(-sqrt(d) eta           + ln r / (2 sqrt(d) (eta - eps)))     (Eq. 5, Eq. 17)
    R_rob^{-1}(f*_rob) = Phi(-sqrt(d) (eta - eps)   + ln r / (2 sqrt(d) (eta - eps)))     (Eq. 5, Eq. 18)

All four rise with r; Corollary 1 (Eq. 6): ``R_rob^{-1}(f*_rob) > R_rob^{-1}(f*_nat)`` for every r > 1 (equal
at r = 1): adversarial training makes the tail *less* robust than natural training.

Empirical side (Cho et al., ICLR 2025, Fig. 2-3: eta = 1, d = 2, eps = 0.5, IR 1, 2, 5): on ``n_train`` points sampled
from Eq. 2, unregularised logistic regression (scikit-learn) is trained

- naturally: minimise ``mean log(1 + exp(-y (w . x + b)))``;
- adversarially: minimise ``mean log(1 + exp(-(y (w . x + b) - eps ||w||_1)))``, the exact inner maximum
  of the logistic loss of a linear model over the l_inf ball (the worst perturbation is
  ``delta = -eps * y * sign(w)``, shifting the margin by ``eps ||w||_*``, ``||.||_* = ||.||_1`` the dual
  norm). It is solved by refitting scikit-learn's logistic regression on ``x - eps * y * sign(w)`` until
  ``sign(w)`` stops changing; at that fixed point ``w`` minimises the adversarial loss exactly (the
  refit objective lower-bounds it everywhere and touches it there).

The tail errors of each learned ``(w, b)`` are population errors, exact for the Gaussian tail class:
``w . x ~ N(-eta sum(w), ||w||_2^2)``, so natural ``Phi((b - eta sum(w)) / ||w||_2)`` and robust
``Phi((b - eta sum(w) + eps ||w||_1) / ||w||_2)``; for ``w = 1/sqrt(d) * 1`` and ``b = b*`` these are
Theorem 1. Results are averaged over ``repeats`` samples. Errors are fractions in [0, 1] in the JSON.

Example::

    ltrobust analyze gaussian-theory out=figures eta=1 d=2 eps=0.5 ir=1,2,5,10,20,50,100
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..registry import ANALYSES
from .base import Analysis, CommonOptions, RunContext, new_figure

log = logging.getLogger(__name__)

ERRORS = ("natural_error", "robust_error")


@dataclass(frozen=True)
class GaussianTheoryOptions(CommonOptions):
    eta: float = 1.0  #: class mean magnitude: x_k ~ N(eta * y, 1)
    d: int = 2  #: input dimension (Cho et al.'s (ICLR 2025) n)
    eps: float = 0.5  #: l_inf radius, 0 < eps < eta
    ir: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)  #: imbalance ratios r = n_head / n_tail
    n_train: int = 10000  #: points sampled per logistic-regression fit
    repeats: int = 5  #: independent samples per IR (mean and std reported)
    #: IRs of the decision-boundary panels (Cho et al., ICLR 2025, Fig. 2; d = 2)
    boundary_ir: tuple[float, ...] = (1.0, 2.0, 5.0)


# ------------------------------------------------------------------------------------ closed form
def std_normal_cdf(z: float) -> float:
    """Phi(z), the standard normal CDF."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def optimal_bias(r: float, d: int, eta: float, eps: float = 0.0) -> float:
    """``b* = ln r / (2 sqrt(d) (eta - eps))``: Eq. 11 (eps = 0, natural) and Eq. 16 (robust)."""
    return math.log(r) / (2.0 * math.sqrt(d) * (eta - eps))


def theorem1(r: float, d: int, eta: float, eps: float) -> dict[str, float]:
    """Tail-class errors of the optimal natural and robust classifiers, Cho et al., ICLR 2025, Theorem 1 (Eq. 4-5).

    Returns ``{"natural_error_f_nat", "robust_error_f_nat", "natural_error_f_rob", "robust_error_f_rob"}``
    (probabilities). Requires ``r >= 1`` and ``0 < eps < eta``.
    """
    _check_setting(r, d, eta, eps)
    sd = math.sqrt(d)
    b_nat, b_rob = optimal_bias(r, d, eta), optimal_bias(r, d, eta, eps)
    return {
        "natural_error_f_nat": std_normal_cdf(-sd * eta + b_nat),  # Eq. 4 left (Eq. 12)
        "robust_error_f_nat": std_normal_cdf(-sd * (eta - eps) + b_nat),  # Eq. 4 right (Eq. 13)
        "natural_error_f_rob": std_normal_cdf(-sd * eta + b_rob),  # Eq. 5 left (Eq. 17)
        "robust_error_f_rob": std_normal_cdf(-sd * (eta - eps) + b_rob),  # Eq. 5 right (Eq. 18)
    }


def linear_tail_errors(w: np.ndarray, b: float, eta: float, eps: float) -> dict[str, float]:
    """Exact tail-class (y = -1) natural and l_inf-robust errors of ``sign(w . x + b)`` under Eq. 2."""
    w = np.asarray(w, dtype=np.float64)
    scale = float(np.linalg.norm(w))
    if scale == 0.0:  # a constant classifier: every tail point is wrong iff b > 0 (ties count as wrong)
        wrong = float(b >= 0)
        return {"natural_error": wrong, "robust_error": wrong}
    mean = b - eta * float(w.sum())  # w . x + b over the tail class is N(mean, scale^2)
    return {"natural_error": std_normal_cdf(mean / scale),
            "robust_error": std_normal_cdf((mean + eps * float(np.abs(w).sum())) / scale)}


def _check_setting(r: float, d: int, eta: float, eps: float) -> None:
    if r < 1:
        raise ConfigError(f"ir={r:g}: the imbalance ratio n_head / n_tail must be >= 1.")
    if d < 1:
        raise ConfigError(f"d={d}: the dimension must be >= 1.")
    if not 0 < eps < eta:
        raise ConfigError(f"eps={eps:g}, eta={eta:g}: Theorem 1 holds for 0 < eps < eta; e.g. eta=1 eps=0.5.")


# ---------------------------------------------------------------------------------- sampled data
def sample_mixture(n: int, r: float, d: int, eta: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of Eq. 2: labels +1 w.p. r/(r+1), -1 otherwise; x ~ N(eta * y, I_d). Both classes kept."""
    y = np.where(rng.random(n) < r / (r + 1.0), 1, -1)
    y[:2] = (1, -1)  # a fit needs both classes, even at a tiny n or a huge r
    x = eta * y[:, None] + rng.standard_normal((n, d))
    return x, y


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Unregularised logistic regression (scikit-learn, lbfgs): ``(w, b)``, positive side = class +1."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=np.inf, max_iter=2000, tol=1e-8).fit(x, y)
    sign = 1.0 if clf.classes_[1] == 1 else -1.0
    return sign * clf.coef_[0].astype(np.float64), sign * float(clf.intercept_[0])


def fit_adversarial_logistic(x: np.ndarray, y: np.ndarray, eps: float,
                             max_rounds: int = 50) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Adversarial logistic regression under the l_inf ball of radius ``eps`` (exact inner maximum).

    Minimises ``mean log(1 + exp(-(y (w . x + b) - eps ||w||_1)))`` by refitting logistic regression on
    the worst-case points ``x - eps * y * sign(w)`` until ``sign(w)`` is stable (see the module docstring).
    Returns ``(w, b, {"rounds", "converged"})``.
    """
    w, b = fit_logistic(x, y)
    for rounds in range(1, max_rounds + 1):
        s = np.sign(w)
        w, b = fit_logistic(x - eps * y[:, None] * s[None, :], y)
        if np.array_equal(np.sign(w), s):
            return w, b, {"rounds": rounds, "converged": True}
    log.warning("adversarial logistic regression: sign(w) still changing after %d rounds", max_rounds)
    return w, b, {"rounds": max_rounds, "converged": False}


def adversarial_logistic_loss(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray, eps: float) -> float:
    """``mean log(1 + exp(-(y (w . x + b) - eps ||w||_1)))``, the objective adversarial training minimises."""
    margin = y * (x @ w + b) - eps * np.abs(w).sum()
    return float(np.mean(np.logaddexp(0.0, -margin)))


# ------------------------------------------------------------------------------------- analysis
@ANALYSES.register("gaussian-theory")
class GaussianTheory(Analysis):
    """Theorem 1 and Corollary 1 of Cho et al. (ICLR 2025) on the binary Gaussian mixture, with logistic regressions
    (their Fig. 2-3)."""

    name = "gaussian-theory"
    Options = GaussianTheoryOptions
    runs = "none"

    def compute(self, runs: Sequence[RunContext], opts: GaussianTheoryOptions) -> dict[str, Any]:
        irs = sorted(set(float(r) for r in opts.ir))
        for r in irs + list(opts.boundary_ir):
            _check_setting(r, opts.d, opts.eta, opts.eps)
        if opts.n_train < 10 or opts.repeats < 1:
            raise ConfigError("n_train must be >= 10 and repeats >= 1.")
        closed = {k: [theorem1(r, opts.d, opts.eta, opts.eps)[k] for r in irs] for k in _closed_keys()}
        grid = sorted(set(np.geomspace(1.0, max(irs), 60).tolist()) | set(irs)) if max(irs) > 1 else [1.0]
        curve = {k: [theorem1(r, opts.d, opts.eta, opts.eps)[k] for r in grid] for k in _closed_keys()}
        rng = np.random.default_rng(opts.seed)
        fits: dict[float, list[dict[str, Any]]] = {}
        boundary = []
        for r in sorted(set(irs) | set(float(v) for v in opts.boundary_ir)):
            fits[r] = []
            for rep in range(opts.repeats):
                x, y = sample_mixture(opts.n_train, r, opts.d, opts.eta, rng)
                w_nat, b_nat = fit_logistic(x, y)
                w_adv, b_adv, info = fit_adversarial_logistic(x, y, opts.eps)
                fits[r].append({"w_nat": w_nat, "b_nat": b_nat, "w_adv": w_adv, "b_adv": b_adv, **info,
                                "n_tail": int((y == -1).sum())})
                if rep == 0 and r in opts.boundary_ir and opts.d == 2:
                    keep = rng.permutation(len(y))[:150]  # enough to see the mixture, keeps the PNG small
                    boundary.append({"ir": r, "x": x[keep].tolist(), "y": y[keep].tolist(),
                                     "w_nat": w_nat.tolist(), "b_nat": b_nat, "w_adv": w_adv.tolist(), "b_adv": b_adv,
                                     "b_opt_nat": optimal_bias(r, opts.d, opts.eta),
                                     "b_opt_rob": optimal_bias(r, opts.d, opts.eta, opts.eps)})
        lr = {f"{e}_lr_{kind}": {"mean": [], "std": []} for e in ERRORS for kind in ("nat", "adv")}
        for r in irs:
            for kind in ("nat", "adv"):
                errs = [linear_tail_errors(f[f"w_{kind}"], f[f"b_{kind}"], opts.eta, opts.eps) for f in fits[r]]
                for e in ERRORS:
                    vals = np.array([v[e] for v in errs])
                    lr[f"{e}_lr_{kind}"]["mean"].append(float(vals.mean()))
                    lr[f"{e}_lr_{kind}"]["std"].append(float(vals.std()))
        cor_closed = [a > b for r, a, b in zip(irs, closed["robust_error_f_rob"], closed["robust_error_f_nat"]) if r > 1]
        cor_lr = [a > b for r, a, b in zip(irs, lr["robust_error_lr_adv"]["mean"], lr["robust_error_lr_nat"]["mean"])
                  if r > 1]
        return {
            "setting": {"eta": opts.eta, "d": opts.d, "eps": opts.eps, "norm": "linf", "n_train": opts.n_train,
                        "repeats": opts.repeats},
            "ir": irs,
            "optimal_bias": {"nat": [optimal_bias(r, opts.d, opts.eta) for r in irs],
                             "rob": [optimal_bias(r, opts.d, opts.eta, opts.eps) for r in irs]},
            "closed_form": closed,
            "closed_form_curve": {"ir": grid, **curve},
            "logistic_regression": lr,
            "logistic_regression_fits": {str(r): [{k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                                   for k, v in f.items()} for f in fits[r]] for r in irs},
            "corollary1": {"closed_form_holds": all(cor_closed), "logistic_regression_holds": cor_lr,
                           "ir_gt_1": [r for r in irs if r > 1]},
            "boundaries": boundary,
        }

    def plot(self, result: dict[str, Any], opts: GaussianTheoryOptions):
        bounds = result["boundaries"]
        fig = new_figure(9.0, 6.4 if bounds else 3.4)
        if bounds:
            top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.0])
            self._plot_boundaries(top, bounds)
        else:
            bottom = fig
        ax_t, ax_l = bottom.subplots(1, 2, sharey=True)
        st = result["setting"]
        cv = result["closed_form_curve"]
        styles = {"natural_error_f_nat": ("tab:blue", "-", "natural err., natural clf. (Eq. 4)"),
                  "robust_error_f_nat": ("tab:blue", "--", "robust err., natural clf. (Eq. 4)"),
                  "natural_error_f_rob": ("tab:red", "-", "natural err., robust clf. (Eq. 5)"),
                  "robust_error_f_rob": ("tab:red", "--", "robust err., robust clf. (Eq. 5)")}
        for key, (c, ls, label) in styles.items():
            ax_t.plot(cv["ir"], 100 * np.asarray(cv[key]), color=c, ls=ls, label=label)
        ax_t.set_title(f"Theorem 1, optimal classifiers (eta {st['eta']:g}, d {st['d']}, eps {st['eps']:g})",
                       fontsize=9)
        ax_t.set_ylabel("tail-class error (%)")
        lr = result["logistic_regression"]
        irs = result["ir"]
        for key, c, ls, label in (("natural_error_lr_nat", "tab:blue", "-", "natural err., natural LR"),
                                  ("robust_error_lr_nat", "tab:blue", "--", "robust err., natural LR"),
                                  ("natural_error_lr_adv", "tab:red", "-", "natural err., adversarial LR"),
                                  ("robust_error_lr_adv", "tab:red", "--", "robust err., adversarial LR")):
            m, s = 100 * np.asarray(lr[key]["mean"]), 100 * np.asarray(lr[key]["std"])
            ax_l.errorbar(irs, m, yerr=s, color=c, ls=ls, marker="o", ms=3, capsize=2, label=label)
        ax_l.set_title(f"Logistic regression, {st['n_train']} samples x {st['repeats']}", fontsize=9)
        for ax in (ax_t, ax_l):
            ax.set_xscale("log")
            ax.set_xlabel("imbalance ratio r")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        return fig

    @staticmethod
    def _plot_boundaries(sub: Any, bounds: list[dict[str, Any]]) -> None:
        axes = np.atleast_1d(sub.subplots(1, len(bounds), sharex=True, sharey=True))
        t = np.linspace(-4, 4, 2)
        for ax, bd in zip(axes, bounds):
            x, y = np.asarray(bd["x"]), np.asarray(bd["y"])
            ax.scatter(*x[y == 1].T, s=4, color="tab:blue", label="head (+1)")
            ax.scatter(*x[y == -1].T, s=5, color="tab:red", label="tail (-1)")
            for w, b, ls, label in ((bd["w_nat"], bd["b_nat"], "-", "natural LR"),
                                    (bd["w_adv"], bd["b_adv"], "--", "adversarial LR")):
                if abs(w[1]) > 1e-12:
                    ax.plot(t, -(w[0] * t + b) / w[1], "k", ls=ls, lw=1.2, label=label)
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
            ax.set_aspect("equal")
            ax.set_title(f"IR = {bd['ir']:g}", fontsize=9)
        axes[0].legend(fontsize=6, loc="upper left")
        sub.suptitle("Decision boundaries on sampled data (Cho et al., ICLR 2025, Fig. 2)", fontsize=9)


def _closed_keys() -> tuple[str, ...]:
    return ("natural_error_f_nat", "robust_error_f_nat", "natural_error_f_rob", "robust_error_f_rob")
