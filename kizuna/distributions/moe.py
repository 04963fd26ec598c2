r"""`MixtureOfNormal`: a mixture of Gaussian experts (MMVAE, Shi et al. 2019, arXiv:1911.03393).

.. math::

    p(z \mid x_1..x_n) = \sum_{i \in \mathcal{P}} \tilde w_i\, p_i(z|x_i), \qquad
    \tilde w_i = \frac{w_i}{\sum_{j \in \mathcal{P}} w_j}

where :math:`\mathcal{P}` holds the experts whose inputs are present in ``x_dict`` (missing
modalities are left out and the weights renormalised); the weights default to uniform.
The log-density is :math:`\operatorname{logsumexp}_i (\log \tilde w_i + \log p_i(z|x_i))`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kizuna.distributions.base import (
    Distribution,
    Tensor,
    XDict,
    apply_keeping_exact,
    batch_size_of,
    repeat_batch,
)
from kizuna.distributions.mixture import components_log_prob, summed_log_prob, union_cond
from kizuna.distributions.poe import normal_experts, warn_weights_not_learnt
from kizuna.distributions.torch_dist import validation_enabled
from kizuna.formula.expr import values_dict
from kizuna.formula.memo import remember, step_mark, tagged

_WEIGHTS_SCORE = "weights score"  # the memo's tag of a draw's log-density as a function of the learnable weights


def weights_score(draws: Iterable[Any]) -> Tensor | None:
    r"""For the draws among ``draws`` (the very tensors) that a `MixtureOfNormal` with learnable weights returned in
    this evaluation, :math:`\log q(z) = \operatorname{logsumexp}_i (\log \tilde w_i + \log p_i(z))` per row with the
    experts' densities detached (its gradient reaches the weights only): the score-function term that an expectation
    (and `IWAE`) adds for the weights, the expert's draw being differentiated through for the rest (see
    `MixtureOfNormal`). Summed over those draws; ``None`` if there is none."""
    total = None
    for _, _, inputs, value in tagged(_WEIGHTS_SCORE):
        if any(inputs[0] is d for d in draws):
            total = value if total is None else total + value
    return total


def has_learnable_weights(p: Distribution) -> bool:
    """Whether ``p`` holds a `MixtureOfNormal` with learnable weights (an ``nn.Parameter``), itself or inside (a factor
    of a product, renamed, or of a marginal's joint: found among its submodules), whose draws may then get the weights'
    score term (`weights_score`; recorded at a draw while the weights require grad). For a loss that decides once,
    from the formula, whether to collect the score terms of its draws (`IterativeLoss`)."""
    return any(isinstance(m, MixtureOfNormal) and isinstance(m.weights, nn.Parameter) for m in p.modules())


class MixtureOfNormal(Distribution):
    r"""A weighted mixture of Normal experts over one variable (see module docstring).

    Args:
        p: the Normal experts :math:`p_i(z|x_i)`, all over the same variable.
        weights: positive mixture weights, one per expert (normalised here); uniform when
            ``None``. An ``nn.Parameter`` is learnable (give it unnormalised positive values). A floating
            tensor is copied in its own dtype (an integer one, and numbers, in the default dtype; numbers
            stay exact after ``.double()`` and beside wider experts, e.g. float64 ones).
        name: the symbol of the mixture.
        features_shape: see `Distribution`.
        weight_modalities: Pixyz's name of ``weights`` (the same argument; give one of the two).

    Sampling picks an expert per row with the renormalised weights, then draws from it.
    ``has_reparam`` is True in this sense: *given the chosen expert* the draw is the expert's
    reparameterised one, so gradients reach the experts' parameters; the discrete choice is
    not differentiated through. For learnable weights (an ``nn.Parameter`` that requires grad),
    an `Expectation` over the mixture (or over a product holding it; also the Monte Carlo KL and
    entropy, built on it) adds the weights' score-function term :math:`f\,\nabla_w \log q(z)` at
    each draw, the experts' densities held fixed (:math:`\sum_i r_i(z)\,\nabla_w \log \tilde w_i`
    with the responsibilities :math:`r_i(z)`: the chosen expert's score
    :math:`\nabla_w \log \tilde w_c` averaged given :math:`z`, so with less variance), so that
    the gradient is unbiased for the weights as for the experts. `IWAE` with the mixture among
    the factors of its proposal adds the same term for each of its ``k`` draws, times the
    bound less VIMCO's leave-one-out baseline (see `IWAE`). In `IterativeLoss`, a draw that
    reaches later steps (a carried state) also adds it to every later step's cost, as a
    score-function draw does (the choice at step :math:`s` changes the costs of the steps
    after it). Other losses that draw from the
    mixture (MMD, Wasserstein, the adversarial losses), and a draw transformed before the
    expectation sees it, add no such term: the weights then get only the explicit gradient
    of the terms that score the mixture (biased; for :math:`-\log q` its mean is 0).
    Fixed weights add nothing. MMVAE instead averages over the experts with stratified sampling,
    one draw from each: `sample_each`.

    Like `ProductOfNormal`, the conditioning variables are optional (``input_var`` is empty),
    but at least one expert must have its inputs.

    Example:
        >>> from kizuna.distributions import Normal
        >>> qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
        >>> qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")
        >>> q = MixtureOfNormal([qx, qy], name="q")
        >>> print(q)
        q(z|x,y) = w_0 q(z|x) + w_1 q(z|y)
        >>> sorted(q.sample_each({"x": torch.zeros(3, 2)}))
        [0]
    """

    def __init__(self, p: Sequence[Distribution], weights: Tensor | Sequence[float] | None = None,
                 name: str = "p", features_shape: Sequence[int] | torch.Size = (),
                 weight_modalities: Tensor | Sequence[float] | None = None) -> None:
        if weight_modalities is not None:
            if weights is not None:
                raise TypeError("MixtureOfNormal: weights and weight_modalities (Pixyz's name of weights) are the "
                                f"same argument; give one, got weights={weights!r} and "
                                f"weight_modalities={weight_modalities!r}")
            weights = weight_modalities
        experts = normal_experts(p, "MixtureOfNormal")
        super().__init__(experts[0].var, union_cond(experts), name, features_shape)
        self.p = nn.ModuleList(experts)
        if isinstance(weights, nn.Parameter):
            self.weights = weights
        else:
            dtype = torch.get_default_dtype()
            if weights is None:
                w = torch.ones(len(experts), dtype=dtype)
            elif isinstance(weights, Tensor):  # a copy (the caller's tensor stays theirs), in its own floating dtype:
                # a float64 tensor was cast to the default float32, its rounding kept after .double()
                # (the copy took the weights out of the caller's graph, silently)
                warn_weights_not_learnt(weights, "MixtureOfNormal", "weights", "it is copied into a buffer",
                                        ". To learn the weights, pass nn.Parameter(...)")
                w = weights.detach().clone()
                w = w if w.is_floating_point() else w.to(dtype)
            else:
                w = torch.as_tensor(weights, dtype=dtype)
            self.register_buffer("weights", w)
            if not isinstance(weights, Tensor):  # numbers (or the default ones): exact after .double() and after
                # to_empty from the meta device (_apply)
                self.__dict__["_exact_weights"] = torch.as_tensor(
                    [1.0] * len(experts) if weights is None else weights, dtype=torch.float64, device="cpu")
        if self.weights.shape != (len(experts),) or (
                not self.weights.is_meta and not bool(((self.weights > 0) & self.weights.isfinite()).all())):
            raise ValueError(
                f"MixtureOfNormal: weights must be {len(experts)} positive finite numbers (one per expert), "
                f"got {self.weights.detach().tolist()}"
            )

    def _apply(self, fn: Any, recurse: bool = True) -> MixtureOfNormal:
        """``.to()`` / ``.double()``: weights given as numbers stay those numbers in the new dtype (0.3 was kept as
        float32's 0.30000001192)."""
        exact = self.__dict__.get("_exact_weights")
        return apply_keeping_exact(self, lambda: super(MixtureOfNormal, self)._apply(fn, recurse),
                                   {} if exact is None else {"weights": exact})

    @property
    def input_var(self) -> list[str]:
        return []

    @property
    def has_reparam(self) -> bool:
        return True

    @property
    def distribution_name(self) -> str:
        return "Mixture of Normal"

    def _require(self, x_dict: Mapping[str, Any], names: Iterable[str]) -> None:
        # conditioning variables are optional: a missing one masks its expert out
        super()._require(x_dict, [n for n in names if n not in self._cond_var])

    def _factorized_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        terms = [fmt["weighted"].format(i, e._factorized_text(fmt, rename)) for i, e in enumerate(self.p)]
        return " + ".join(terms)

    def _factor_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        """Bracketed, so that the sum's scope stays clear inside a product."""
        return fmt["paren"].format(self._factorized_text(fmt, rename))

    # ------------------------------------------------------------- experts
    def present(self, x_dict: Mapping[str, Any]) -> list[int]:
        """Indices of the experts whose conditioning variables are all in ``x_dict``."""
        found = [i for i, e in enumerate(self.p) if all(c in x_dict for c in e.cond_var)]
        if not found:
            raise ValueError(
                f"{self.prob_text}: no expert has its inputs; give at least one of {', '.join(self._cond_var)}"
            )
        return found

    def log_weights(self, x_dict: Mapping[str, Any], dtype: torch.dtype | None = None) -> tuple[list[int], Tensor]:
        r"""The present experts and :math:`\log \tilde w_i`, renormalised over them (in ``dtype``). Weights given as
        numbers are the exact numbers in a ``dtype`` wider than the buffer's (`_weights_exact_in`)."""
        idx = self.present(x_dict)
        if isinstance(self.weights, nn.Parameter) and validation_enabled() \
                and not bool(((self.weights > 0) & self.weights.isfinite()).all()):  # a host read: a check
            # (a training step took a learnable weight below 0: every log-density NaN, named nowhere)
            raise ValueError(f"{self.prob_text}: the learnable weights must stay positive and finite, got "
                             f"{self.weights.detach().tolist()}; they are used as given: keep them positive (e.g. "
                             "clamp them after each step, or take smaller steps)")
        exact = None if dtype is None else self._weights_exact_in(dtype)
        logw = (self.weights[idx].to(dtype or self.weights.dtype) if exact is None else exact[idx]).log()
        return idx, logw - torch.logsumexp(logw, 0)

    def _weights_exact_in(self, dtype: torch.dtype) -> Tensor | None:
        """The weights given as numbers, exact in ``dtype`` where it is wider than the buffer's and the buffer still
        holds those numbers (else the buffer in ``dtype``; None where it does not apply): float64 experts were mixed
        with float32's 0.30000001192 for 0.3 (a mean off by 1.7e-8), where the families take numbers exactly in a
        wider value's dtype (`TorchDistribution._scoring_params`). The buffer is compared with the numbers on its
        device at every call (``torch.where``: no host read, no graph break under ``torch.compile``), so an in-place
        write (``weights.data.copy_``, ``load_state_dict``) is seen; weights that require grad (made an
        ``nn.Parameter`` after construction, or a ``torch.func`` transform's) are not replaced by a constant."""
        numbers, w = self.__dict__.get("_exact_weights"), self._buffers.get("weights")
        if numbers is None or w is None or w.requires_grad or w.dtype == dtype \
                or torch.promote_types(w.dtype, dtype) != dtype or w.is_meta:
            return None
        keep = not torch.compiler.is_compiling() and not torch.is_inference_mode_enabled()
        cache = self.__dict__.setdefault("_exact_weights_in", {})
        hit = cache.get((dtype, w.dtype, w.device)) if keep else None
        if hit is None:  # (the numbers in the buffer's dtype and in ``dtype``: constants, never stale)
            hit = (numbers.to(dtype=w.dtype, device=w.device), numbers.to(dtype=dtype, device=w.device))
            if keep:
                cache[(dtype, w.dtype, w.device)] = hit
        return torch.where((w == hit[0]).all(), hit[1], w.to(dtype))

    def _stacked(self, tensors: list[Tensor]) -> Tensor:
        """The present experts' draws or moments ``(batch, *features)`` stacked on dim 0, their shapes checked."""
        features = {tuple(t.shape[1:]) for t in tensors}
        if len(features) > 1:  # (a raw "size of tensor a (2) must match the size of tensor b (3)")
            raise ValueError(f"{self.prob_text}: the experts disagree on the shape of {self._var[0]}: "
                             f"{sorted(features)}")
        return torch.stack(torch.broadcast_tensors(*tensors))

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        return self._summed(x_dict, sum_features, None)

    def _log_prob_dims(self, x_dict: XDict, dims: Sequence[int]) -> Tensor:
        return self._summed(x_dict, True, dims)

    def _summed(self, x_dict: XDict, sum_features: bool, dims: Sequence[int] | None) -> Tensor:
        """The log-density per draw (logsumexp over the present experts), summed as `get_log_prob` asks."""
        experts = [self.p[i] for i in self.present(x_dict)]
        lp = components_log_prob(self, experts, x_dict, sum_features, dims)  # (*sample_shape, batch, experts)
        per_draw = torch.logsumexp(lp + self.log_weights(x_dict, lp.dtype)[1], dim=-1)
        return summed_log_prob(self, experts, x_dict, per_draw, sum_features, dims)

    # ------------------------------------------------------------ sampling
    def sample_each(self, x_dict: Mapping[str, Any] | None = None, batch_n: int | None = None,
                    reparam: bool = True) -> dict[int, Tensor]:
        """One draw per present expert, ``{expert index: (batch, *features)}`` (reparameterised).

        The stratified estimator of MMVAE averages a per-draw objective over these. Without ``batch_n`` each expert
        draws the rows its own inputs give; an expert given one row beside others' batch is drawn again with the batch's
        rows (one row conditions every row, as in `ProductOfNormal`), and experts of different batches are named.
        """
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_each", self, self.cond_var)
        x_dict = dict(x_dict or {})
        idx = self.present(x_dict)
        var = self._var[0]
        draws = {i: self.p[i]._sample(x_dict, batch_n, reparam)[var] for i in idx}
        if batch_n is not None:
            return draws
        # (the rows were the first named condition's: one row of x beside 5 of y drew q(z|y) with batch_n=1, and
        # failed, or not, by the experts' order)
        rows = {draw.shape[0] for draw in draws.values()} - {1}
        if len(rows) > 1:
            listed = ", ".join(f"{self.p[i].prob_text}: {draw.shape[0]}" for i, draw in draws.items())
            raise ValueError(f"{self.prob_text}: the experts' inputs have different numbers of rows ({listed})")
        if rows:
            b = rows.pop()
            draws.update({i: self.p[i]._sample(x_dict, b, reparam)[var] for i, draw in draws.items()
                          if draw.shape[0] != b})  # its one row drawn anew for each row
        return draws

    def _sample_n(self, x_dict: XDict, repeated: XDict, n: int, batch_n: int | None, reparam: bool) -> XDict:
        """See `Distribution._sample_n`: an input of one row beside a batch (or with ``batch_n``) is made one row per
        row of the draws before it is repeated, as a single expert draws it. Repeated ``n`` times, its one row was read
        as ``n`` rows against the batch's ``rows * n`` and the draw refused (``sample({"x": x6, "y": y1},
        sample_shape=(3,))``: "the experts' inputs have different numbers of rows")."""
        rows = batch_n if batch_n is not None else batch_size_of(x_dict)
        if n > 1 and rows is not None and rows != 1:
            repeated = {k: repeat_batch(one.expand(rows, *one.shape[1:]), n)
                        if isinstance(one := x_dict.get(k), Tensor) and one.dim() > 0 and one.shape[0] == 1 else v
                        for k, v in repeated.items()}
        return super()._sample_n(x_dict, repeated, n, batch_n, reparam)

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        idx, logw = self.log_weights(x_dict)
        draws = self.sample_each(x_dict, batch_n, reparam)
        stacked = self._stacked([draws[i] for i in idx]).movedim(0, 1)  # (batch, E, *features)
        b = stacked.shape[0]
        choice = torch.multinomial(logw.exp().expand(b, len(idx)), 1).squeeze(1)
        z = stacked[torch.arange(b, device=stacked.device), choice.to(stacked.device)]
        if reparam and self.weights.requires_grad and torch.is_grad_enabled() and step_mark() is not None:
            # the choice is not differentiated: record the weights' score of this draw for an expectation over it
            with torch.no_grad():  # (the experts' densities at the draw: held fixed)
                lp = components_log_prob(self, [self.p[i] for i in idx], {**x_dict, self._var[0]: z})
            remember(self, _WEIGHTS_SCORE, [z], torch.logsumexp(lp + logw.to(lp.dtype), dim=-1))
        return {self._var[0]: z}

    # ------------------------------------------------------------- moments
    def _moments(self, x_dict: Mapping[str, Any] | None) -> tuple[Tensor, Tensor, Tensor]:
        x_dict = dict(x_dict or {})
        idx = self.present(x_dict)
        params = [self.p[i].get_dist(x_dict, independent=False) for i in idx]
        n_features = len(self.features_shape)  # a moment without its batch dimension gets one (of one row)
        means = [d.mean if d.mean.dim() > n_features else d.mean.unsqueeze(0) for d in params]
        varis = [d.variance if d.variance.dim() > n_features else d.variance.unsqueeze(0) for d in params]
        mean, var = self._stacked(means), self._stacked(varis)
        w = self.log_weights(x_dict, mean.dtype)[1].exp().reshape(-1, *[1] * (mean.dim() - 1))
        return w, mean, var

    def sample_mean(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        r""":math:`\sum_i \tilde w_i \mu_i`."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_mean", self, self.cond_var)
        w, mean, _ = self._moments(x_dict)
        return (w * mean).sum(0)

    def sample_variance(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        r""":math:`\sum_i \tilde w_i \big(\sigma_i^2 + (\mu_i - \mu)^2\big)` with :math:`\mu = \sum_i \tilde w_i \mu_i`
        (centred, as `MixtureModel.sample_variance`: the raw moments cancelled in float32 for large means)."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_variance", self, self.cond_var)
        w, mean, var = self._moments(x_dict)
        return (w * (var + (mean - (w * mean).sum(0)) ** 2)).sum(0)
