"""Samplers: one layer for diffusion, score-based and flow-matching models, and Langevin / SGLD.

`paths` states what those families share (a Gaussian path and a network's prediction of the clean
point and the noise); `integrators` holds the samplers over it (ancestral, DDIM, Euler, Heun,
Euler–Maruyama), with classifier-free guidance as a path (`Guided`). Langevin dynamics
(`langevin_dynamics`, `annealed_langevin_dynamics`) and SGLD with a persistent replay buffer
(`SGLD`) sample densities known through a score or an unnormalised log-density.
`paths` and `integrators` import only torch (the distributions sample through them).
"""

from kizuna.samplers.integrators import ancestral, ddim, euler, euler_maruyama, heun, natural_diffusion
from kizuna.samplers.langevin import annealed_langevin_dynamics, langevin_dynamics, score_of
from kizuna.samplers.paths import DiffusionPath, GaussianPath, Guided, LinearPath, Prediction, ScorePath, guided
from kizuna.samplers.sgld import SGLD

__all__ = [
    "SGLD", "DiffusionPath", "GaussianPath", "Guided", "LinearPath", "Prediction", "ScorePath",
    "ancestral", "annealed_langevin_dynamics", "ddim", "euler", "euler_maruyama", "guided", "heun",
    "langevin_dynamics", "natural_diffusion", "score_of",
]
