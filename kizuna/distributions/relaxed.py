r"""Relaxed discrete families, as Pixyz defines them: relaxed draws, discrete likelihood.

`RelaxedBernoulli` and `RelaxedCategorical` draw with the Concrete relaxation (differentiable draws
in (0, 1) or in the open simplex, `BinaryConcrete` and `Concrete`), and score values with the
likelihood of the discrete family they relax:

.. math:: \log p(x) = \sum_d x_d \log p_d + (1 - x_d)\log(1 - p_d) \quad\text{(Bernoulli)},\qquad
          \log p(x) = \sum_k x_k \log p_k \quad\text{(categorical, } x \text{ in the simplex)}.

For 0/1 and one-hot values these are the exact log-probabilities; relaxed draws are scored by the same
formulas (a cross-entropy). This is what Pixyz does and what models such as M2 (Kingma et al. 2014,
arXiv:1406.5298) need: a labelled one-hot ``y`` has probability :math:`p_y` under :math:`q(y|x)`, whereas the
Concrete density is not defined at the vertices of the simplex. The moments and the entropy are the
discrete family's too (``sample_mean()`` is ``probs``, the :math:`\lambda \to 0` limit of the relaxation).
The temperature defaults to Pixyz's 0.1. For the Concrete density itself use `BinaryConcrete` / `Concrete`.

A score-function gradient of the draws (`REINFORCE`, ``Expectation(..., reparam=False)``) is refused: the discrete
likelihood at a relaxed draw is not its density, and its score has a non-zero mean (the estimator was biased, as
Pixyz's is). The pathwise gradient, the default of `Expectation`, needs no density.

Unlike Pixyz, `RelaxedCategorical` scores with the categorical likelihood: Pixyz 0.3.3 scores it with a
Bernoulli likelihood per class, which adds :math:`\sum_k (1 - x_k)\log(1 - p_k)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import distributions as D
from torch.distributions import constraints
from torch.nn import functional as F

from kizuna._data import pop_pixyz_constant
from kizuna.distributions.base import Tensor, XDict, sum_rows
from kizuna.distributions.families import BinaryConcrete, Concrete, _TorchOneHotCategorical, on_simplex
from kizuna.distributions.torch_dist import TorchDistribution, _floating_like, _without_entries, validation_enabled
from kizuna.formula.expr import values_dict

DEFAULT_TEMPERATURE = 0.1  # Pixyz's default


class _DiscreteScoring(TorchDistribution):
    """Relaxed draws (``torch_class``), densities and moments of ``discrete_class`` (module docstring)."""

    discrete_class: ClassVar[type[D.Distribution]]
    value_support: ClassVar[constraints.Constraint]

    def __init__(self, var: str | Sequence[str] = ("x",), cond_var: str | Sequence[str] | None = None,
                 name: str = "p", features_shape: Sequence[int] | torch.Size = (),
                 temperature: Any = None, **params: Any) -> None:
        super().__init__(var, cond_var, name, features_shape, temperature=temperature, **params)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        """Pixyz's checkpoints load too: Pixyz keeps a relaxed family's temperature as a buffer ``temperature``
        (``tensor([0.1])`` by default), kizuna makes the default 0.1 at each evaluation (no state), so a Pixyz file of a
        network with a relaxed output (M2's classifier) failed with ``Unexpected key(s) in state_dict:
        "temperature"``. Where this distribution has no temperature of its own (neither a constant nor a variable),
        such an entry is read and dropped when it equals the default; another value is an error naming it (build the
        distribution with ``temperature=value`` to load it)."""
        own = "temperature" in self._const_names or "temperature" in self._from_var \
            or "temperature" in self._buffers or "temperature" in self._parameters  # (a subclass's own, too)
        if not own:
            base = next(c.__name__ for c in type(self).__mro__ if c.__module__ == __name__ and
                        not c.__name__.startswith("_"))
            pop_pixyz_constant(state_dict, prefix + "temperature", DEFAULT_TEMPERATURE, error_msgs,
                               f"Pixyz {type(self).__name__} temperature", "this distribution's default temperature",
                               f"give it as the temperature when building the distribution ({base}(..., "
                               f"temperature={{}}), or super().__init__(..., temperature=...) in a subclass) to load "
                               f"it")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _missing(self, given: set[str]) -> list[str]:
        """See `TorchDistribution._missing`; the temperature has a default."""
        return super()._missing(given | {"temperature"})

    def _compute_params(self, x_dict: Mapping[str, Any]) -> dict[str, Any]:
        """See `TorchDistribution._compute_params`; the temperature defaults to 0.1 when neither a constant,
        a conditioning variable nor ``forward`` gives it."""
        params = super()._compute_params(x_dict)
        if params.get("temperature") is None:  # in the parameters' dtype, as a number given for it (`_numbers_like`)
            like = _floating_like(params.values())
            params["temperature"] = torch.tensor(DEFAULT_TEMPERATURE, dtype=like[0] if like is not None else None,
                                                 device=like[1] if like is not None else None)
        return params

    def _discrete(self, x_dict: Mapping[str, Any]) -> D.Distribution:
        """The discrete distribution with this distribution's ``probs``/``logits`` (leading batch dim)."""
        return self._kl_dist(self._params(x_dict))

    def _elementwise_log_prob(self, x_dict: XDict) -> Tensor:
        """See `TorchDistribution._elementwise_log_prob`: the discrete family's log-likelihood."""
        params = self._scoring_params(x_dict)[0]  # (Python-number constants exact in a wider value's dtype)
        dist = self._kl_dist(params)
        features = dist.batch_shape[1:] + dist.event_shape
        value = self._value(x_dict[self._var[0]], features, params)
        self._check_rows(value, dist.batch_shape[0], features)
        if validation_enabled() and not self._on_support(value):
            raise ValueError(f"{self.prob_text}: value of {self._var[0]} must lie in {self.value_support}, "
                             "found values outside")
        return self._per_feature(dist, value)

    def _on_support(self, value: Tensor) -> bool:
        """Whether every value lies in ``value_support``; on the simplex within the rounding of the value's dtype
        (`on_simplex`, as `Concrete`): a float32 relaxed draw at a low temperature sums to 1 within about 1e-5
        only, and torch's own check refused the family's own draws (scoring them under validation failed)."""
        if self.value_support is constraints.simplex:
            return on_simplex(value)
        return bool(self.value_support.check(value).all())

    def _per_feature(self, dist: D.Distribution, value: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def closed_form_family(self) -> type[D.Distribution]:
        """The discrete family: a KL or an entropy of a relaxed family is the discrete family's closed form (it scores
        with that likelihood; the one-draw Monte-Carlo estimate of the KL was noisy, negative at times, and a relaxed
        draw was outside a `Categorical`'s support on a validated step)."""
        return self.discrete_class

    def _kl_dist(self, params: dict[str, Any]) -> D.Distribution:
        """See `TorchDistribution._kl_dist`: the discrete distribution of these parameters."""
        hard = {k: params[k] for k in ("probs", "logits") if params.get(k) is not None}
        try:
            # (parameters without entries, an empty batch: nothing to check, and torch's check fails reshaping them)
            return self.discrete_class(**hard, validate_args=validation_enabled() and not _without_entries(hard))
        except ValueError as err:
            raise ValueError(f"{self.prob_text}: invalid parameters for {type(self).__name__}: {err}") from err

    def get_entropy(self, x_dict: Mapping[str, Any] | None = None, sum_features: bool = True,
                    feature_dims: Sequence[int] | None = None) -> Tensor:
        """The entropy of the discrete family (see `Distribution.get_entropy`)."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "get_entropy", self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        entropy = self._discrete(x_dict).entropy()
        return sum_rows(entropy, feature_dims) if sum_features else entropy

    def _mean_values(self, x_dict: XDict, batch_n: int | None) -> XDict:
        """See `Distribution._mean_values`: ``probs``, as `sample_mean`."""
        mean = self._discrete(x_dict).mean
        rows = self._rows(self._params(x_dict), x_dict, batch_n)
        if rows is not None and rows != mean.shape[0]:
            if mean.shape[0] != 1:  # the draw's error (torch's expand error named neither)
                raise self._rows_error(mean.shape[0], x_dict, rows)
            mean = mean.expand(rows, *mean.shape[1:])
        return {self._var[0]: mean}

    def sample_mean(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        """``probs``: the mean of the discrete family (see `Distribution.sample_mean`)."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_mean", self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        return self._discrete(x_dict).mean

    def sample_variance(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        """``probs * (1 - probs)``: the variance of the discrete family (see `Distribution.sample_variance`)."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_variance", self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        return self._discrete(x_dict).variance


class RelaxedBernoulli(_DiscreteScoring, BinaryConcrete):
    r"""Bernoulli relaxed for sampling: Binary Concrete draws, Bernoulli likelihood (module docstring).

    Parameters ``temperature`` (default 0.1), ``probs`` or ``logits``.

    >>> import torch
    >>> p = RelaxedBernoulli(var=["x"], probs=torch.tensor([0.2, 0.9]))
    >>> p.get_log_prob({"x": torch.tensor([[0.0, 1.0]])})  # log 0.8 + log 0.9
    tensor([-0.3285])
    >>> x = p.sample(batch_n=3)["x"]
    >>> bool(((x > 0) & (x < 1)).all()), p.sample_mean()
    (True, tensor([[0.2000, 0.9000]]))
    """

    discrete_class = D.Bernoulli
    value_support = constraints.unit_interval

    def _per_feature(self, dist: D.Distribution, value: Tensor) -> Tensor:
        logits, value = torch.broadcast_tensors(dist.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none")


class RelaxedCategorical(_DiscreteScoring, Concrete):
    r"""Categorical relaxed for sampling: Concrete draws, categorical likelihood (module docstring).

    Parameters ``temperature`` (default 0.1; one for the whole batch, as torch), ``probs`` or ``logits``
    over the last feature dimension. Values are one-hot vectors or points of the simplex.

    >>> import torch
    >>> q = RelaxedCategorical(var=["y"], probs=torch.tensor([0.2, 0.3, 0.5]))
    >>> q.get_log_prob({"y": torch.tensor([[0.0, 1.0, 0.0]])})  # log 0.3
    tensor([-1.2040])
    >>> y = q.sample(batch_n=2)["y"]  # points of the open simplex
    >>> bool((y > 0).all()), torch.allclose(y.sum(-1), torch.ones(2))
    (True, True)
    """

    discrete_class = _TorchOneHotCategorical  # its inner Categorical follows validate_args
    value_support = constraints.simplex

    def _per_feature(self, dist: D.Distribution, value: Tensor) -> Tensor:
        logits, value = torch.broadcast_tensors(dist.logits, value)  # normalised log-probabilities
        # 0 · log 0 = 0, the logits masked before the product (the same values): masking the product instead gave the
        # value the gradient 0 · (-inf) = NaN where a probability is exactly 0 (logits masked with -inf)
        return (value * torch.where(value > 0, logits, torch.zeros_like(logits))).sum(-1)
