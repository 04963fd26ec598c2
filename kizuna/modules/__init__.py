"""The module layer: small generative models connected into integrated models (SERKET, done better).

See `kizuna.modules.base` for the protocol (typed messages, ``connect``, ``update``) and
`kizuna.modules.graph` for the schedule; ``docs/modules.md`` for a tour.
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
from kizuna.modules.gmm import GMM
from kizuna.modules.graph import Graph
from kizuna.modules.hmm import HMM
from kizuna.modules.inference import combine, rng_from, sample_classes, sample_dirichlet, sample_gamma
from kizuna.modules.lda import LDA
from kizuna.modules.mlda import MLDA
from kizuna.modules.mm import MM
from kizuna.modules.nn import NN
from kizuna.modules.persistence import load_graph, load_module, save_graph, save_module
from kizuna.modules.spatial_concept import SpatialConcept
from kizuna.modules.tail_to_tail import TailToTail
from kizuna.modules.vae import VAE
from kizuna.modules.word_segmenter import WordSegmenter

__all__ = [
    "GMM", "KINDS", "ClassModule", "Graph", "GraphError", "Message", "MessageKindError", "MessageShapeError", "Module",
    "NN", "Observation", "combine", "load_graph", "load_module", "rng_from", "sample_classes", "sample_dirichlet",
    "sample_gamma", "save_graph", "save_module", "VAE",
    "HMM", "LDA", "MLDA", "MM",
    "SpatialConcept", "TailToTail", "WordSegmenter",
]
