"""Samplers for distributions known through a score or an unnormalised density.

Langevin dynamics (`langevin_dynamics`, `annealed_langevin_dynamics`) and SGLD with a persistent
replay buffer (`SGLD`). This package builds on `kizuna.distributions` only.
"""

from kizuna.samplers.langevin import annealed_langevin_dynamics, langevin_dynamics, score_of
from kizuna.samplers.sgld import SGLD

__all__ = ["SGLD", "annealed_langevin_dynamics", "langevin_dynamics", "score_of"]
