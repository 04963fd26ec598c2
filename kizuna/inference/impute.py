r"""Imputation: completing the missing entries of :math:`x` under a trained latent-variable model.

Given :math:`p(x, z) = p(x|z)p(z)`, an encoder :math:`q(z|x)` and a boolean mask (True =
observed), the target is the conditional :math:`p(x_{mis}|x_{obs}) = \int p(x_{mis}|z)\,
p(z|x_{obs})\,dz`. Two samplers are offered:

* **importance resampling** (``impute_importance``, exact as ``k`` grows): draw
  :math:`z_i \sim q(z|\tilde x)` given the row with its gaps filled (:math:`\tilde x`), weight

  .. math:: w_i \propto \frac{p(x_{obs}|z_i)\,p(z_i)}{q(z_i|\tilde x)}

  (see `kizuna.inference.masked`; by default a share of the draws comes from the prior and the
  denominator is the mixture density, see `impute_importance`), resample :math:`z` by the
  weights and draw :math:`x_{mis} \sim p(x_{mis}|z)`. The posterior mean is the
  Rao-Blackwellised :math:`\sum_i \bar w_i\,\mathbb E[x_{mis}|z_i]`. A row with no observed
  entry gets weights :math:`p(z)/q(z|\tilde x)`: draws from the prior predictive.
* **pseudo-Gibbs** (``impute_gibbs``; Rezende et al. 2014, arXiv:1401.4082, appendix F):
  iterate :math:`z \sim q(z|\tilde x)`, :math:`\tilde x_{mis} \leftarrow` a draw (or the mean)
  of :math:`p(x_{mis}|z)`. It is a true Gibbs sampler when :math:`q(z|x) = p(z|x)`, and an
  approximation otherwise; it needs no density of :math:`q`. Like any Gibbs sampler it mixes
  slowly when :math:`z` and :math:`x_{mis}` determine each other closely (little decoder noise,
  few observed entries): for a linear-Gaussian model the :math:`z`-chain of a row with nothing
  observed is autoregressive with coefficient :math:`I - \operatorname{Cov}[z|x]`.

Both return an `Imputation`: conditional samples and the posterior mean, observed entries
kept as given. Missing entries of the input may hold anything, NaN included. As in
`kizuna.inference.anomaly_score`, floating data is converted to the floating dtype of the distributions
that read it (not the prior: each encoder that takes it as input by its network's first parameter, else each
decoder by its widest parameter, docs/uses.md; integer data of the masked variable too, and ``init``) and
moved to the models' device, where the results are; tensors the models do not read may be scalars. The data
may be tensors, numpy arrays or (nested) lists of numbers, and the mask a boolean tensor, numpy array or nested list
of booleans, as `kizuna.inference.anomaly_score` and `kizuna.metrics.log_likelihood` take the data.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from kizuna._data import check_count, one_number
from kizuna.distributions.base import Distribution, flat_rows, repeat_batch
from kizuna.distributions.joint import JointDistribution
from kizuna.formula.expr import values_dict
from kizuna.inference._checks import (
    as_tensors,
    batch_rows,
    check_mask,
    fill_missing,
    model_dtype,
    on_models,
    own_draws,
    require,
)
from kizuna.inference.masked import (
    decoder_of,
    masked_log_joint,
    masked_log_prob,
    placeholder,
    raise_for_autoregressive,
    raise_for_observed,
)
from kizuna.metrics.likelihood import require_prior

Tensor = torch.Tensor


@dataclass
class Imputation:
    """The result of an imputation.

    Attributes:
        samples: completed rows drawn from :math:`p(x_{mis}|x_{obs})`, ``(n_samples, N, *features)``.
        mean: the posterior mean :math:`\\mathbb E[x_{mis}|x_{obs}]` completed into the rows, ``(N, *features)``.
        ess: the effective sample size :math:`(\\sum w)^2 / \\sum w^2` of the importance weights per
            row (``None`` for pseudo-Gibbs).
    """

    samples: Tensor
    mean: Tensor
    ess: Tensor | None = None


def _prepare(p_joint: Distribution, q: Distribution, x_dict: Mapping[str, Any], mask: Any, var: str | None,
             init: Tensor | None, who: str) -> tuple[str, Distribution, dict[str, Any], Tensor, Tensor]:
    """Checked inputs: the masked variable, its decoder, the other inputs, the filled rows and the mask."""
    names = q.input_var if var is None else [var, *[v for v in q.input_var if v != var]]
    x_dict = values_dict(x_dict, who, names=names)  # (a bare tensor was torch's error in ``v in x_dict``)
    if var is None:
        candidates = [v for v in q.cond_var if v in x_dict]
        if len(candidates) != 1:
            raise ValueError(
                f"{who}: say which variable the mask applies to (var=...); the encoder {q.prob_text} "
                f"conditions on {', '.join(q.cond_var) or 'nothing'}"
            )
        var = candidates[0]
    require(x_dict, [var, *[v for v in q.input_var if v != var]], who)
    read = {var, *q.input_var, *[v for v in p_joint.var + p_joint.input_var if v not in q.var]}  # as anomaly_score
    x_dict = as_tensors(x_dict, [k for k in x_dict if k in read])  # (numpy arrays and lists were refused)
    # the masked variable always (an array was filtered out, and the error said there were no inputs)
    names = [k for k, v in x_dict.items() if k == var or isinstance(v, Tensor) and (k in read or v.dim() > 0)]
    batch_rows(x_dict, names, who)
    decoder = decoder_of(p_joint, var, who)
    raise_for_autoregressive(decoder, who)  # (before, an unrelated "no closed-form mean")
    dtype = model_dtype(x_dict, p_joint, q)
    x_dict = on_models(x_dict, p_joint, q)
    x = x_dict[var]
    if isinstance(x, Tensor) and not x.is_floating_point():  # counts or 0/1 labels: imputed values are means
        x = x.to(dtype or torch.get_default_dtype())
    mask = check_mask(mask, x, var, who)
    filled = fill_missing(x, mask, init, var, who)
    others = {k: v for k, v in x_dict.items() if k != var}
    return var, decoder, others, filled, mask


def _check_samples(n_samples: Any, who: str) -> int:
    """``n_samples`` as a Python int: any integer >= 1, taken as `check_count` takes ``k`` (a numpy one or a 0-d integer
    tensor too: they were refused as "must be a positive integer, got np.int64(5)")."""
    value = one_number(n_samples, arrays=False)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{who}: n_samples (completed rows per row) must be a positive integer, got {n_samples!r}")
    return int(value)


def _rows(values: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {k: v[start:stop] if isinstance(v, Tensor) and v.dim() > 0 else v for k, v in values.items()}


def impute_importance(
    p_joint: Distribution,
    q: Distribution,
    x_dict: Mapping[str, Any],
    mask: Any,
    var: str | None = None,
    k: int = 1000,
    n_samples: int = 10,
    defensive: float = 0.2,
    init: Tensor | None = None,
    batch_size: int = 100,
    k_chunk: int = 250,
) -> Imputation:
    r"""Importance-resampling imputation (see the module docstring), without gradients.

    The proposal is the defensive mixture :math:`(1-\alpha)\,q(z|\tilde x) + \alpha\,p(z)`
    (Hesterberg 1995), with a fixed share :math:`\alpha` of the draws taken from the prior and
    every draw weighted by the mixture density (Owen & Zhou 2000). The prior share bounds the
    weights by :math:`p(x_{obs}|z)/\alpha`: an encoder fed a filled-in row is sharper than
    :math:`p(z|x_{obs})` and would otherwise give weights of huge variance. Draws under which the
    observed values have zero density (weight 0) add nothing; a row with no draw of positive weight
    is a ValueError naming the row (raise ``k`` or ``defensive``, or check the row).

    Args:
        p_joint: :math:`p(x, z)`; the factor defining ``var`` must factorise over entries, and
            the factors over the variables of ``q`` form the prior :math:`p(z)`. A ``p_joint``
            without that prior (the decoder alone, conditioned on ``z``) is a ValueError, whatever
            ``defensive``: the weights need :math:`p(z)`.
        q: the encoder :math:`q(z|x)`, given the filled rows.
        x_dict: the data (tensors, numpy arrays or lists of numbers); other entries (e.g. a label) are passed to ``q``
            and the decoder.
        mask: boolean (a tensor, numpy array or nested list), the shape of ``x_dict[var]``; True marks observed
            entries.
        var: the masked variable (default: the one variable of ``x_dict`` that ``q`` reads).
        k: importance draws per row; ``n_samples``: completed rows returned per row.
        defensive: :math:`\alpha`, the share of draws from the prior (0 uses ``q`` alone). A prior
            whose parameters are numbers and that has no ``features_shape`` (``Normal(var=["z"],
            loc=0.0, scale=1.0)``) draws every entry of ``q``'s draws independently, as if given
            ``features_shape``. Factors over ``q``'s variables that do not make a draw of ``q`` (``q``
            also draws an auxiliary variable of which ``p_joint`` has no factor), or a prior whose
            draws cannot make ``q``'s, are a ValueError advising ``defensive=0``.
        init: values for the missing entries fed to ``q`` (broadcast to the data); default:
            each feature's mean over the rows observing it.
        batch_size, k_chunk: rows and draws evaluated at once (memory bound).

    Example:
        >>> from kizuna.distributions import Normal
        >>> prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1], name="p_prior")
        >>> class Decoder(Normal):  # p(x|z): both entries are z plus unit noise
        ...     def forward(self, z):
        ...         return {"loc": z.expand(-1, 2), "scale": torch.ones(len(z), 2)}
        >>> class Encoder(Normal):  # q(z|x): a rough proposal is enough
        ...     def forward(self, x):
        ...         return {"loc": x.mean(1, keepdim=True), "scale": torch.ones(len(x), 1)}
        >>> lik, q = Decoder(var=["x"], cond_var=["z"]), Encoder(var=["z"], cond_var=["x"], name="q")
        >>> x, mask = torch.tensor([[2.0, float("nan")]]), torch.tensor([[True, False]])
        >>> _ = torch.manual_seed(0)
        >>> out = impute_importance(lik * prior, q, {"x": x}, mask, k=4000)
        >>> out.mean.round(decimals=1)  # E[x_2 | x_1 = 2] = E[z | x_1 = 2] = 1
        tensor([[2., 1.]])
        >>> out.samples.shape  # n_samples completed rows per row
        torch.Size([10, 1, 2])
    """
    who = "impute_importance"
    n_samples = _check_samples(n_samples, who)
    for name, value in (("k", k), ("batch_size", batch_size), ("k_chunk", k_chunk)):
        check_count(f"{who}: {name}", value, 1)  # 0, -1 and 2.5 failed inside range() or torch.cat
    if isinstance(defensive, bool) or not isinstance(defensive, numbers.Real) or not 0.0 <= defensive <= 1.0:
        raise ValueError(f"{who}: defensive (the prior's share of the proposal) must be a number in [0, 1], got "
                         f"{defensive!r}")
    # whatever defensive is (with defensive=0, which the error below advises, the weights p(x_obs|z) / q(z|x~) left
    # p(z) out, and the mean was that of another posterior)
    require_prior(p_joint, q, who, "the importance weights would not be those of p(z|x_obs)")
    var, decoder, others, filled, mask = _prepare(p_joint, q, x_dict, mask, var, init, who)
    proposal = _Proposal(p_joint, q, var, k, k_chunk, defensive)
    means, samples, ess = [], [], []
    from kizuna.modules.vae import evaluating  # (imported on use, as in log_likelihood: kizuna.modules is large)

    with torch.no_grad(), evaluating(p_joint, q):
        for start in range(0, filled.shape[0], batch_size):
            stop = start + batch_size
            m, s, e = _importance_rows(p_joint, proposal, decoder, var, filled[start:stop], mask[start:stop],
                                       _rows(others, start, stop), n_samples, start)
            means.append(m)
            samples.append(s)
            ess.append(e)
    return Imputation(torch.cat(samples, 1), torch.cat(means), torch.cat(ess))


class _Proposal:
    """The defensive mixture: per chunk, a fixed number of draws from q and from the prior."""

    def __init__(self, p_joint: Distribution, q: Distribution, var: str, k: int, k_chunk: int, alpha: float) -> None:
        if k < 1 or k_chunk < 1:
            raise ValueError(f"impute_importance: k and k_chunk must be positive, got k={k}, k_chunk={k_chunk}")
        factors = [f for f in p_joint.factors() if set(f.var) <= set(q.var)]
        if alpha > 0 and sorted(v for f in factors for v in f.var) != sorted(q.var):  # (p(z) is there, as
            # `require_prior` checked, but q draws more, e.g. an auxiliary variable p_joint has no factor of)
            raise ValueError(
                f"impute_importance: the factors of {p_joint.prob_text} over {', '.join(q.var)} do not form a "
                "prior to draw from; use defensive=0"
            )
        self.q, self.alpha_given = q, alpha
        self.prior = None if alpha == 0 else factors[0] if len(factors) == 1 else JointDistribution(factors)
        # (from q, from the prior) per chunk: the prior's draws spread over the chunks by cumulative rounding, so that
        # a small share still gets round(alpha * k) of them (rounding each chunk gave none below 1 / (2 k_chunk))
        self.chunks = []
        for start in range(0, k, k_chunk):
            end = min(start + k_chunk, k)
            n_prior = round(alpha * end) - round(alpha * start)
            self.chunks.append((end - start - n_prior, n_prior))
        self.alpha = sum(n for _, n in self.chunks) / k  # the share actually drawn from the prior (0: q alone)
        self.q_shapes: dict[str, torch.Size] | None = None  # the shape of one draw of q, per variable
        self.q_dtypes: dict[str, torch.dtype] = {}  # and its dtype
        self.per_row: int | None = None  # prior draws making one row of q's draws (see `_prior_per_row`)

    def draw(self, values: dict[str, Any], n_q: int, n_p: int) -> dict[str, Tensor]:
        """``n_q`` copies of the rows drawn from q, then ``n_p`` from the prior (sample-major)."""
        parts = []
        if n_q:
            parts.append(own_draws(self.q, {n: repeat_batch(v, n_q) for n, v in values.items()}))
            if self.q_shapes is None:
                self._record(parts[0])
        if n_p:
            assert self.prior is not None
            given = {n: repeat_batch(v, n_p) for n, v in values.items() if n in self.prior.input_var}
            b = next(v.shape[0] for v in values.values() if isinstance(v, Tensor))
            m = self._prior_per_row(values, b)
            drawn = own_draws(self.prior, given, batch_n=b * n_p * m)
            assert self.q_shapes is not None
            # in q's shape (a prior of scalar draws against q's (N, 1) draws made m == 1 with other shapes, which
            # torch.cat refused) and floating dtype, which the networks reading them take (a float32 prior beside
            # bf16 networks: torch.cat made every draw float32, which the decoder refused)
            parts.append({n: self._like_q(n, t.reshape(b * n_p, *self.q_shapes[n])) for n, t in drawn.items()})
        return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}

    def _record(self, draws: Mapping[str, Tensor]) -> None:
        self.q_shapes = {n: t.shape[1:] for n, t in draws.items()}
        self.q_dtypes = {n: t.dtype for n, t in draws.items()}

    def _like_q(self, name: str, t: Tensor) -> Tensor:
        """A floating draw of the prior in the dtype of q's draws of ``name`` (where those are floating)."""
        want = self.q_dtypes[name]
        return t.to(want) if t.is_floating_point() and want.is_floating_point else t

    def _prior_per_row(self, values: dict[str, Any], b: int) -> int:
        """How many of the prior's draws make one draw of q: 1 where their shapes agree; the number of
        entries where the prior draws each entry of q's draw as one number (a prior whose parameters
        are numbers and that has no ``features_shape``, e.g. ``Normal(var=["z"], loc=0.0, scale=1.0)``
        against q's ``(N, d)``), its draws independent across rows, so that ``d`` draws are one row; an
        error otherwise. The shapes are found from draws made with the random state restored after them."""
        if self.per_row is not None:
            return self.per_row
        assert self.prior is not None
        cuda = sorted({t.device.index or 0 for t in values.values() if isinstance(t, Tensor) and t.is_cuda})
        with torch.random.fork_rng(devices=cuda):  # probes: the draws made afterwards are unchanged
            if self.q_shapes is None:
                self._record(own_draws(self.q, values))
            given = {n: v for n, v in values.items() if n in self.prior.input_var}
            p_shapes = {n: t.shape[1:] for n, t in own_draws(self.prior, given, batch_n=b).items()}
        counts = set()
        for n, want in self.q_shapes.items():
            got, lead = p_shapes[n], len(self.q_shapes[n]) - len(p_shapes[n])
            if got == want:
                counts.add(1)
            elif lead > 0 and want[lead:] == got and not self.prior.input_var:
                counts.add(math.prod(want[:lead]))
            else:
                counts.add(0)
        if len(counts) > 1 or 0 in counts:
            shapes = ", ".join(f"{n} of shape {tuple(p_shapes[n])} (q: {tuple(s)})" for n, s in self.q_shapes.items())
            raise ValueError(
                f"impute_importance: the prior {self.prior.prob_text} draws {shapes} per row, which do not make "
                "q's draws; give the prior features_shape (the shape of one draw of q), or use defensive=0"
            )
        self.per_row = counts.pop()
        return self.per_row

    def log_prob(self, values: dict[str, Any]) -> Tensor:
        r""":math:`\log[(1-\alpha) q(z|\tilde x) + \alpha p(z)]` per row."""
        if self.prior is None or self.alpha == 0:
            return self.q.get_log_prob(values)
        if self.alpha == 1:
            return self.prior.get_log_prob(values)
        return torch.logaddexp(self.q.get_log_prob(values) + math.log1p(-self.alpha),
                               self.prior.get_log_prob(values) + math.log(self.alpha))


def _importance_rows(p_joint: Distribution, proposal: _Proposal, decoder: Distribution, var: str, x: Tensor,
                     mask: Tensor, others: dict[str, Any], n_samples: int, first: int) -> tuple[Tensor, Tensor, Tensor]:
    """The posterior mean, the completed rows and the ESS of rows ``first, first + 1, ...`` of the data.

    The Rao-Blackwellised mean accumulates chunk by chunk against the running maximum of the log-weights; a
    row whose draws so far all have weight 0 (log-weight -inf) keeps a zero sum (its running maximum is
    taken as 0, not -inf, so that no -inf - -inf = NaN enters)."""
    b, ones = x.shape[0], [1] * (x.dim() - 1)
    log_w, draws = [], []
    acc = torch.zeros_like(x)
    peak = torch.full((b,), -torch.inf, dtype=x.dtype, device=x.device)
    for n_q, n_p in proposal.chunks:
        c = n_q + n_p
        z = proposal.draw({var: x, **others}, n_q, n_p)
        values = {var: repeat_batch(x, c), **{n: repeat_batch(v, c) for n, v in others.items()}, **z}
        mean = decoder.sample_mean(values)
        lw = (masked_log_joint(p_joint, values, var, repeat_batch(mask, c), "impute_importance", fill=mean)
              - proposal.log_prob(values)).reshape(c, b)
        mean = mean.reshape(c, *x.shape)
        new_peak = torch.maximum(peak, lw.max(0).values)
        shift = torch.where(new_peak == -torch.inf, 0.0, new_peak)  # no finite weight yet: -inf - -inf was NaN
        scale = (peak - shift).exp()  # 0 while peak = -inf
        w = (lw - shift).exp()
        acc = acc * scale.reshape(b, *ones) + (w.reshape(c, b, *ones) * mean).sum(0)
        peak = new_peak
        log_w.append(lw)
        draws.append({n: t.reshape(c, b, *t.shape[1:]) for n, t in z.items()})
    lw = torch.cat(log_w)
    _check_weights(lw, first)
    weights = torch.softmax(lw, 0)
    post_mean = acc / (lw - peak).exp().sum(0).reshape(b, *ones)
    pick = torch.multinomial(weights.T, n_samples, replacement=True).T  # (n_samples, b) indices into k
    cols = torch.arange(b, device=x.device).expand(n_samples, b)
    chosen = {n: torch.cat([d[n] for d in draws])[pick, cols].flatten(0, 1) for n in draws[0]}
    given = {n: repeat_batch(v, n_samples) for n, v in others.items()}
    x_new = decoder.sample({**given, **chosen}, return_all=False)[var].reshape(n_samples, *x.shape)
    return torch.where(mask, x, post_mean), torch.where(mask, x, x_new), 1.0 / weights.pow(2).sum(0)


def _check_weights(lw: Tensor, first: int) -> None:
    """An error naming the first row (counting from ``first``) whose log-weights ``(k, b)`` have no finite
    value, or hold NaN or +inf (the softmax and the mean of such a row are NaN)."""
    bad = lw.isnan() | (lw == torch.inf)
    if bool(bad.any()):
        row = int(bad.any(0).nonzero()[0, 0])
        raise ValueError(
            f"impute_importance: row {first + row} has a NaN or infinite importance log-weight "
            "(log p(x_obs, z) - log of the proposal density); check the model and the encoder on this row"
        )
    none = ~torch.isfinite(lw).any(0)
    if bool(none.any()):
        row = int(none.nonzero()[0, 0])
        raise ValueError(
            f"impute_importance: row {first + row} has no draw of finite weight: the model gives its observed "
            f"values zero density under each of the {lw.shape[0]} draws of z (an impossible row for the model, "
            "or a proposal that misses every z that explains it: raise k or defensive)"
        )


def impute_gibbs(
    p_joint: Distribution,
    q: Distribution,
    x_dict: Mapping[str, Any],
    mask: Any,
    var: str | None = None,
    n_iter: int = 50,
    n_samples: int = 10,
    draw: bool = True,
    init: Tensor | None = None,
) -> Imputation:
    """Pseudo-Gibbs imputation (see the module docstring), ``n_samples`` chains per row, without gradients.

    Args:
        p_joint, q, x_dict, mask, var, init: see `impute_importance`.
        n_iter: sweeps :math:`z \\sim q(z|\\tilde x),\\ \\tilde x_{mis} \\sim p(x_{mis}|z)` per chain.
        n_samples: chains per row; their final states are ``samples``.
        draw: refill the gaps with draws of :math:`p(x_{mis}|z)` (a Markov chain) or, when False,
            with its mean (the deterministic variant often used for images).

    ``mean`` averages :math:`\\mathbb E[x_{mis}|z]` over the chains' final :math:`z`.
    """
    who = "impute_gibbs"
    n_samples = _check_samples(n_samples, who)
    check_count(f"{who}: n_iter", n_iter, 1)  # 2.5 failed inside range()
    var, decoder, others, filled, mask = _prepare(p_joint, q, x_dict, mask, var, init, who)
    given = {n: repeat_batch(v, n_samples) for n, v in others.items()}
    x0, m = repeat_batch(filled, n_samples), repeat_batch(mask, n_samples)
    state = x0
    from kizuna.modules.vae import evaluating  # (imported on use, as in log_likelihood: kizuna.modules is large)

    with torch.no_grad(), evaluating(p_joint, q):
        for sweep in range(n_iter):
            values = {**given, var: state}
            z = own_draws(q, values)
            cond = {**given, **z}
            mean = decoder.sample_mean(cond)
            if sweep == 0:
                _check_drawn_shape(decoder, mean, x0, n_samples, "a mean")
                _check_decoder(decoder, {**cond, var: x0}, m, mean, who)
            new = decoder.sample(cond, return_all=False)[var] if draw else mean
            if sweep == 0 and draw:
                _check_drawn_shape(decoder, new, x0, n_samples, "draws")
            state = torch.where(m, x0, new)
    shape = (n_samples, *filled.shape)
    post_mean = torch.where(mask, filled, mean.reshape(shape).mean(0))
    return Imputation(state.reshape(shape), post_mean)


def _check_decoder(decoder: Distribution, values: dict[str, Any], mask: Tensor, mean: Tensor, who: str) -> None:
    r"""The first sweep's checks of the decoder against the chains' rows ``values[var]`` (the sweeps never score a
    density): the observed values in its support, in its own words (an observed 2 under a Bernoulli was imputed), and,
    where a row is partly observed, a decoder that factorises over entries, as `impute_importance` requires (the
    sweeps refill :math:`x_{mis}` from :math:`p(x_{mis}|z)`, which is :math:`p(x_{mis}|x_{obs}, z)` only then: a
    full-covariance Normal, a one-hot Categorical or a Multinomial gave wrong conditionals and rows outside the
    support without a word). Rows observed or missing in full need no factorisation: a missing row is drawn whole."""
    var = decoder.var[0]
    rows = flat_rows(mask)
    if bool((rows.all(1) | ~rows.any(1)).all()):
        filler = None if bool(mask.all()) else placeholder(decoder, values, values[var], mean)
        x = values[var] if filler is None else torch.where(mask, values[var], filler)
        raise_for_observed(decoder, {**values, var: x}, var, filler)
    elif not _whole_units(decoder, values, mask):
        masked_log_prob(decoder, values, mask, who, fill=mean)  # (the value is not needed, only its checks)


def _whole_units(decoder: Distribution, values: dict[str, Any], mask: Tensor) -> bool:
    """Whether the decoder factorises over units coarser than the entries of ``x`` (its per-entry log-density has
    a leading part of x's shape: ``(N, D)`` for D one-hot Categoricals of K levels, x ``(N, D, K)``) and the mask
    observes or leaves out each unit whole: then :math:`p(x_{mis}|z)` is still :math:`p(x_{mis}|x_{obs}, z)`, as the
    sweeps need (a mask splitting a unit goes to `masked_log_prob`'s refusal). The observed values are checked in the
    decoder's support, with a draw of the decoder (always in it) in the missing units. The draw is taken from a forked
    random stream: the chains' draws are those of a run without this check."""
    var = decoder.var[0]
    x = values[var]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            drawn = decoder.sample(values, return_all=False)[var]
            units = decoder.get_log_prob({**values, var: drawn}, sum_features=False).shape
    except (ValueError, NotImplementedError, RuntimeError):
        return False
    k = len(units)
    if drawn.shape != x.shape or k >= x.dim() or tuple(x.shape[:k]) != tuple(units):
        return False
    per_unit = mask.reshape(*units, -1)
    if not bool((per_unit.all(-1) | ~per_unit.any(-1)).all()):
        return False
    raise_for_observed(decoder, {**values, var: torch.where(mask, x, drawn)}, var, drawn)
    return True


def _check_drawn_shape(decoder: Distribution, got: Tensor, x: Tensor, n_samples: int, what: str) -> None:
    """An error naming the decoder and both shapes where its ``what`` (mean or draws) do not have the shape of the
    chains' data ``x`` (``n_samples`` copies of each row), as `impute_importance` names the decoder on the same input
    (torch's broadcasting or reshape error came first)."""
    if got.shape == x.shape:
        return
    var = decoder.var[0]
    raise ValueError(
        f"impute_gibbs: the decoder {decoder.prob_text} ({decoder.distribution_name}) gives {what} of shape "
        f"{tuple(got.shape)} for {var} of shape {tuple(x.shape)} ({x.shape[0] // n_samples} rows x {n_samples} "
        f"chains); it must give {var} in the data's shape (class indices where the decoder takes one-hot rows, or a "
        "decoder of another width?)"
    )
