"""The Gaussian mixture module in three parts.

* `kizuna.modules.gmm.algorithms`: blocked Gibbs, variational Bayes and EM as pure functions of data and
  a parent's class prior (`ClassPrior`, with its combination strategy); `kizuna.modules.gmm.collapsed`:
  SERKET's collapsed Gibbs sampler (one point at a time) with the same contract;
* `GaussianMixture` (`kizuna.modules.gmm.estimator`): the scikit-learn estimator;
* `GMM` (`kizuna.modules.gmm.node`): the graph node (and, by inheritance, the same estimator).

`kizuna.modules.gmm.normal_wishart` holds the conjugate algebra the Bayesian algorithms share.
"""

from kizuna.modules.gmm.algorithms import ClassPrior, Fitted
from kizuna.modules.gmm.estimator import GaussianMixture
from kizuna.modules.gmm.node import GMM

__all__ = ["GMM", "ClassPrior", "Fitted", "GaussianMixture"]
