"""The hidden Markov model in three parts.

* `kizuna.modules._forward_backward` (shared with `MM`) and `kizuna.modules.hmm.emissions`: the recursions
  and the emission models, as functions of parameters;
* `HiddenMarkovModel` (`kizuna.modules.hmm.estimator`): the scikit-learn / hmmlearn estimator;
* `HMM` (`kizuna.modules.hmm.node`): the graph node (and, by inheritance, the same estimator).
"""

from kizuna.modules.hmm.estimator import HiddenMarkovModel
from kizuna.modules.hmm.node import HMM

__all__ = ["HMM", "HiddenMarkovModel"]
