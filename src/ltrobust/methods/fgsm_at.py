"""FGSM adversarial training without random start (Goodfellow et al., ICLR 2015), RoBal's "FGSM-AT".

RoBal's ImageNet-LT study (Wu et al., CVPR 2021, supplement Sec. B.4, Table S8) trains ResNet-50 with
single-step AT at eps 2/255 and 4/255 in two variants: "FGSM-AT", one signed-gradient step of size eps from
the clean image (this method), and "Fast-AT" (Wong et al., ICLR 2020), a step of 1.25 eps from a uniform
random start (``fgsm_rs``). The presets ``fgsm-at-imagenetlt-resnet50`` / ``fast-at-imagenetlt-resnet50`` hold the settings.

The step always starts at the clean image: ``attack.random_start=none`` (the presets' setting) and the global
default ``uniform`` both give that start (FGSM-AT has no random start by definition; ``fgsm_rs`` is the
random-start variant), ``normal`` is refused. RoBal published no FGSM-AT code; BatchNorm attacks in eval mode,
the convention of RoBal's training code (``attack.bn_mode=train`` as Wong et al.'s Fast-AT).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import METHODS
from .fgsm_rs import FGSMRS


@dataclass(frozen=True)
class FGSMATOptions:
    step_factor: float = 1.0  #: step = step_factor * eps (Goodfellow et al.: 1)


@METHODS.register("fgsm_at")
class FGSMAT(FGSMRS):
    """``x' = clip(x + step_factor * eps * sign(grad_x L(f(x), y)))``, then the outer loss on x'."""

    name = "fgsm_at"
    Options = FGSMATOptions
    attack_bn_mode = "eval"
    start = "none"

    def refused_starts(self) -> tuple[str, ...]:
        return ("normal",)

    def start_message(self, given: str) -> str:
        return (f"method 'fgsm_at' always takes its step from the clean image (FGSM-AT has no random start), so "
                f"attack.random_start={given} would be ignored: drop it, or use method=fgsm_rs for FGSM from a "
                f"uniform random start.")
