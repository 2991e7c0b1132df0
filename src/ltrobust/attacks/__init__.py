"""Threat models, attack objectives, the one PGD loop, the named evaluation suite and AutoAttack."""

from .objectives import OBJECTIVES, get_objective
from .pgd import eval_mode, fgsm, pgd
from .suite import AttackSpec, check_attacks, parse_attack, parse_attacks, run_attack
from .threat import L2, Linf, ThreatModel, threat_model

__all__ = ["OBJECTIVES", "get_objective", "eval_mode", "fgsm", "pgd", "AttackSpec", "check_attacks", "parse_attack",
           "parse_attacks", "run_attack", "L2", "Linf", "ThreatModel", "threat_model"]
