"""Long-tailed losses and every method's loss pieces, as pure functions of (logits, targets, class_counts).

Importing the package registers the long-tailed losses in ``ltrobust.registry.LOSSES``
(``ce``, ``bsl``, ``ldam``, ``focal``, ``cb``, ``cat``, ``rw``). See docs/losses.md for the table.
"""

from .at import LossTerms, kl_div_logits, mart_loss_terms, trades_loss_terms
from .distill import igdm_loss, kd_kl, linear_ramp
from .longtail import (BalancedSoftmaxLoss, BSLOptions, CATOptions, CBOptions, CELoss, CEOptions,
                       ClassAwareTemperatureLoss, ClassBalancedLoss, FocalLoss, FocalOptions, LDAMLoss,
                       LDAMOptions, LongTailLoss, ReweightedLoss, RWOptions, as_counts,
                       balanced_softmax_loss, class_aware_temperature_loss, class_balanced_loss,
                       class_balanced_weights, class_temperatures, cross_entropy, drw_weights, focal_loss,
                       inverse_frequency_weights, ldam_loss, ldam_margins, log_prior, reweighted_loss)
from .reat import (rbl_loss, rbl_weights, reat_tail_classes, tail_class_weights, tail_loss, tail_loss_from_terms,
                   tail_terms)
from .mcat import (ClassGroups, class_groups, draw_latents, etf_loss, etf_target_gram, latent_projection,
                   manifold_distance)
from .robal import robal_inference_logits, robal_kl, robal_loss, robal_margins
from .taet import harl_loss

__all__ = [
    # long-tailed losses (longtail.py)
    "as_counts", "log_prior", "cross_entropy", "balanced_softmax_loss", "ldam_loss", "ldam_margins",
    "focal_loss", "class_balanced_weights", "class_balanced_loss", "class_aware_temperature_loss",
    "class_temperatures", "inverse_frequency_weights", "reweighted_loss", "drw_weights",
    # registered classes and their options
    "LongTailLoss", "CELoss", "BalancedSoftmaxLoss", "LDAMLoss", "FocalLoss", "ClassBalancedLoss",
    "ClassAwareTemperatureLoss", "ReweightedLoss", "CEOptions", "BSLOptions", "LDAMOptions",
    "FocalOptions", "CBOptions", "CATOptions", "RWOptions",
    # TRADES / MART (at.py)
    "LossTerms", "kl_div_logits", "trades_loss_terms", "mart_loss_terms",
    # RoBal (robal.py)
    "robal_margins", "robal_loss", "robal_kl", "robal_inference_logits",
    # REAT (reat.py)
    "rbl_weights", "rbl_loss", "reat_tail_classes", "tail_class_weights", "tail_loss", "tail_loss_from_terms",
    "tail_terms",
    # TAET (taet.py)
    "harl_loss",
    # self-distillation (distill.py)
    "kd_kl", "igdm_loss", "linear_ramp",
    # MCAT (mcat.py)
    "etf_target_gram", "etf_loss", "ClassGroups", "class_groups", "draw_latents", "latent_projection",
    "manifold_distance",
]
