"""The module layer: small generative models connected into integrated models (SERKET, done better).

See `kizuna.modules.base` for the protocol (typed messages, ``connect``, ``update(ctx)``),
`kizuna.modules.graph` for the schedule, `kizuna.modules.context` for what a sweep passes to each
module, `kizuna.modules.rng` for the one RNG policy and `kizuna.modules.state` for the one state
mechanism; ``docs/modules.md`` for a tour. Each classical module is three parts in its package
(``gmm``, ``lda``, ``mm``, ``hmm``): pure algorithms, a scikit-learn estimator, and a graph node.
"""

from kizuna.modules.base import (
    KINDS,
    ClassModule,
    GraphError,
    Message,
    MessageKindError,
    MessageShapeError,
    Module,
    Observation,
)
from kizuna.modules.combine import MP, SIR, combine
from kizuna.modules.context import UpdateContext
from kizuna.modules.gmm import GMM, GaussianMixture
from kizuna.modules.graph import Graph
from kizuna.modules.hmm import HMM, HiddenMarkovModel
from kizuna.modules.lda import LDA, MLDA, LatentDirichletAllocation, MultimodalLDA
from kizuna.modules.mm import MM, MarkovChain
from kizuna.modules.nn import NN
from kizuna.modules.persistence import CorruptSaveError, load_graph, load_module, save_graph, save_module
from kizuna.modules.rng import generator_for, rng_from, sample_classes, sample_dirichlet, sample_gamma
from kizuna.modules.spatial_concept import SpatialConcept
from kizuna.modules.tail_to_tail import TailToTail
from kizuna.modules.vae import VAE
from kizuna.modules.validation import NotFittedError
from kizuna.modules.word_segmenter import WordSegmenter

__all__ = [
    "GMM", "HMM", "KINDS", "LDA", "MLDA", "MM", "MP", "NN", "SIR", "VAE",
    "ClassModule", "CorruptSaveError", "GaussianMixture", "Graph", "GraphError", "HiddenMarkovModel",
    "LatentDirichletAllocation", "MarkovChain", "Message", "MessageKindError", "MessageShapeError", "Module",
    "MultimodalLDA", "NotFittedError", "Observation", "SpatialConcept", "TailToTail", "UpdateContext",
    "WordSegmenter",
    "combine", "generator_for", "load_graph", "load_module", "rng_from", "sample_classes", "sample_dirichlet",
    "sample_gamma", "save_graph", "save_module",
]
