r"""The scikit-learn facades of multimodal LDA and LDA: `MultimodalLDA` and `LatentDirichletAllocation`.

The model and the sampler are described in `kizuna.modules.lda.sampler`. ``fit`` learns the topics of
a list of count matrices (one per modality; LDA takes one matrix), ``transform`` infers the topic
proportions of new samples with the topics fixed — a modality may be ``None`` (missing-modality
inference). Arrays in give arrays out; tensors give tensors.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from kizuna._data import check_int, check_positive
from kizuna.modules._backend import resolve_backend
from kizuna.modules._forward_backward import computing_dtype
from kizuna.modules.estimator import Estimator
from kizuna.modules.lda import algorithms as algo
from kizuna.modules.lda.sampler import ROUNDINGS, GibbsChain, as_counts
from kizuna.modules.rng import generator_for, sample_dirichlet

Tensor = torch.Tensor


def table_dtype(dtype: torch.dtype, counts: algo.Counts) -> torch.dtype:
    """The dtype of the count tables (and the estimates) for data of floating ``dtype``: half precision in float32
    (`kizuna.modules._forward_backward.computing_dtype`: float16 / bfloat16 tables stop counting by ones at 2048 /
    256), and float64 where a modality of ``counts`` holds more tokens than the dtype counts exactly (2^24 in
    float32: past it a topic's total lost the +1 of a move, so the topics drifted silently, 8.8e-5 in one sweep of
    42M tokens)."""
    dtype = computing_dtype(dtype)
    tokens = max((int(c.sum()) for c in counts if c is not None), default=0)
    return torch.float64 if tokens > 2 / torch.finfo(dtype).eps else dtype


class MultimodalLDA(Estimator):
    """Multimodal LDA estimator (blocked collapsed Gibbs sampling).

    Args:
        n_components: number of topics K.
        weights: per modality, the number of tokens each sample's counts are rescaled to (SERKET's
            ``weights``), or None to keep raw counts.
        rounding: how rescaled counts become tokens: ``"round"`` (default), ``"floor"`` (SERKET's) or
            ``"largest_remainder"`` (exactly ``weights[m]`` tokens a sample); see `kizuna.modules.mlda_evidence`.
        doc_topic_prior, topic_word_prior: :math:`\\alpha, \\beta` (default 1/K, as scikit-learn);
            ``alpha`` / ``beta`` are accepted as SERKET-style aliases.
        max_iter: Gibbs sweeps per `fit` / `transform` / module ``update`` (alias ``n_iter``).
        n_blocks: blocks per sweep (more is closer to exact Gibbs; with the torch backend, slower; at least as
            many as tokens: the sequential collapsed Gibbs sampler).
        n_init: independent starts of a new chain (`fit`, a node's first ``update``); the most likely is kept.
        random_state: seed of `fit`, `transform` and `sample` (see `kizuna.modules.rng`).
        backend: the sweep's implementation: ``"auto"`` (numba when installed, ``pip install 'kizuna[fast]'``,
            and the data is on the CPU), ``"torch"`` or ``"numba"``; the same chain draw for draw
            (`kizuna.modules._backend`).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> words = torch.cat([torch.poisson(torch.tensor([[8.0, 8, 0, 0]]).expand(20, 4), generator=g),
        ...                    torch.poisson(torch.tensor([[0.0, 0, 8, 8]]).expand(20, 4), generator=g)])
        >>> model = MultimodalLDA(2, max_iter=30, random_state=0).fit([words, words.flip(1)])
        >>> bool((model.predict([words, None])[:20] != model.predict([words, None])[20:]).all())
        True
    """

    _phi: Tensor | None = None  # ΣV×K topic-word probabilities, set by fit (class defaults: __init__ sets params only)
    _sizes: list[int] | None = None
    _chain: GibbsChain | None = None
    _doc_topic: Tensor | None = None
    n_iter_: int | None = None

    def __init__(self, n_components: int = 10, weights: Sequence[float | None] | None = None, *,
                 doc_topic_prior: float | None = None, topic_word_prior: float | None = None, max_iter: int = 100,
                 n_blocks: int = 16, n_init: int = 1, random_state: int | torch.Generator | None = None,
                 alpha: float | None = None, beta: float | None = None, n_iter: int | None = None,
                 rounding: str = "round", backend: str = "auto") -> None:
        self.n_components, self.weights, self.rounding, self.backend = n_components, weights, rounding, backend
        self.doc_topic_prior, self.topic_word_prior, self.max_iter = doc_topic_prior, topic_word_prior, max_iter
        self.n_blocks, self.n_init, self.random_state = n_blocks, n_init, random_state
        self.alpha, self.beta, self.n_iter = alpha, beta, n_iter

    # ------------------------------------------------------------------ settings
    @property
    def _owner(self) -> str:
        name = getattr(self, "name", None)
        return f"{type(self).__name__} {name}" if name else type(self).__name__

    def _validate(self) -> None:
        # numpy integers too (GridSearchCV over np.arange), as GaussianMixture and scikit-learn's LDA
        check_int(f"{self._owner}: n_components", self.n_components, 1)
        for a, b, what in ((self.alpha, self.doc_topic_prior, "alpha/doc_topic_prior"),
                           (self.beta, self.topic_word_prior, "beta/topic_word_prior")):
            if a is not None and b is not None:
                raise ValueError(f"{self._owner}: give one of {what}, not both")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"{self._owner}: rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        resolve_backend(self.backend, self._owner)  # an unknown name, or numba asked for but not installed
        # (2.5 was truncated to 2; NaN and inf failed in int())
        check_int(f"{self._owner}: max_iter", self.max_iter if self.n_iter is None else self.n_iter, 0)
        check_int(f"{self._owner}: n_blocks", self.n_blocks, 1)
        check_int(f"{self._owner}: n_init", self.n_init, 1)
        self._check_weights()
        if any(p is not None and not (p > 0 and math.isfinite(p))  # (NaN fails every comparison)
               for p in (self.alpha, self.beta, self.doc_topic_prior, self.topic_word_prior)):
            raise ValueError(f"{self._owner}: the Dirichlet concentrations must be positive and finite, got alpha="
                             f"{self.alpha}, beta={self.beta}, doc_topic_prior={self.doc_topic_prior}, "
                             f"topic_word_prior={self.topic_word_prior}")

    def _check_weights(self) -> None:
        """Each weight None or a finite number > 0 (a string such as "10" raised a raw TypeError in the rescaling)."""
        w = self.weights
        if w is not None and (isinstance(w, str | bytes) or not isinstance(w, Sequence | np.ndarray | torch.Tensor)
                              or getattr(w, "ndim", 1) != 1):
            raise ValueError(f"{self._owner}: weights must be a list with one weight (tokens per sample) or None per "
                             f"modality, got {w!r}")
        for m, v in enumerate(self._weights() or []):
            if v is not None:
                check_positive(f"{self._owner}: weights[{m}]", v)

    def _weights(self) -> list[float | None] | None:
        return None if self.weights is None else list(self.weights)

    def _sweeps(self, n_sweeps: int | None = None) -> algo.Sweeps:
        k = int(self.n_components)
        alpha = self.alpha if self.alpha is not None else self.doc_topic_prior
        beta = self.beta if self.beta is not None else self.topic_word_prior
        sweeps = int(self.n_iter if self.n_iter is not None else self.max_iter) if n_sweeps is None else n_sweeps
        return algo.Sweeps(k, alpha if alpha is not None else 1.0 / k, beta if beta is not None else 1.0 / k,
                           sweeps, int(self.n_blocks), self.backend, self._owner)

    def _is_fitted(self) -> bool:
        return self._phi is not None

    # ------------------------------------------------------------------ inputs
    def _as_list(self, X: Any) -> list[Any]:
        return list(X) if isinstance(X, (list, tuple)) else [X]

    def _counts(self, X: Any, allow_missing: bool) -> tuple[algo.Counts, torch.dtype]:
        """Integer counts per modality (weights applied) and the dtype of the estimates."""
        xs, weights = self._as_list(X), self._weights()
        if weights is not None and len(weights) != len(xs):
            raise ValueError(f"{self._owner}: {len(weights)} weights for {len(xs)} modalities")
        if self._sizes is not None and len(xs) != len(self._sizes):
            raise ValueError(f"{self._owner}: fitted with {len(self._sizes)} modalities, got {len(xs)}")
        counts: algo.Counts = []
        for m, x in enumerate(xs):
            if x is None and not allow_missing:
                raise ValueError(f"{self._owner}: modality {m} is None; every modality is needed to fit")
            w = None if weights is None else weights[m]
            counts.append(None if x is None else as_counts(x, w, f"{self._owner} modality {m}", self.rounding))
        present = [c for c in counts if c is not None]
        for m, c in enumerate(counts):
            if c is not None and c.shape[1] == 0:
                raise ValueError(f"{self._owner}: modality {m} has 0 feature(s) (shape={tuple(c.shape)}) while a "
                                 "minimum of 1 is required.")
        if not present or any(c.shape[0] != present[0].shape[0] for c in present) or present[0].shape[0] == 0:
            raise ValueError(f"{self._owner}: modalities must be given, hold at least one sample and agree on the "
                             f"number of samples, got {[None if c is None else tuple(c.shape) for c in counts]}")
        for m, c in enumerate(counts):
            if self._sizes is not None and c is not None and c.shape[1] != self._sizes[m]:
                raise ValueError(f"X has {c.shape[1]} features, but {self._owner} is expecting {self._sizes[m]} "
                                 f"features as input (modality {m}).")
        # floating input keeps its precision, integer counts are float64 (scikit-learn's rule, and the other
        # estimators'; they were the default float32: scores 2e-8 to 5e-8 off, float32 topics). Of several
        # modalities the widest floating dtype, as the MLDA node's (the first modality's only: [float32, float64]
        # ran in float32 and [float64, float32] in float64)
        floating = [f for f in map(self._floating_dtype, xs) if f is not None]
        dtype = functools.reduce(torch.promote_types, floating) if floating else torch.float64
        return counts, table_dtype(dtype, counts)

    @staticmethod
    def _floating_dtype(x: Any) -> torch.dtype | None:
        """The torch dtype of a floating tensor or array ``x``; None for integer, boolean or missing data."""
        dtype = getattr(x, "dtype", None)
        if isinstance(dtype, np.dtype):
            dtype = torch.from_numpy(np.zeros(0, dtype)).dtype if dtype.kind == "f" else None
        return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None

    def _sizes_of(self, counts: algo.Counts) -> list[int]:
        return [c.shape[1] if c is not None else self._sizes[m] for m, c in enumerate(counts)]

    # ------------------------------------------------------------------ scikit-learn
    def fit(self, X: Any, y: Any = None) -> MultimodalLDA:
        """Learn the topics of ``X`` (a list with one N×V_m count matrix per modality) from a random start."""
        self._validate()
        self._sizes, self._phi, self._chain = None, None, None
        counts, dtype = self._counts(X, allow_missing=False)
        for m, c in enumerate(counts):  # (probabilities or tf-idf rounded to zeros gave uniform topics silently)
            if not bool(c.any()):
                raise ValueError(f"{self._owner}: modality {m} holds no tokens after rounding to counts; LDA takes "
                                 "word counts (whole numbers of tokens), not probabilities: give counts, or a weight "
                                 "that rescales each row to that many tokens")
        gen = generator_for(self.random_state, counts[0].device)
        theta, self._phi, self._chain = algo.new_chain(counts, self._sizes_of(counts), None, None, True,
                                                       int(self.n_init), self._sweeps(), dtype, gen)
        self._sizes, self._doc_topic = self._sizes_of(counts), theta
        self.n_iter_ = self._sweeps().n_sweeps
        return self

    def _theta(self, X: Any) -> Tensor:
        self._check_fitted()
        counts, dtype = self._counts(X, allow_missing=True)
        device = next(c for c in counts if c is not None).device
        return algo.new_chain(counts, self._sizes_of(counts), self._phi, None, False, 1, self._sweeps(), dtype,
                              generator_for(self.random_state, device))[0]

    def _out(self, value: Tensor, X: Any) -> Any:
        """Arrays in give arrays out; tensors give tensors."""
        first = next(x for x in self._as_list(X) if x is not None)
        return super()._out(value, first)

    def transform(self, X: Any) -> Any:
        """:math:`\\hat\\theta` (N×K) for new samples with the topics held fixed; a modality may be None."""
        return self._out(self._theta(X), X)

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        """``fit(X).transform(X)`` (:math:`\\hat\\theta` inferred with the learnt topics; the training chain's own
        estimate is ``doc_topic_``)."""
        return self.fit(X).transform(X)

    def predict_proba(self, X: Any) -> Any:
        """Same as `transform`."""
        return self.transform(X)

    def predict(self, X: Any) -> Any:
        """The most probable topic of each sample."""
        return self._out(self._theta(X).argmax(1), X)

    def score(self, X: Any, y: Any = None) -> float:
        """Plug-in log-likelihood :math:`\\sum_{m,d,w} n^m_{dw}\\log\\sum_k\\hat\\theta_{dk}\\hat\\phi^m_{kw}` with
        :math:`\\hat\\theta` from `transform` (scikit-learn's ``score`` is a variational bound instead)."""
        counts, _ = self._counts(X, allow_missing=True)
        theta = self._theta(X)
        return algo.log_likelihood(counts, theta, self._phi, [0, *np.cumsum(self._sizes).tolist()])

    def perplexity(self, X: Any) -> float:
        """:math:`\\exp(-\\mathrm{score}(X) / \\text{number of tokens})`."""
        counts, _ = self._counts(X, allow_missing=True)
        tokens = sum(int(c.sum()) for c in counts if c is not None)
        if tokens == 0:
            raise ValueError(f"{self._owner}: the perplexity of X is undefined: X holds no tokens after rounding to "
                             "counts")
        return float(np.exp(-self.score(X) / tokens))

    def sample(self, n_samples: int = 1, n_tokens: Sequence[int] | int = 100,
               random_state: int | torch.Generator | None = None) -> tuple[list[Tensor], Tensor]:
        """Draw :math:`\\theta_d \\sim \\mathrm{Dir}(\\alpha)` and ``n_tokens[m]`` tokens per modality:
        (list of N×V_m count matrices, θ N×K), from the stream of ``random_state`` (default: the estimator's)."""
        phis = self._topic_words()
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"{self._owner}.sample: n_samples must be an integer >= 1, got {n_samples!r}")
        one = isinstance(n_tokens, numbers.Integral) and not isinstance(n_tokens, bool)
        sizes = [n_tokens] * len(phis) if one else list(n_tokens) \
            if isinstance(n_tokens, Sequence | np.ndarray) and not isinstance(n_tokens, str) else [None] * len(phis)
        if len(sizes) != len(phis):  # (zip dropped the modalities past the shorter list silently)
            raise ValueError(f"{self._owner}.sample: n_tokens must be an int or {len(phis)} lengths, one per "
                             f"modality, got {len(sizes)}")
        # (a numpy integer was refused by list(); 0 tokens failed inside torch.multinomial)
        if any(k is None or isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 for k in sizes):
            raise ValueError(f"{self._owner}.sample: n_tokens must be integers >= 1 (tokens per document"
                             f"{', one per modality' if len(phis) > 1 else ''}), got {n_tokens!r}")
        g = generator_for(self.random_state if random_state is None else random_state)
        s = self._sweeps()
        theta = sample_dirichlet(torch.full((n_samples, s.n_topics), s.alpha, dtype=torch.float64), g)
        out = []
        for phi, size in zip(phis, sizes):
            probs = theta @ phi.double().cpu()
            draws = torch.multinomial(probs, int(size), replacement=True, generator=g)
            out.append(torch.zeros_like(probs).scatter_add_(1, draws, torch.ones_like(draws, dtype=probs.dtype)))
        return out, theta

    def _topic_words(self) -> list[Tensor]:
        self._check_fitted()
        off = [0, *np.cumsum(self._sizes).tolist()]
        return [self._phi[off[m]:off[m + 1]].T for m in range(len(self._sizes))]

    @property
    def topic_word_(self) -> list[Tensor]:
        """Per modality, :math:`\\hat\\phi^m` (K×V_m), rows sum to 1."""
        return self._topic_words()

    @property
    def components_(self) -> list[Tensor]:
        """Same as ``topic_word_`` (scikit-learn's name)."""
        return self.topic_word_

    @property
    def doc_topic_(self) -> Tensor:
        """:math:`\\hat\\theta` of the training samples (N×K)."""
        self._check_fitted()
        return self._doc_topic

    @property
    def n_features_in_(self) -> int:
        """Features (words) seen in ``fit``, over all modalities."""
        self._check_fitted()
        return int(sum(self._sizes))


def _is_matrix(x: Any) -> bool:
    """``x`` is a 2-D array, tensor or nested list (a count matrix)."""
    try:
        return np.ndim(x) == 2
    except (TypeError, ValueError, RuntimeError):  # ragged lists, tensors numpy cannot read
        return False


class LatentDirichletAllocation(MultimodalLDA):
    """LDA: the one-modality `MultimodalLDA` (scikit-learn's ``LatentDirichletAllocation`` names).

    .. math::
        \\theta_d \\sim \\mathrm{Dir}(\\alpha),\\quad \\phi_k \\sim \\mathrm{Dir}(\\beta),\\quad
        z_{di} \\sim \\mathrm{Cat}(\\theta_d),\\quad w_{di} \\sim \\mathrm{Cat}(\\phi_{z_{di}})

    (Blei, Ng & Jordan 2003). ``X`` is one N×V count matrix; ``weight`` rescales each sample's counts
    (SERKET's modality weight; None: raw counts). Other arguments: see `MultimodalLDA`.
    """

    positive_input: ClassVar[bool] = True

    def __init__(self, n_components: int = 10, *, doc_topic_prior: float | None = None,
                 topic_word_prior: float | None = None, max_iter: int = 100, n_blocks: int = 16, n_init: int = 1,
                 weight: float | None = None, random_state: int | torch.Generator | None = None,
                 alpha: float | None = None, beta: float | None = None, n_iter: int | None = None,
                 backend: str = "auto") -> None:
        super().__init__(n_components, doc_topic_prior=doc_topic_prior, topic_word_prior=topic_word_prior,
                         max_iter=max_iter, n_blocks=n_blocks, n_init=n_init, random_state=random_state,
                         alpha=alpha, beta=beta, n_iter=n_iter, backend=backend)
        self.weight = weight

    def _check_weights(self) -> None:
        if self.weight is not None:
            check_positive(f"{self._owner}: weight", self.weight)

    def _weights(self) -> list[float | None] | None:
        return None if self.weight is None else [self.weight]

    def _as_list(self, X: Any) -> list[Any]:
        if isinstance(X, list | tuple) and X and all(_is_matrix(x) for x in X):  # (was: "got shape (1, 3, 3) ...
            # Reshape your data with x.reshape(1, -1)")
            raise ValueError(f"{self._owner}: X must be one count matrix (documents × vocabulary), not a list of "
                             f"{len(X)} matri{'x' if len(X) == 1 else 'ces'}; LDA has one modality (MultimodalLDA "
                             "takes a list, one matrix per modality)")
        return [X]

    def sample(self, n_samples: int = 1, n_tokens: Sequence[int] | int = 100,
               random_state: int | torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n_samples`` documents of ``n_tokens`` words: (counts N×V, θ N×K)."""
        counts, theta = super().sample(n_samples, n_tokens, random_state)
        return counts[0], theta

    @property
    def topic_word_(self) -> Tensor:
        """:math:`\\hat\\phi` (K×V), rows sum to 1."""
        return self._topic_words()[0]

    @property
    def components_(self) -> Tensor:
        """Same as ``topic_word_`` (scikit-learn's name)."""
        return self.topic_word_
