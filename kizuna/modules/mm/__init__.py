"""The Markov model module in three parts.

* `kizuna.modules.mm.algorithms`: transition counts (exact or from sampled paths), re-estimation, smoothing;
* `MarkovChain` (`kizuna.modules.mm.estimator`): the scikit-learn estimator over class evidence;
* `MM` (`kizuna.modules.mm.node`): the graph node (and, by inheritance, the same estimator).
"""

from kizuna.modules.mm.algorithms import dirichlet_mean, transition_counts
from kizuna.modules.mm.estimator import MarkovChain
from kizuna.modules.mm.node import MM

__all__ = ["MM", "MarkovChain", "dirichlet_mean", "transition_counts"]
