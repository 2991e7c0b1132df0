"""Threat models: the l_inf and l_2 balls around an image, intersected with the [0, 1] box.

A threat model knows three things (Madry et al.'s ``AttackerStep``): how to draw a random start, how
to take a steepest-ascent step of a given size, and how to project back into the ball. All three work
on the perturbation ``delta = x_adv - x`` of a batch (B, C, H, W) and never leave the device.
"""

from __future__ import annotations

import copy

import torch

from ..errors import ConfigError


def _per_sample_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample norm of (B, ...) as shape (B, 1, 1, ...) for broadcasting."""
    flat = t.flatten(1)
    n = flat.norm(p=p, dim=1)
    return n.view(-1, *([1] * (t.dim() - 1)))


class ThreatModel:
    """Base class. ``eps`` is the radius in pixel units of images in [0, 1]."""

    norm: str = ""

    def __init__(self, eps: float) -> None:
        if eps < 0:
            raise ConfigError(f"eps={eps} must be >= 0.")
        self.eps = float(eps)

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def step(self, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """The ascent step for gradient ``grad`` (same shape as the input)."""
        raise NotImplementedError

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """Project ``delta`` onto the ball (the [0, 1] box is applied by :meth:`clip`)."""
        raise NotImplementedError

    def with_eps(self, eps: float | torch.Tensor) -> "ThreatModel":
        """The same kind of ball with radius ``eps``: a float, or a tensor broadcastable to the inputs."""
        ball = copy.copy(self)
        ball.eps = eps
        return ball

    def per_sample(self, eps: torch.Tensor, ndim: int) -> "ThreatModel":
        """The same kind of ball with one radius per sample (MMA's adaptive eps, RobustLT's class radii).

        Args:
            eps: radii (B,), each >= 0, in pixel units.
            ndim: number of dimensions of the inputs (4 for images (B, C, H, W)).

        Returns:
            A copy whose ``eps`` is ``eps`` shaped (B, 1, ..., 1), usable by :func:`~ltrobust.attacks.pgd`
            (with a per-sample ``step_size`` of the same shape, if wanted).
        """
        return self.with_eps(eps.view(-1, *([1] * (ndim - 1))))

    def clip(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Project onto the ball, then keep ``x + delta`` in [0, 1]; returns the new delta."""
        delta = self.project(delta)
        return (x + delta).clamp_(0.0, 1.0) - x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:.6g})"


class Linf(ThreatModel):
    """The l_inf ball ``||delta||_inf <= eps``; steps follow the sign of the gradient."""

    norm = "linf"

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.clip(x, (2.0 * u - 1.0) * self.eps)  # uniform in [-eps, eps]

    def step(self, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return step_size * grad.sign()

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)


class L2(ThreatModel):
    """The l_2 ball ``||delta||_2 <= eps``; steps follow the normalised gradient."""

    norm = "l2"

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # Uniform in the ball: a Gaussian direction with radius eps * U^(1/d).
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        d = x[0].numel()
        u = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
        r = (u ** (1.0 / d)).view(-1, *([1] * (x.dim() - 1)))
        return self.clip(x, self.eps * r * g / _per_sample_norm(g, 2).clamp_min(1e-12))

    def step(self, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return step_size * grad / _per_sample_norm(grad, 2).clamp_min(1e-12)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        n = _per_sample_norm(delta, 2)
        return delta * torch.clamp(self.eps / n.clamp_min(1e-12), max=1.0)


def threat_model(norm: str, eps: float) -> ThreatModel:
    """``threat_model("linf", 8/255)`` or ``threat_model("l2", 0.5)``."""
    if norm == "linf":
        if not 0.0 <= eps <= 1.0:
            raise ConfigError(f"eps={eps} is outside [0, 1]: eps is in pixel units, e.g. 8/255.")
        return Linf(eps)
    if norm == "l2":
        return L2(eps)
    raise ConfigError(f"unknown norm {norm!r}: use linf or l2.")
