r"""`MixtureModel`: a finite mixture with a one-hot hidden component variable.

.. math::

    p(x) = \sum_{k=1}^K p(z = e_k)\, p_k(x), \qquad
    \log p(x) = \operatorname{logsumexp}_k \big(\log p(z = e_k) + \log p_k(x)\big)

The components :math:`p_k` may be of different families and may be conditional; the prior
:math:`p(z)` is a distribution over one-hot vectors of length :math:`K` (a `Categorical`,
possibly conditional). `MixtureModel.posterior` gives :math:`p(z|x)` by Bayes' rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kizuna._text import prob_text, symbol, var_text
from kizuna.distributions.base import (
    Distribution,
    Tensor,
    XDict,
    _with_values,
    as_sample_shape,
    batch_size_of,
    repeat_batch,
    sum_rows,
)
from kizuna.distributions.families import Categorical
from kizuna.distributions.relaxed import RelaxedCategorical
from kizuna.distributions.replace import ReplaceVarDistribution
from kizuna.distributions.torch_dist import TorchDistribution
from kizuna.formula import EvalContext, LogProb, Loss
from kizuna.formula.expr import values_dict
from kizuna.formula.memo import shared_parameters


def common_var(dists: Sequence[Distribution], owner: str) -> list[str]:
    """The variables shared by every distribution of ``dists``; a ValueError if they differ."""
    if len(dists) == 0:
        raise ValueError(f"{owner} needs at least one distribution")
    for d in dists:
        if not isinstance(d, Distribution):
            raise TypeError(f"{owner} takes kizuna distributions, got {type(d).__name__}")
    var = dists[0].var
    for d in dists[1:]:
        if sorted(d.var) != sorted(var):
            raise ValueError(
                f"{owner}: every distribution must be over the same variables, but "
                f"{dists[0].prob_text} is over {var} and {d.prob_text} is over {d.var}"
            )
    return var


def _fresh_name(taken: Sequence[str]) -> str:
    """A name for the hidden variable that no component uses: ``z``, else ``k``, else ``z_0``, ``z_1``, ..."""
    for name in ("z", "k", *(f"z_{i}" for i in range(len(taken) + 1))):
        if name not in taken:
            return name
    raise AssertionError("unreachable: one of len(taken) + 3 names is free")


def _event_rank(d: Distribution, x_dict: Mapping[str, Any]) -> int | None:
    """The number of trailing dimensions of one draw of ``d``'s variable (its features, event dimensions
    included), or None where ``d`` does not say (a conditional distribution without ``features_shape``)."""
    if d.features_shape:
        return len(d.features_shape)
    if isinstance(d, TorchDistribution):  # the parameters' feature dimensions
        dist = d._torch_dist(x_dict, independent=False)
        rank = len(dist.batch_shape) - 1 + len(dist.event_shape)
        return rank if rank else None  # scalar parameters broadcast against any features: unknown
    return None


def leading_dims(owner: Distribution, dists: Sequence[Distribution], x_dict: Mapping[str, Any],
                 sum_features: bool = True, dims: Sequence[int] | None = None) -> tuple[int, int | None]:
    """``(lead, rank)`` of the scored value of a mixture over one variable: its ``lead`` leading dimensions
    (``(*sample_shape, batch)``: 1 without a ``sample_shape``) and its ``rank`` feature dimensions. Where neither
    the mixture's ``features_shape`` nor a component says (numbers as constants broadcast against any features),
    the caller's request does: ``sum_features=False`` or ``feature_dims=[]`` asks for one value per entry (no
    features), ``feature_dims`` the trailing dimensions from its first; else (None) the value has one leading
    dimension, every other one a feature, as a plain family scores it. A value without a batch dimension counts as
    a batch of one (lead 1)."""
    value = x_dict.get(owner.var[0]) if len(owner.var) == 1 else None
    if not isinstance(value, Tensor):
        return 1, None
    if owner.features_shape:
        rank: int | None = len(owner.features_shape)
    else:
        ranks = {r for r in (_event_rank(d, x_dict) for d in dists) if r is not None}
        if len(ranks) > 1:
            raise ValueError(f"{owner.prob_text}: the components' draws of {owner.var[0]} have different numbers of "
                             f"feature dimensions {sorted(ranks)}")
        rank = ranks.pop() if ranks else None
    if rank is None:
        if not sum_features:
            rank = 0
        elif dims is not None:
            ndim = value.dim()
            rank = ndim - min(d % ndim for d in dims) if dims and all(-ndim <= d < ndim for d in dims) else 0
        else:
            return 1, None
    return max(1, value.dim() - rank), rank


def components_log_prob(owner: Distribution, dists: Sequence[Distribution], x_dict: Mapping[str, Any],
                        sum_features: bool = True, dims: Sequence[int] | None = None) -> Tensor:
    """:math:`\\log p_k(x)` of every component, one value per draw, stacked last: ``(*sample_shape, batch, K)``.
    Each component's density is summed over the features only, not over the rows of a ``sample_shape`` draw
    (the mixture's logsumexp is taken per draw). A component's parameters are computed once for both the feature
    count and the density (`shared_parameters`)."""
    with shared_parameters():
        lead, _ = leading_dims(owner, dists, x_dict, sum_features, dims)
        if lead == 1:
            parts = [d.get_log_prob(x_dict) for d in dists]
        else:
            parts = []
            for d in dists:
                lp = d.get_log_prob(x_dict, sum_features=False)  # per feature entry, (*sample_shape, batch, ...)
                parts.append(lp.flatten(lead).sum(-1) if lp.dim() > lead else lp)
    return torch.stack(torch.broadcast_tensors(*parts), dim=-1)


def summed_log_prob(owner: Distribution, dists: Sequence[Distribution], x_dict: Mapping[str, Any],
                    per_draw: Tensor, sum_features: bool, dims: Sequence[int] | None) -> Tensor:
    """The mixture's log-density ``per_draw`` (``(*sample_shape, batch)``) summed as `get_log_prob` asks:
    every dimension but the first by default; the dimensions ``dims`` of the value (``feature_dims``), which
    must include its feature dimensions (a mixture's density does not factorise over its features)."""
    if sum_features and dims is None:
        return sum_rows(per_draw)
    lead, rank = leading_dims(owner, dists, x_dict, sum_features, dims)
    var = owner.var[0] if len(owner.var) == 1 else ", ".join(owner.var)
    if rank is None:
        raise ValueError(f"{owner.prob_text}: the feature dimensions of {var} are unknown (give the mixture "
                         "features_shape=...), so only sum_features=True without feature_dims can score it")
    features = list(range(lead, lead + rank))
    if not sum_features:
        if rank:
            raise ValueError(f"{owner.prob_text}: a mixture's density does not factorise over the features of {var} "
                             f"(dimensions {features}); use sum_features=True, with feature_dims={features} for "
                             "one value per draw")
        return per_draw
    ndim = lead + rank
    bad = [d for d in dims if not -ndim <= d < ndim]
    if bad:
        raise ValueError(f"{owner.prob_text}: feature_dims {list(dims)} out of range for {var} with {ndim} "
                         "dimensions")
    norm = sorted({d % ndim for d in dims})
    missing = [d for d in features if d not in norm]
    if missing:
        raise ValueError(f"{owner.prob_text}: a mixture's density does not factorise over the features of {var}: "
                         f"feature_dims={list(dims)} must include its feature dimensions {features} "
                         f"(feature_dims={features} gives one value per draw)")
    rows = [d for d in norm if d < lead]
    return per_draw.sum(dim=rows) if rows else per_draw


def union_cond(dists: Sequence[Distribution], exclude: Sequence[str] = ()) -> list[str]:
    """The conditioning variables of ``dists``, in order of appearance, without ``exclude``."""
    cond: list[str] = []
    for d in dists:
        cond.extend(c for c in d.cond_var if c not in exclude and c not in cond)
    return cond


class MixtureModel(Distribution):
    r"""A mixture :math:`p(x) = \sum_z p(z)\,p(x|z)` with one-hot :math:`z` (see module docstring).

    Args:
        distributions: the :math:`K` components :math:`p_k(x)`, all over the same variables.
        prior: a distribution over one hidden variable holding one-hot vectors of length
            :math:`K`, e.g. ``Categorical(var=["z"], probs=torch.ones(K) / K)`` (or a
            ``RelaxedCategorical``, which scores one-hot vectors as a Categorical); another family, e.g. a
            ``Dirichlet`` or ``Normal``, is refused: its density at the K one-hot vectors does
            not sum to one). A prior over the
            components' own variable (Pixyz's ``Categorical(probs=...)``, over the default ``x``) is
            renamed to a fresh hidden variable (``z`` unless taken; see `hidden_var`).
        name: the symbol of the mixture.
        features_shape: see `Distribution`.

    Sampling draws :math:`z` from the prior, then :math:`x` from the chosen component (all
    components are drawn and one is selected per row: cheap for small :math:`K`). The
    choice is discrete, so there is no reparameterised sampler; draws carry no gradient.

    Example:
        >>> from kizuna.distributions import Categorical, Normal
        >>> p = MixtureModel([Normal(var=["x"], loc=-2.0, scale=1.0), Normal(var=["x"], loc=2.0, scale=1.0)],
        ...                  Categorical(var=["z"], probs=torch.tensor([0.3, 0.7])))
        >>> print(p)
        p(x) = sum_{z} p(z)p(x|z)
        >>> p.get_log_prob({"x": torch.zeros(4)}).shape
        torch.Size([4])
    """

    def __init__(self, distributions: Sequence[Distribution], prior: Distribution, name: str = "p",
                 features_shape: Sequence[int] | torch.Size = ()) -> None:
        distributions = list(distributions)
        var = common_var(distributions, "MixtureModel")
        if not isinstance(prior, Distribution) or len(prior.var) != 1:
            raise ValueError("MixtureModel: prior must be a distribution over one hidden (one-hot) variable")
        inner = prior.p if isinstance(prior, ReplaceVarDistribution) else prior
        if isinstance(inner, TorchDistribution) and not isinstance(inner, (Categorical, RelaxedCategorical)):
            raise ValueError(
                "MixtureModel: the prior must be a Categorical (or RelaxedCategorical) over one-hot vectors of "
                f"length K (the mixture weights), got {type(inner).__name__} {prior.prob_text}: its density over the K "
                "one-hot vectors need not sum to one, so the mixture would not be normalised"
            )
        if prior.var[0] in var:  # Pixyz's `Categorical(probs=...)` over the default variable "x"
            prior = prior.replace_var(**{prior.var[0]: _fresh_name(var + prior.cond_var +
                                                                   union_cond(distributions))})
        hidden = prior.var[0]
        bad = [d.prob_text for d in distributions if hidden in d.cond_var] + (
            [prior.prob_text] if set(prior.cond_var) & set(var) else [])
        if bad:
            raise ValueError(
                f"MixtureModel: {', '.join(bad)} must not condition on {hidden} or {var}; "
                "the mixture selects the components itself"
            )
        cond = union_cond([*distributions, prior], exclude=var)
        super().__init__(var, cond, name, features_shape)
        self.distributions = nn.ModuleList(distributions)
        self.prior = prior
        self._hidden = hidden
        self._check_prior_size()

    def _check_prior_size(self) -> None:
        """The prior's draws must be one-hot vectors of shape exactly ``(K,)``: checked here where the shape is known
        (an unconditional prior, or one that declares its ``features_shape``); a conditional prior's at use
        (`_check_prior_length`). Extra feature dimensions (two independent choices, ``probs`` of shape ``(2, K)``)
        passed a check of the last dimension alone, then failed in indexing with a raw RuntimeError."""
        if self.prior.cond_var:
            if self.prior.features_shape:
                self._check_one_hot(self.prior.features_shape, "its features_shape")
            return
        prior = self.prior.p if isinstance(self.prior, ReplaceVarDistribution) else self.prior
        try:
            event = prior.get_dist({}).event_shape  # the features of one draw (every dimension but the batch)
        except NotImplementedError:
            if self.prior.features_shape:
                self._check_one_hot(self.prior.features_shape, "its features_shape")
            return
        self._check_one_hot(event, "its draws' features")

    def _check_one_hot(self, shape: torch.Size | Sequence[int], source: str) -> None:
        """A ValueError unless ``shape``, the features of the prior's draw of the hidden variable (read from
        ``source``), is ``(K,)``: one-hot vectors of length K, one entry per component."""
        k = len(self.distributions)
        if tuple(shape) != (k,):
            found = f"of length {shape[0]}" if len(shape) == 1 else f"of shape {tuple(shape)}"
            raise ValueError(
                f"MixtureModel {self.prob_text}: the prior {self.prior.prob_text} gives {self._hidden} as vectors "
                f"{found} ({source}), but the mixture has {k} components: it needs one-hot vectors of shape ({k},), "
                "one entry per component"
            )

    def _check_prior_length(self, inputs: Mapping[str, Any]) -> None:
        """The check of `_check_prior_size` for a conditional prior given its ``inputs``: the shape of its
        ``probs`` / ``logits`` (a Categorical's or RelaxedCategorical's, read through the memo of
        `shared_parameters`, so that its network runs once for the check and for its density). Without it a prior
        over fewer classes than components never chose the last ones, and one over more failed in indexing."""
        prior, given = self.prior, inputs
        while isinstance(prior, ReplaceVarDistribution):
            prior, given = prior.p, prior._inner(dict(given))
        if not isinstance(prior, TorchDistribution):
            return  # another kind of prior: its draws are checked when sampling
        params = prior._params(given)
        for key in ("logits", "probs"):
            value = params.get(key)
            if isinstance(value, Tensor) and value.dim() > 0:
                if value.shape[1:] != (len(self.distributions),):
                    self._check_one_hot(value.shape[1:], f"its {key} have shape {tuple(value.shape)}, batch first")
                return

    @property
    def hidden_var(self) -> list[str]:
        """The hidden (component) variable, the prior's variable."""
        return [self._hidden]

    @property
    def input_var(self) -> list[str]:
        inputs: list[str] = []
        for d in [*self.distributions, self.prior]:
            inputs.extend(v for v in d.input_var if v not in self._var and v not in inputs)
        return inputs

    @property
    def distribution_name(self) -> str:
        return "Mixture Model"

    # ------------------------------------------------------------------ text
    def _factorized_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        names = {d.name for d in self.distributions}
        var = [rename.get(v, v) for v in self._var]
        cond = [self._hidden, *(rename.get(v, v) for v in self._cond_var)]
        component = prob_text(names.pop() if len(names) == 1 else "p", var, cond, fmt)
        summand = self.prior._factorized_text(fmt, rename) + component
        return fmt["mixture"].format(var_text(self._hidden, fmt), summand)

    def _factor_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        """Bracketed, so that the sum's scope stays clear inside a product."""
        return fmt["paren"].format(self._factorized_text(fmt, rename))

    # --------------------------------------------------------------- density
    def log_prior(self, x_dict: Mapping[str, Any], dtype: torch.dtype | None = None) -> Tensor:
        """:math:`\\log p(z = e_k)` for every :math:`k`: shape ``(batch or 1, K)``."""
        k = len(self.distributions)
        b = batch_size_of(x_dict, self.prior.input_var)
        if b is None:  # a constant prior: one row for every batch (an empty batch keeps its 0 rows)
            b = 1
        device = next((v.device for v in x_dict.values() if isinstance(v, Tensor)), None)
        eye = torch.eye(k, dtype=dtype or torch.get_default_dtype(), device=device).repeat_interleave(b, 0)
        inputs = {c: repeat_batch(x_dict[c], k) for c in self.prior.input_var}
        # numbers converted once here, so that the check and the density see the same tensors (one forward)
        given = _with_values({**inputs, self._hidden: eye}, self.prior)
        with shared_parameters():
            if self.prior.cond_var:
                self._check_prior_length(given)
            return self.prior.get_log_prob(given).reshape(k, b).T

    def joint_log_prob(self, x_dict: Mapping[str, Any], sum_features: bool = True,
                       feature_dims: Sequence[int] | None = None) -> Tensor:
        """:math:`\\log p(z = e_k) + \\log p_k(x)` for every component: shape ``(batch, K)``
        (``(*sample_shape, batch, K)`` for draws made with a ``sample_shape``: one value per draw; ``sum_features``
        and ``feature_dims`` as `get_log_prob` says which dimensions are features where the components do not)."""
        self._require(x_dict, self._var + self.input_var)
        comps = components_log_prob(self, list(self.distributions), x_dict, sum_features, feature_dims)
        return comps + self.log_prior(x_dict, comps.dtype)

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        per_draw = torch.logsumexp(self.joint_log_prob(x_dict, sum_features), dim=-1)
        return summed_log_prob(self, list(self.distributions), x_dict, per_draw, sum_features, None)

    def _log_prob_dims(self, x_dict: XDict, dims: Sequence[int]) -> Tensor:
        per_draw = torch.logsumexp(self.joint_log_prob(x_dict, True, dims), dim=-1)
        return summed_log_prob(self, list(self.distributions), x_dict, per_draw, True, dims)

    def get_log_prob(self, x_dict: Mapping[str, Any], sum_features: bool = True,
                     feature_dims: Sequence[int] | None = None, return_hidden: bool = False, **kwargs: Any) -> Tensor:
        r"""See `Distribution.get_log_prob`; with ``return_hidden`` (Pixyz's option) the log-density of every
        component joint with its choice, :math:`\log p(x, z = k)`, shape ``(K, batch)`` as Pixyz returns it
        (`joint_log_prob` is the same, batch first). It was ignored, returning :math:`\log p(x)`."""
        if return_hidden:
            return self.joint_log_prob(x_dict, sum_features, feature_dims).movedim(-1, 0)
        return super().get_log_prob(x_dict, sum_features, feature_dims)

    # -------------------------------------------------------------- sampling
    def sample(self, x_dict: Mapping[str, Any] | None = None, batch_n: int | None = None,
               sample_shape: Sequence[int] | torch.Size = (), return_all: bool = True, reparam: bool = False,
               sample_mean: bool = False, return_hidden: bool = False, **kwargs: Any) -> XDict:
        """See `Distribution.sample`; with ``return_hidden`` (Pixyz's option, off by default) also the component
        choice under `hidden_var` (`sample_with_hidden`). It was ignored."""
        if not return_hidden or sample_mean:
            return super().sample(x_dict, batch_n, sample_shape, return_all, reparam, sample_mean)
        if as_sample_shape(self.prob_text, sample_shape):
            raise ValueError(f"{self.prob_text}: return_hidden takes no sample_shape; draw with sample_with_hidden "
                             "once per draw, or give batch_n")
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample", self, self.input_var)
        given = dict(x_dict or {})  # its own given variables are redrawn, not sizing the batch (`Distribution.sample`)
        out = self.sample_with_hidden({k: v for k, v in given.items() if k not in self._var}, batch_n)
        return {**given, **out} if return_all else out

    def sample_with_hidden(self, x_dict: Mapping[str, Any] | None = None, batch_n: int | None = None) -> XDict:
        """Draw ``{hidden: z, var: x}``: the component choice along with the draw."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_with_hidden", self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self.input_var)
        z = self.prior._sample(x_dict, batch_n, False)[self._hidden]
        if z.shape[1:] != (len(self.distributions),):  # (a conditional prior's length is known only now)
            self._check_one_hot(z.shape[1:], f"its draw has shape {tuple(z.shape)}, batch first")
        b = z.shape[0]
        index = z.argmax(-1)
        draws = [d._sample(x_dict, b, False) for d in self.distributions]  # no gradient: see class doc
        out: XDict = {self._hidden: z}
        for v in self._var:
            shapes = {tuple(dr[v].shape) for dr in draws}
            if len(shapes) != 1:
                raise ValueError(f"{self.prob_text}: the components draw {v} with different shapes {sorted(shapes)}")
            stacked = torch.stack([dr[v] for dr in draws], dim=1)  # (batch, K, *features)
            out[v] = stacked[torch.arange(b, device=stacked.device), index]
        return out

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        out = self.sample_with_hidden(x_dict, batch_n)
        return {v: out[v] for v in self._var}

    # --------------------------------------------------------------- moments
    def _weights_and_moments(self, x_dict: Mapping[str, Any], moment: str) -> tuple[Tensor, Tensor]:
        x_dict = dict(x_dict or {})
        self._require(x_dict, self.input_var)
        values = torch.stack(torch.broadcast_tensors(*[getattr(d, moment)(x_dict) for d in self.distributions]), 1)
        probs = self.log_prior(x_dict, values.dtype).exp()
        return probs.reshape(*probs.shape, *[1] * (values.dim() - 2)), values

    def sample_mean(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        r""":math:`\sum_k \pi_k \mu_k` (single-variable components)."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_mean", self, self.input_var)
        w, mean = self._weights_and_moments(x_dict or {}, "sample_mean")
        return (w * mean).sum(1)

    def sample_variance(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        r""":math:`\sum_k \pi_k \big(\sigma_k^2 + (\mu_k - \mu)^2\big)` with :math:`\mu = \sum_k \pi_k \mu_k` (the law
        of total variance, centred: the raw moments' :math:`\sum_k \pi_k (\sigma_k^2 + \mu_k^2) - \mu^2` cancelled,
        giving 0 in float32 for means 1000 and scales 0.1)."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_variance", self, self.input_var)
        w, mean = self._weights_and_moments(x_dict or {}, "sample_mean")
        _, var = self._weights_and_moments(x_dict or {}, "sample_variance")
        centre = (w * mean).sum(1, keepdim=True)
        return (w * (var + (mean - centre) ** 2)).sum(1)

    def posterior(self, name: str | None = None) -> MixturePosterior:
        """:math:`p(z|x)`, the posterior over the component (see `MixturePosterior`)."""
        return MixturePosterior(self, name or self._name)


class MixturePosterior(Categorical):
    r"""The component posterior of a `MixtureModel`, by Bayes' rule:

    .. math:: p(z = e_k \mid x) = \frac{\pi_k\, p_k(x)}{\sum_j \pi_j\, p_j(x)}

    A one-hot `Categorical` over the hidden variable, conditioned on the mixture's variables
    (and its conditioning variables); ``get_params`` and ``sample_mean`` give the
    probabilities, shape ``(batch, K)``. It shares the mixture's parameters. As in Pixyz,
    ``prob().eval({"x": x})`` and ``get_prob({"x": x})`` without the hidden variable give the
    responsibilities of every component, shape ``(K, batch)`` (an EM step's E-step), and
    ``get_log_prob`` / ``log_prob().eval`` their logarithms; given the hidden variable, the value
    of each row's component (Pixyz's returns the ``(K, batch)`` table there too).
    """

    def __init__(self, mixture: MixtureModel, name: str = "p") -> None:
        super().__init__(var=mixture.hidden_var, cond_var=mixture.var + mixture.cond_var, name=name)
        self.mixture = mixture

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        """Posterior logits ``log p(z = e_k | x)``, shape ``(batch, K)``."""
        joint = self.mixture.joint_log_prob(cond)
        return {"logits": joint - torch.logsumexp(joint, dim=-1, keepdim=True)}

    def get_params(self, x_dict: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        """``{"probs": p(z = e_k | x)}``, shape ``(batch, K)``."""
        return {"probs": super().get_params(x_dict)["logits"].exp()}

    get_params._reads_parameters = False  # a view: draws and densities use the logits (exact far in the tails)

    def log_prob_every_state(self, x_dict: Mapping[str, Any]) -> Tensor:
        """:math:`\\log p(z = e_k|x)` for every component, shape ``(K, batch)`` (Pixyz's layout)."""
        x_dict = dict(x_dict)
        self._require(x_dict, self._cond_var)
        return self.forward(**{k: x_dict[k] for k in self._cond_var})["logits"].T

    def get_log_prob(self, x_dict: Mapping[str, Any], sum_features: bool = True,
                     feature_dims: Sequence[int] | None = None, **kwargs: Any) -> Tensor:
        """:math:`\\log p(z|x)` per row given the hidden variable; without it, of every component, shape ``(K, batch)``
        (`log_prob_every_state`, Pixyz's value, as ``log_prob().eval`` gives it)."""
        if type(x_dict) is not dict:
            x_dict = values_dict(x_dict, "get_log_prob", self, self._var + self.input_var)
        if all(map(x_dict.__contains__, self._var)):
            return super().get_log_prob(x_dict, sum_features, feature_dims)
        return self.log_prob_every_state(x_dict)

    def log_prob(self, sum_features: bool = True, feature_dims: Any = None) -> Loss:
        """:math:`\\log p(z|x)` as a Loss: per row given ``z``, else ``(K, batch)`` (see `PosteriorLogProb`)."""
        return PosteriorLogProb(self)

    def prob(self, sum_features: bool = True, feature_dims: Any = None) -> Loss:
        """:math:`p(z|x)` as a Loss: per row given ``z``, else the ``(K, batch)`` responsibilities."""
        return PosteriorLogProb(self, exp=True)


class PosteriorLogProb(LogProb):
    """:math:`\\log p(z|x)` of a `MixturePosterior`: per row when ``z`` is given, for every component
    (shape ``(K, batch)``, Pixyz's layout) when it is not — e.g. an EM step's responsibilities,
    ``mixture.posterior().prob().eval({"x": x})``.

    Args:
        p: the posterior.
        exp: probabilities (`prob`) instead of log-probabilities.
    """

    def __init__(self, p: MixturePosterior, exp: bool = False) -> None:
        super().__init__(p)
        self._input_var = list(p.input_var)  # the hidden variable is optional
        self.exp = exp

    def _value(self, ctx: EvalContext) -> Tensor:
        value = self.p.get_log_prob(ctx.values)  # per row given z, else (K, batch)
        return value.exp() if self.exp else value

    def _render(self, fmt: dict[str, str]) -> str:
        return symbol(self.p, fmt) if self.exp else super()._render(fmt)
