r"""`MarkovChain`: the scikit-learn facade of the Markov model over class evidence (`kizuna.modules.MM`'s estimator).

``X`` holds class evidence :math:`\lambda_{nk}` (N×K, non-negative: a classifier's or a mixture's class
likelihoods or posteriors, one row per step, rows in data order), cut into sequences by ``lengths`` as in
hmmlearn. Integer labels go in as one-hot rows (``np.eye(K)[labels]``); labels given as a vector (N,) or a
column (N, 1) are refused by name (a column of labels read as one class's evidence had zero probability).
``fit`` learns the start and transition probabilities with the evidence as fixed emissions
(`kizuna.modules.mm.algorithms.learn`), ``predict_proba`` smooths: :math:`p(c_n = k | \lambda_{1:N})`, and
``sample`` draws a class sequence from the learnt chain (as the other classical modules' ``sample``).

>>> ev = torch.tensor([[0.9, 0.1]] * 5 + [[0.2, 0.8]] * 5, dtype=torch.float64)
>>> chain = MarkovChain(n_iter=20).fit(ev)
>>> chain.predict(ev).tolist()
[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

from kizuna._data import check_count, check_positive
from kizuna.modules import _forward_backward as fb
from kizuna.modules.estimator import Estimator
from kizuna.modules.hmm.emissions import as_sequences, check_distributions
from kizuna.modules.mm import algorithms as algo
from kizuna.modules.rng import generator_for
from kizuna.modules.validation import as_matrix, check_n_features

Tensor = torch.Tensor


class MarkovChain(Estimator):
    """Markov chain over class evidence (see the module docstring).

    Args:
        n_states: K; ``None`` takes the width of the evidence.
        alpha: Dirichlet concentration of each row of :math:`A` and of :math:`\\pi`.
        n_iter: re-estimation iterations per ``fit`` (per ``update`` in a graph).
        transmat, startprob: initial (or, with ``n_iter=0``, fixed) :math:`A` and :math:`\\pi`; default uniform.
        random_state: seed of `sample` (see `kizuna.modules.rng`).
    """

    transmat_: Tensor | None = None  # set by fit (class defaults keep __init__ to the parameters)
    startprob_: Tensor | None = None
    random_state: int | torch.Generator | None = None  # (a chain pickled before `sample`: torch's global stream)

    def __init__(self, n_states: int | None = None, *, alpha: float = 1.0, n_iter: int = 10, transmat: Any = None,
                 startprob: Any = None, random_state: int | torch.Generator | None = None) -> None:
        self.n_states, self.alpha, self.n_iter = n_states, alpha, n_iter
        self.transmat, self.startprob, self.random_state = transmat, startprob, random_state

    @property
    def _owner(self) -> str:
        name = getattr(self, "name", None)
        return f"MM {name}" if name else type(self).__name__

    def _validate(self) -> None:
        if self.n_iter is None:
            raise ValueError(f"{self._owner}: n_iter must be an integer >= 0, got None")
        check_count(f"{self._owner}: n_iter", self.n_iter, 0)  # 2.5 was cut to 2 iterations silently
        # (inf was accepted and failed later as "no path of nonzero probability"; "1" raised a raw TypeError)
        check_positive(f"{self._owner}: alpha", self.alpha)

    def _is_fitted(self) -> bool:
        return self.transmat_ is not None

    def _chain(self, k: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`\\pi, A` in ``like``'s dtype/device (the given or uniform ones before the first fit), checked."""
        a = self.transmat_ if self.transmat_ is not None else self.transmat
        p = self.startprob_ if self.startprob_ is not None else self.startprob
        opts = {"dtype": like.dtype, "device": like.device}
        # straight to like's dtype (as HiddenMarkovModel._as_tensors): as_tensor(list) alone rounded through float32
        a = torch.full((k, k), 1.0 / k, **opts) if a is None else torch.as_tensor(a, **opts)
        p = torch.full((k,), 1.0 / k, **opts) if p is None else torch.as_tensor(p, **opts)
        if a.shape != (k, k) or p.shape != (k,):
            raise ValueError(f"{self._owner}: the evidence has {k} classes but transmat is {tuple(a.shape)} "
                             f"and startprob {tuple(p.shape)}")
        for name, value in (("transmat", a), ("startprob", p)):  # the entry or row named, as HMM's parameters
            check_distributions(value, name, self._owner)
        return p, a

    def _evidence(self, X: Any, lengths: Sequence[int] | Tensor | None) -> tuple[Tensor, Tensor]:
        shape = getattr(X, "shape", None)
        if shape is None and isinstance(X, list | tuple) and X and all(isinstance(v, int | float) for v in X):
            shape = (len(X),)
        if shape is not None and len(shape) == 1:
            raise ValueError(f"{self._owner}: X must be N×K class evidence (one column per class), got shape "
                             f"{tuple(shape)}; for integer labels give one-hot rows, e.g. np.eye(K)[labels]")
        x = as_sequences(X, self._owner)
        # floating evidence keeps its precision, integer (one-hot) evidence is float64: scikit-learn's rule, and the
        # LDA estimator's (it was the default float32: estimates and scores 1e-6 off those of the same float rows);
        # half precision computes in float32 (fb.computing_dtype: float16 evidence scored -1806 for -6219)
        x = as_matrix(x.to(fb.computing_dtype(x.dtype)) if x.is_floating_point() else x.double(), "X", self._owner,
                      dtype=None)
        if bool((x < 0).any()):
            raise ValueError(f"{self._owner}: class evidence must be non-negative")
        if x.shape[1] == 1 and self.n_states != 1 and bool((x != 1).any()) and bool((x == x.round()).all()):
            # one column of whole numbers other than 1: labels (0 is zero evidence for the only class)
            raise ValueError(f"{self._owner}: X has one column of integers, which reads as class labels; X must be "
                             f"N×K class evidence (one column per class): for labels give one-hot rows, e.g. "
                             f"np.eye(K)[labels.ravel()] (one column is a chain of one class, given n_states=1)")
        if self.n_states is not None:
            check_n_features(x, self.n_states, self._owner)
        empty = (x.sum(1) == 0).nonzero().flatten()
        if len(empty):  # no class possible at that step: every sequence through it has probability zero
            rows = ", ".join(str(i) for i in empty[:5].tolist()) + (", ..." if len(empty) > 5 else "")
            raise ValueError(f"{self._owner}: X has rows of zero evidence for every class (rows {rows}): no state "
                             "is possible there; give each row some evidence (e.g. uniform for an unknown step)")
        return torch.log(x), fb.check_lengths(x.shape[0], lengths, x.device)

    def fit(self, X: Any, lengths: Sequence[int] | Tensor | None = None) -> MarkovChain:
        """Learn :math:`\\pi, A` from the evidence ``X`` (N×K) of sequences of ``lengths``."""
        self._validate()
        self.transmat_ = self.startprob_ = None
        log_emit, lengths = self._evidence(X, lengths)
        self.startprob_, self.transmat_ = algo.learn(*self._chain(log_emit.shape[1], log_emit), log_emit, lengths,
                                                     int(self.n_iter), float(self.alpha))
        return self

    def predict_proba(self, X: Any, lengths: Sequence[int] | Tensor | None = None) -> Any:
        """Smoothed :math:`p(c_n = k | \\lambda)` (N×K)."""
        self._check_fitted()
        log_emit, lengths = self._evidence(X, lengths)
        return self._out(torch.exp(algo.smooth(*self._chain(log_emit.shape[1], log_emit), log_emit, lengths)
                                   .log_gamma), X)

    def predict(self, X: Any, lengths: Sequence[int] | Tensor | None = None) -> Any:
        """The most probable class of each step (per-step argmax of `predict_proba`)."""
        return self._out(torch.as_tensor(self.predict_proba(X, lengths)).argmax(1), X)

    def score(self, X: Any, lengths: Sequence[int] | Tensor | None = None) -> float:
        """:math:`\\sum_b \\log \\sum_{c} p(c_{1:T_b}) \\prod_n \\lambda_{n c_n}` over the sequences."""
        self._check_fitted()
        log_emit, lengths = self._evidence(X, lengths)
        p, a = self._chain(log_emit.shape[1], log_emit)
        return float(fb.forward_log_likelihood(torch.log(p), torch.log(a), log_emit, lengths).sum())

    def sample(self, n_samples: int = 1, random_state: int | torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One class sequence of length ``n_samples`` drawn from the chain ``startprob_``, ``transmat_``
        (`kizuna.modules.mm.algorithms.sample_chain`): ``(X, states)``, as hmmlearn's and the HMM's ``sample``, with
        ``X`` the states' one-hot evidence (N×K, the rows `fit` and `predict` read) and ``states`` (N,), from the
        stream of ``random_state`` (default: the estimator's). ``n_samples`` must be a positive int (as the HMM's)."""
        self._check_fitted()
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"{self._owner}: n_samples must be a positive int, got {n_samples!r}")
        # the dtype of a floating tensor held (computing in float32 at least), else float64: parameters assigned by
        # hand as lists or arrays are read in float64, as the HMM's (a list through as_tensor alone was float32)
        held = next((v for v in (self.transmat_, self.startprob_) if isinstance(v, Tensor) and v.is_floating_point()),
                    None)
        like = torch.as_tensor(self.transmat_, dtype=torch.float64 if held is None else fb.computing_dtype(held.dtype))
        p, a = self._chain(like.shape[-1], like.cpu())  # checked: rows that are distributions, shapes that agree
        g = generator_for(self.random_state if random_state is None else random_state, "cpu")
        states = algo.sample_chain(p, a, int(n_samples), g).to("cpu" if held is None else held.device)
        return torch.nn.functional.one_hot(states, a.shape[0]).to(like.dtype), states
