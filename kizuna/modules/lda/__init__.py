"""LDA and multimodal LDA in three parts.

* `kizuna.modules.lda.sampler`: the blocked collapsed Gibbs chain (`GibbsChain`), self-contained;
  `kizuna.modules.lda.algorithms`: restarts, sweeps and the prior's weighting as pure functions;
* `MultimodalLDA`, `LatentDirichletAllocation` (`kizuna.modules.lda.estimator`): the scikit-learn estimators;
* `MLDA`, `LDA` (`kizuna.modules.lda.node`): the graph nodes (and, by inheritance, the same estimators).
"""

from kizuna.modules.lda.estimator import LatentDirichletAllocation, MultimodalLDA
from kizuna.modules.lda.node import LDA, MLDA
from kizuna.modules.lda.sampler import GibbsChain, as_counts

__all__ = ["LDA", "MLDA", "GibbsChain", "LatentDirichletAllocation", "MultimodalLDA", "as_counts"]
