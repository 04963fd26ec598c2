"""Reference tests for every parametric family in `kizuna.distributions.families`.

One `EXAMPLES` table (STYLE.md habit 5) is swept by generic tests:

* log-densities against ``scipy.stats`` in float64 (habit 6), per row and per feature, with
  parameters from ``forward``, from constants with ``features_shape``, and from named
  conditioning variables; the Concrete families (no scipy density) against the closed form of
  Maddison et al. 2016 (arXiv:1611.00712) and a numerical integral;
* samplers with fixed seeds (habit 7): Monte-Carlo mean and variance against closed forms, and
  a goodness-of-fit test per family (Kolmogorov-Smirnov for continuous draws, Pearson
  chi-square for discrete ones);
* closed-form mean, variance and entropy; ``rsample`` carries gradient and ``sample`` does not;
  validation errors (`BAD_EXAMPLES`, `BAD_VALUES`); shapes; save/load round trip.

False-alarm budget: a statistical test function compares ``m`` statistics at once and requires
every p-value to exceed ``ALPHA / m`` (Bonferroni), so each such test function would fail with
probability at most ``ALPHA = 1e-3`` if the sampler were exactly right. Seeds are fixed, so a
pass is deterministic; ALPHA says how unlucky a seed would have to be to fail a correct sampler.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import scipy.stats as st
import torch
from scipy import special
from torch import nn

from kizuna.distributions import families, relaxed
from kizuna.distributions.families import (
    Bernoulli,
    Beta,
    BinaryConcrete,
    Categorical,
    Concrete,
    Dirichlet,
    FactorizedBernoulli,
    Gamma,
    Laplace,
    LogNormal,
    Multinomial,
    MultivariateNormal,
    Normal,
    Poisson,
    StudentT,
    VonMises,
)
from kizuna.distributions.relaxed import RelaxedBernoulli, RelaxedCategorical
from kizuna.distributions.torch_dist import TorchDistribution

F64 = torch.float64
B = 5  # batch rows
FEATURES = (2, 3)  # features of every example; multivariate families use the last dim as event
N_DRAWS = 20_000  # Monte-Carlo draws per batch row and feature
ALPHA = 1e-3  # false-alarm rate of each statistical test function (see module docstring)
# float64 densities agree with scipy to ~1e-12; the loosest is torch's VonMises, whose log I0 is
# a polynomial approximation (Abramowitz & Stegun 9.8) with ~1e-7 relative error.
RTOL, ATOL = 1e-6, 1e-9

Array = np.ndarray
Params = dict[str, Array]


# ------------------------------------------------------------------ reference helpers
def _per_event(fn: Callable[[Array, Params], float]) -> Callable[[Array, Params], Array]:
    """Loop a scipy call that takes one event (last dim of x) over the leading dims."""

    def ref(x: Array, p: Params) -> Array:
        out = np.empty(x.shape[:-1])
        for idx in np.ndindex(out.shape):
            out[idx] = fn(x[idx], {k: v[idx] if np.ndim(v) else v for k, v in p.items()})
        return out

    return ref


def _per_param_event(fn: Callable[[Params], float], key: str) -> Callable[[Params], Array]:
    """Loop a per-event scipy statistic (entropy) over the leading dims of ``p[key]``."""

    def ref(p: Params) -> Array:
        return _per_event(lambda _, q: fn(q))(p[key], p)

    return ref


def _z_pvalues(estimate: Array, expected: Array, se: Array) -> Array:
    return 2 * st.norm.sf(np.abs((estimate - expected) / se))


def _chisquare(observed: Array, expected: Array, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value after merging neighbouring bins until each expects >= 5."""
    obs_bins, exp_bins = [], []
    o_acc = e_acc = 0.0
    for o, e in zip(observed, expected, strict=True):
        o_acc, e_acc = o_acc + o, e_acc + e
        if e_acc >= min_expected:
            obs_bins.append(o_acc)
            exp_bins.append(e_acc)
            o_acc = e_acc = 0.0
    obs_bins[-1] += o_acc  # a thin tail joins the last bin
    exp_bins[-1] += e_acc
    assert len(obs_bins) >= 2, "parameters too extreme for a chi-square test"
    return float(st.chisquare(obs_bins, exp_bins).pvalue)


def _elements(x: Array, p: Params, event: int) -> Any:
    """Yield (draws of one batch/feature element, its parameters) for goodness-of-fit tests."""
    shape = x.shape[1: x.ndim - event]
    for idx in np.ndindex(shape):
        yield x[(slice(None), *idx)], {k: v[idx] if np.ndim(v) else v for k, v in p.items()}


def _gof_ks(frozen: Callable[[Params], Any]) -> Callable[[Array, Params], list[float]]:
    return lambda x, p: [st.kstest(xi, frozen(pi).cdf).pvalue for xi, pi in _elements(x, p, 0)]


def _gof_bernoulli(probs: Callable[[Params], Array]) -> Callable[[Array, Params], list[float]]:
    def gof(x: Array, p: Params) -> list[float]:
        out = []
        for xi, pi in _elements(x, p, 0):
            q, ones = probs(pi), xi.sum()
            out.append(_chisquare(np.array([len(xi) - ones, ones]), len(xi) * np.array([1 - q, q])))
        return out

    return gof


def _gof_poisson(x: Array, p: Params) -> list[float]:
    out = []
    for xi, pi in _elements(x, p, 0):
        k = xi.astype(int)
        top = k.max()  # bins 0..top-1, and x >= top (the whole tail) in the last bin
        observed = np.bincount(k, minlength=top + 1)
        expected = len(k) * np.append(st.poisson.pmf(np.arange(top), pi["rate"]), st.poisson.sf(top - 1, pi["rate"]))
        out.append(_chisquare(observed, expected))
    return out


def _gof_argmax(probs: Callable[[Params], Array]) -> Callable[[Array, Params], list[float]]:
    """Chi-square of the winning category: exact for one-hot draws and, by the Gumbel-max
    trick, for Concrete draws too (argmax of a Concrete sample ~ Categorical(probs))."""

    def gof(x: Array, p: Params) -> list[float]:
        out = []
        for xi, pi in _elements(x, p, 1):
            q = probs(pi)
            out.append(_chisquare(np.bincount(xi.argmax(-1), minlength=len(q)), len(xi) * q))
        return out

    return gof


def _gof_multinomial(x: Array, p: Params) -> list[float]:
    n, k = int(p["total_count"]), x.shape[-1]
    outcomes = np.array([c for c in itertools.product(range(n + 1), repeat=k) if sum(c) == n])
    out = []
    for xi, pi in _elements(x, p, 1):
        code = (xi[:, None, :] == outcomes[None]).all(-1).argmax(-1)
        expected = len(xi) * st.multinomial.pmf(outcomes, n, pi["probs"])
        out.append(_chisquare(np.bincount(code, minlength=len(outcomes)), expected))
    return out


def _gof_marginals(marginal: Callable[[Params, int], Any]) -> Callable[[Array, Params], list[float]]:
    """KS test of each coordinate of a vector family against its known marginal."""

    def gof(x: Array, p: Params) -> list[float]:
        return [st.kstest(xi[:, i], marginal(pi, i).cdf).pvalue
                for xi, pi in _elements(x, p, 1) for i in range(x.shape[-1])]

    return gof


# ------------------------------------------------------------------ the example table
@dataclass(frozen=True)
class Example:
    """One family with random parameters and its independent reference.

    ``params(rng, shape)`` gives constructor parameters whose leading dims are ``shape`` (plus
    the family's own event dims); ``values(rng, shape)`` gives points of the support with the
    full shape ``(batch, *features)``. The references take numpy parameters broadcast to the
    values' leading (non-event) dims and return one number per element.
    """

    cls: type[TorchDistribution]
    params: Callable[[np.random.Generator, tuple[int, ...]], Params]
    values: Callable[[np.random.Generator, tuple[int, ...]], Array]
    logpdf: Callable[[Array, Params], Array]
    gof: Callable[[Array, Params], list[float]]  # p-values of goodness-of-fit tests of draws
    mean: Callable[[Params], Array] | None = None  # None: torch has no closed form (raises)
    var: Callable[[Params], Array] | None = None
    entropy: Callable[[Params], Array] | None = None
    event: int = 0  # 1 when the last feature dim is one event (simplex, vector)
    reparam: bool = True
    moments_of_draws: bool = True  # False when `var` is not the linear variance of draws
    fixed: dict[str, Any] = field(default_factory=dict)  # constants every instance gets
    label: str = ""

    @property
    def id(self) -> str:
        return self.label or self.cls.__name__


def _scipy_example(cls: type[TorchDistribution], frozen: Callable[[Params], Any], params: Any, values: Any,
                   discrete: bool = False, **kw: Any) -> Example:
    """A univariate family whose density, moments and entropy are those of a scipy object."""
    logpdf = (lambda x, p: frozen(p).logpmf(x)) if discrete else (lambda x, p: frozen(p).logpdf(x))
    return Example(cls, params, values, logpdf, kw.pop("gof", None) or _gof_ks(frozen),
                   mean=lambda p: frozen(p).mean(), var=lambda p: frozen(p).var(),
                   entropy=kw.pop("entropy", lambda p: frozen(p).entropy()), **kw)


def _real(rng: np.random.Generator, s: tuple[int, ...]) -> Array:
    return rng.normal(0.0, 2.0, s)


def _positive(rng: np.random.Generator, s: tuple[int, ...]) -> Array:
    return rng.gamma(2.0, 1.0, s)


def _unit(rng: np.random.Generator, s: tuple[int, ...]) -> Array:
    return rng.uniform(0.02, 0.98, s)


def _simplex(rng: np.random.Generator, s: tuple[int, ...], a: float = 2.0) -> Array:
    return rng.dirichlet(np.full(FEATURES[-1], a), size=s)


def _one_hot(rng: np.random.Generator, s: tuple[int, ...]) -> Array:
    return np.eye(s[-1])[rng.integers(0, s[-1], s[:-1])]


def _scale_tril(rng: np.random.Generator, s: tuple[int, ...]) -> Array:
    k = FEATURES[-1]
    lower = np.tril(rng.normal(0.0, 0.5, (*s, k, k)), -1)
    return lower + np.eye(k) * rng.uniform(0.5, 1.5, (*s, k))[..., None, :]


def _cov(p: Params) -> Array:
    if "covariance_matrix" in p:
        return p["covariance_matrix"]
    return p["scale_tril"] @ np.swapaxes(p["scale_tril"], -1, -2)


def _mvn_gof(x: Array, p: Params) -> list[float]:
    """Marginals, plus the sum of coordinates (sensitive to the off-diagonal covariance)."""
    pvals = _gof_marginals(lambda q, i: st.norm(q["loc"][i], np.sqrt(_cov(q)[i, i])))(x, p)
    for xi, pi in _elements(x, p, 1):
        sd = np.sqrt(_cov(pi).sum())
        pvals.append(st.kstest(xi.sum(-1), st.norm(pi["loc"].sum(), sd).cdf).pvalue)
    return pvals


def _mvn_example(key: str, make: Callable[[np.random.Generator, tuple[int, ...]], Array]) -> Example:
    return Example(
        MultivariateNormal,
        lambda rng, s: {"loc": rng.normal(0.0, 1.0, (*s, FEATURES[-1])), key: make(rng, s)},
        _real,
        _per_event(lambda x, p: st.multivariate_normal.logpdf(x, p["loc"], _cov(p))),
        _mvn_gof,
        mean=lambda p: p["loc"],
        var=lambda p: np.diagonal(_cov(p), axis1=-2, axis2=-1),
        entropy=_per_param_event(lambda p: st.multivariate_normal(p["loc"], _cov(p)).entropy(), "loc"),
        event=1,
        label=f"MultivariateNormal-{key}",
    )


def _bernoulli_logpmf(x: Array, q: Array) -> Array:
    """``x log q + (1-x) log(1-q)``: the Bernoulli log-mass, and -BCE for grey x in [0, 1]."""
    return special.xlogy(x, q) + special.xlog1py(1 - x, -q)


def _concrete_binary_logpdf(x: Array, p: Params) -> Array:
    r"""Binary Concrete (Maddison et al. 2016, arXiv:1611.00712, Sec. 3.3), :math:`\alpha=p/(1-p)`:

    .. math:: p(x) = \frac{\lambda \alpha x^{-\lambda-1}(1-x)^{-\lambda-1}}{(\alpha x^{-\lambda} + (1-x)^{-\lambda})^2}
    """
    lam, log_alpha = p["temperature"], special.logit(p["probs"])
    log_x, log_1mx = np.log(x), np.log1p(-x)
    return (np.log(lam) + log_alpha - (lam + 1) * (log_x + log_1mx)
            - 2 * np.logaddexp(log_alpha - lam * log_x, -lam * log_1mx))


def _concrete_logpdf(x: Array, p: Params) -> Array:
    r"""Concrete on the simplex (Maddison et al. 2016, Def. 1), density in the first n-1 coordinates:

    .. math:: p(x) = (n-1)!\,\lambda^{n-1} \prod_k \frac{\alpha_k x_k^{-\lambda-1}}{\sum_i \alpha_i x_i^{-\lambda}}
    """
    n, lam, log_alpha = x.shape[-1], p["temperature"], np.log(p["probs"])
    log_x = np.log(x)
    return (special.gammaln(n) + (n - 1) * np.log(lam) + (log_alpha - (lam + 1) * log_x).sum(-1)
            - n * special.logsumexp(log_alpha - lam * log_x, axis=-1))


def _concrete_binary_cdf(p: Params) -> Callable[[Array], Array]:
    """``P(X <= x) = sigmoid(lambda logit(x) - logit(p))``: X = sigmoid((logit p + L)/lambda), L logistic."""
    return lambda x: special.expit(p["temperature"] * special.logit(x) - special.logit(p["probs"]))


def _dirichlet_var(p: Params) -> Array:
    a = p["concentration"]
    a0 = a.sum(-1, keepdims=True)
    return a * (a0 - a) / (a0**2 * (a0 + 1))


def _von_mises_gof(x: Array, p: Params) -> list[float]:
    """KS of the wrapped angle to the mean direction, and E[cos(x - mu)] = I1(k)/I0(k) (z-test)."""
    out = []
    for xi, pi in _elements(x, p, 0):
        k = pi["concentration"]
        d = np.mod(xi - pi["loc"] + np.pi, 2 * np.pi) - np.pi
        out.append(st.kstest(d, st.vonmises(k).cdf).pvalue)
        a1, a2 = special.i1e(k) / special.i0e(k), special.ive(2, k) / special.i0e(k)
        sd_cos = np.sqrt((1 + a2) / 2 - a1**2)
        out.append(float(_z_pvalues(np.cos(d).mean(), a1, sd_cos / np.sqrt(len(d)))))
    return out


EXAMPLES: list[Example] = [
    _scipy_example(Normal, lambda p: st.norm(p["loc"], p["scale"]),
                   lambda rng, s: {"loc": rng.normal(0, 1, s), "scale": rng.uniform(0.5, 2, s)}, _real),
    _scipy_example(Laplace, lambda p: st.laplace(p["loc"], p["scale"]),
                   lambda rng, s: {"loc": rng.normal(0, 1, s), "scale": rng.uniform(0.5, 2, s)}, _real),
    # small log-scale keeps the log-normal's fourth moment (the variance test's error bar) tame
    _scipy_example(LogNormal, lambda p: st.lognorm(p["scale"], scale=np.exp(p["loc"])),
                   lambda rng, s: {"loc": rng.normal(0, 0.5, s), "scale": rng.uniform(0.1, 0.5, s)}, _positive),
    # df > 4 so the fourth moment, hence the error bar of the sample variance, is finite
    _scipy_example(StudentT, lambda p: st.t(p["df"], p["loc"], p["scale"]),
                   lambda rng, s: {"df": rng.uniform(6, 12, s), "loc": rng.normal(0, 1, s),
                                   "scale": rng.uniform(0.5, 2, s)}, _real),
    _scipy_example(Gamma, lambda p: st.gamma(p["concentration"], scale=1 / p["rate"]),
                   lambda rng, s: {"concentration": rng.uniform(0.5, 4, s), "rate": rng.uniform(0.5, 3, s)},
                   _positive),
    _scipy_example(Beta, lambda p: st.beta(p["concentration1"], p["concentration0"]),
                   lambda rng, s: {"concentration1": rng.uniform(0.5, 4, s),
                                   "concentration0": rng.uniform(0.5, 4, s)}, _unit),
    Example(
        Dirichlet,
        lambda rng, s: {"concentration": rng.uniform(0.5, 4, (*s, FEATURES[-1]))},
        lambda rng, s: _simplex(rng, s[:-1]),
        _per_event(lambda x, p: st.dirichlet.logpdf(x, p["concentration"])),
        _gof_marginals(lambda p, i: st.beta(p["concentration"][i], p["concentration"].sum() - p["concentration"][i])),
        mean=lambda p: p["concentration"] / p["concentration"].sum(-1, keepdims=True),
        var=_dirichlet_var,
        entropy=_per_param_event(lambda p: st.dirichlet(p["concentration"]).entropy(), "concentration"),
        event=1,
    ),
    # torch's VonMises variance is the circular variance 1 - I1/I0, not the variance of the
    # draws in [-pi, pi); the draws get circular statistics in _von_mises_gof instead. torch has
    # no VonMises entropy. concentration <= 4 keeps torch's Bessel-ratio approximation < 1e-6.
    Example(
        VonMises,
        lambda rng, s: {"loc": rng.uniform(-3, 3, s), "concentration": rng.uniform(0.5, 4, s)},
        lambda rng, s: rng.uniform(-np.pi, np.pi, s),
        lambda x, p: st.vonmises.logpdf(x, p["concentration"], loc=p["loc"]),
        _von_mises_gof,
        mean=lambda p: p["loc"],
        var=lambda p: 1 - special.i1e(p["concentration"]) / special.i0e(p["concentration"]),
        reparam=False,
        moments_of_draws=False,
    ),
    _mvn_example("scale_tril", _scale_tril),
    _mvn_example("covariance_matrix", lambda rng, s: (lambda L: L @ np.swapaxes(L, -1, -2))(_scale_tril(rng, s))),
    # torch has no Poisson entropy
    _scipy_example(Poisson, lambda p: st.poisson(p["rate"]), lambda rng, s: {"rate": rng.uniform(0.5, 6, s)},
                   lambda rng, s: rng.poisson(3.0, s).astype(float), discrete=True, gof=_gof_poisson,
                   entropy=None, reparam=False),
    _scipy_example(Bernoulli, lambda p: st.bernoulli(p["probs"]), lambda rng, s: {"probs": rng.uniform(0.1, 0.9, s)},
                   lambda rng, s: rng.integers(0, 2, s).astype(float), discrete=True,
                   gof=_gof_bernoulli(lambda p: p["probs"]), reparam=False),
    # Only entries that are not zero count (Vedantam et al. 2017); draws and entropy are Bernoulli's.
    Example(
        FactorizedBernoulli,
        lambda rng, s: {"logits": rng.normal(0, 1.5, s)},
        lambda rng, s: rng.integers(0, 2, s).astype(float),
        lambda x, p: np.where(x != 0, _bernoulli_logpmf(x, special.expit(p["logits"])), 0.0),
        _gof_bernoulli(lambda p: special.expit(p["logits"])),
        mean=lambda p: special.expit(p["logits"]),
        var=lambda p: special.expit(p["logits"]) * special.expit(-p["logits"]),
        entropy=lambda p: st.bernoulli(special.expit(p["logits"])).entropy(),
        reparam=False,
    ),
    Example(
        Categorical,
        lambda rng, s: {"logits": rng.normal(0, 1, (*s, FEATURES[-1]))},
        _one_hot,
        _per_event(lambda x, p: st.multinomial.logpmf(x, 1, special.softmax(p["logits"]))),
        _gof_argmax(lambda p: special.softmax(p["logits"])),
        mean=lambda p: special.softmax(p["logits"], -1),
        var=lambda p: special.softmax(p["logits"], -1) * (1 - special.softmax(p["logits"], -1)),
        entropy=_per_param_event(lambda p: st.multinomial(1, special.softmax(p["logits"])).entropy(), "logits"),
        event=1,
        reparam=False,
    ),
    Example(
        Multinomial,
        lambda rng, s: {"probs": _simplex(rng, s, 3.0)},
        lambda rng, s: rng.multinomial(4, np.full(s[-1], 1 / s[-1]), size=s[:-1]).astype(float),
        _per_event(lambda x, p: st.multinomial.logpmf(x, p["total_count"], p["probs"])),
        _gof_multinomial,
        mean=lambda p: p["total_count"] * p["probs"],
        var=lambda p: p["total_count"] * p["probs"] * (1 - p["probs"]),
        entropy=_per_param_event(lambda p: st.multinomial(p["total_count"], p["probs"]).entropy(), "probs"),
        event=1,
        reparam=False,
        fixed={"total_count": 4},
    ),
    Example(
        BinaryConcrete,
        lambda rng, s: {"temperature": rng.uniform(0.5, 2, s), "probs": rng.uniform(0.1, 0.9, s)},
        _unit,
        _concrete_binary_logpdf,
        lambda x, p: [st.kstest(xi, _concrete_binary_cdf(pi)).pvalue for xi, pi in _elements(x, p, 0)],
    ),
    # torch's RelaxedOneHotCategorical takes one temperature for the whole batch
    Example(
        Concrete,
        lambda rng, s: {"probs": _simplex(rng, s)},
        lambda rng, s: _simplex(rng, s[:-1], 1.5),
        _concrete_logpdf,
        _gof_argmax(lambda p: p["probs"]),
        event=1,
        fixed={"temperature": torch.tensor(0.7, dtype=F64)},
    ),
    # Pixyz's relaxed families: Concrete draws, scored (and moments) as the discrete family they relax
    Example(
        RelaxedBernoulli,
        lambda rng, s: {"temperature": rng.uniform(0.5, 2, s), "probs": rng.uniform(0.1, 0.9, s)},
        lambda rng, s: rng.integers(0, 2, s).astype(float),
        lambda x, p: st.bernoulli(p["probs"]).logpmf(x),
        lambda x, p: [st.kstest(xi, _concrete_binary_cdf(pi)).pvalue for xi, pi in _elements(x, p, 0)],
        mean=lambda p: p["probs"],
        var=lambda p: p["probs"] * (1 - p["probs"]),
        entropy=lambda p: st.bernoulli(p["probs"]).entropy(),
        moments_of_draws=False,
    ),
    Example(
        RelaxedCategorical,
        lambda rng, s: {"probs": _simplex(rng, s)},
        _one_hot,
        _per_event(lambda x, p: st.multinomial.logpmf(x, 1, p["probs"])),
        _gof_argmax(lambda p: p["probs"]),
        mean=lambda p: p["probs"],
        var=lambda p: p["probs"] * (1 - p["probs"]),
        entropy=_per_param_event(lambda p: st.multinomial(1, p["probs"]).entropy(), "probs"),
        event=1,
        moments_of_draws=False,
        fixed={"temperature": torch.tensor(0.7, dtype=F64)},
    ),
]
IDS = [ex.id for ex in EXAMPLES]
SOURCES = ("forward", "constant", "cond_var")


# ------------------------------------------------------------------ building distributions
def _table_dist(ex: Example, table: dict[str, torch.Tensor]) -> TorchDistribution:
    """``p(x|c)`` whose ``forward(c)`` looks its parameters up by row index ``c``."""

    class Table(ex.cls):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["c"], **ex.fixed)
            self.rows = nn.ParameterDict({k: nn.Parameter(v) for k, v in table.items()})

        def forward(self, c: torch.Tensor) -> dict[str, torch.Tensor]:
            return {k: v[c] for k, v in self.rows.items()}

    return Table()


def _fixed_np(ex: Example) -> Params:
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in ex.fixed.items()}


def _feature_batch(ex: Example) -> tuple[int, ...]:
    return FEATURES[: len(FEATURES) - ex.event]


def _make(ex: Example, source: str, rng: np.random.Generator) -> tuple[TorchDistribution, dict[str, Any], Params]:
    """A distribution, its conditioning inputs, and its numpy parameters per (batch, feature)."""
    fb = _feature_batch(ex)
    shape = fb[1:] if source == "constant" else (B, *fb)
    params = ex.params(rng, shape)
    table = {k: torch.tensor(v, dtype=F64) for k, v in params.items()}
    if source == "forward":
        dist, inputs = _table_dist(ex, table), {"c": torch.arange(B)}
    elif source == "cond_var":
        names = {k: f"{k}_in" for k in table}
        dist = ex.cls(var=["x"], cond_var=list(names.values()), **names, **ex.fixed)
        inputs = {names[k]: v for k, v in table.items()}
    else:
        dist, inputs = ex.cls(var=["x"], features_shape=FEATURES, **table, **ex.fixed), {}
    full = {k: np.broadcast_to(v, (B, *fb) + v.shape[len(shape):]) for k, v in params.items()}
    return dist, inputs, {**full, **_fixed_np(ex)}


def _values(ex: Example, rng: np.random.Generator) -> tuple[Array, torch.Tensor]:
    x = ex.values(rng, (B, *FEATURES))
    return x, torch.tensor(x, dtype=F64)


def _draws(ex: Example, seed: int) -> tuple[Array, Params]:
    torch.manual_seed(seed)
    dist, inputs, p = _make(ex, "forward", np.random.default_rng(seed))
    x = dist.sample(inputs, sample_shape=(N_DRAWS,))["x"]
    assert x.shape == (N_DRAWS, B, *FEATURES)
    return x.detach().numpy(), p


# ------------------------------------------------------------------ meta-tests
def _family_classes() -> set[type]:
    return {obj for module in (families, relaxed) for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, TorchDistribution) and obj.__module__ == module.__name__
            and not obj.__name__.startswith("_")}


def test_every_family_has_an_example() -> None:
    missing = _family_classes() - {ex.cls for ex in EXAMPLES}
    assert not missing, f"add {sorted(c.__name__ for c in missing)} to EXAMPLES"


def test_every_family_has_a_bad_example() -> None:
    missing = _family_classes() - {cls for cls, _, _ in BAD_EXAMPLES}
    assert not missing, f"add {sorted(c.__name__ for c in missing)} to BAD_EXAMPLES"


# ------------------------------------------------------------------ densities
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("ex", EXAMPLES, ids=IDS)
def test_log_prob_matches_reference(ex: Example, source: str) -> None:
    rng = np.random.default_rng(1)
    dist, inputs, p = _make(ex, source, rng)
    x, xt = _values(ex, rng)
    lp = dist.get_log_prob({"x": xt, **inputs})
    assert lp.shape == (B,) and lp.dtype == F64
    ref = ex.logpdf(x, p).reshape(B, -1).sum(-1)
    np.testing.assert_allclose(lp.detach().numpy(), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("ex", EXAMPLES, ids=IDS)
def test_per_feature_log_prob_matches_reference(ex: Example, source: str) -> None:
    rng = np.random.default_rng(2)
    dist, inputs, p = _make(ex, source, rng)
    x, xt = _values(ex, rng)
    lp = dist.get_log_prob({"x": xt, **inputs}, sum_features=False)
    assert lp.shape == (B, *_feature_batch(ex))
    np.testing.assert_allclose(lp.detach().numpy(), ex.logpdf(x, p), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("cls", [Bernoulli, FactorizedBernoulli])
def test_bernoulli_scores_grey_values_as_negative_bce(cls: type[TorchDistribution]) -> None:
    rng = np.random.default_rng(3)
    q = rng.uniform(0.05, 0.95, FEATURES)
    x = rng.uniform(0, 1, (B, *FEATURES))
    x[0, 0, 0] = x[1, 1, 2] = 0.0  # FactorizedBernoulli skips exact zeros
    dist = cls(probs=torch.tensor(q, dtype=F64))
    per_feature = _bernoulli_logpmf(x, q)
    if cls is FactorizedBernoulli:
        per_feature = np.where(x != 0, per_feature, 0.0)
    lp = dist.get_log_prob({"x": torch.tensor(x, dtype=F64)})
    np.testing.assert_allclose(lp.numpy(), per_feature.reshape(B, -1).sum(-1), rtol=RTOL, atol=ATOL)


def test_factorized_bernoulli_sums_log_p_over_observed_entries() -> None:
    rng = np.random.default_rng(4)
    q = rng.uniform(0.05, 0.95, FEATURES)
    x = rng.integers(0, 2, (B, *FEATURES)).astype(float)
    lp = FactorizedBernoulli(probs=torch.tensor(q, dtype=F64)).get_log_prob({"x": torch.tensor(x, dtype=F64)})
    np.testing.assert_allclose(lp.numpy(), (x * np.log(q)).reshape(B, -1).sum(-1), rtol=RTOL, atol=ATOL)


def _logit_grid(lo: float = -60.0, hi: float = 60.0, step: float = 0.02) -> np.ndarray:
    return np.arange(lo, hi + step / 2, step)


@pytest.mark.parametrize(("temperature", "probs"), [(0.5, 0.3), (1.0, 0.8), (2.5, 0.5)])
def test_binary_concrete_integrates_to_one(temperature: float, probs: float) -> None:
    # x = sigmoid(y) turns the (0, 1) integral, singular at the ends for temperature < 1, into a
    # smooth exponentially decaying one on the real line, where the trapezoid rule is spectrally
    # accurate: dx = x (1 - x) dy. Observed error <= 5e-9 (tails cut at |y| = 60); bound 1e-6.
    dist = BinaryConcrete(temperature=torch.tensor(temperature, dtype=F64), probs=torch.tensor(probs, dtype=F64))
    x = torch.sigmoid(torch.tensor(_logit_grid(), dtype=F64))
    density = dist.get_prob({"x": x}) * x * (1 - x)
    assert abs(float(torch.trapezoid(density, dx=0.02)) - 1) < 1e-6


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_concrete_integrates_to_one(temperature: float) -> None:
    # x = softmax(y1, y2, 0) maps R^2 onto the open 2-simplex with Jacobian x1 x2 x3 w.r.t. (x1, x2);
    # the smooth, exponentially decaying integrand makes the grid sum accurate to ~1e-12.
    dist = Concrete(temperature=torch.tensor(temperature, dtype=F64), probs=torch.tensor([0.2, 0.5, 0.3], dtype=F64))
    step = 0.1
    y = torch.tensor(_logit_grid(-40.0, 40.0, step), dtype=F64)
    y1, y2 = torch.meshgrid(y, y, indexing="ij")
    x = torch.softmax(torch.stack([y1, y2, torch.zeros_like(y1)], -1).reshape(-1, 3), -1)
    density = dist.get_prob({"x": x}) * x.prod(-1)
    assert abs(float(density.sum()) * step**2 - 1) < 1e-6


def test_concrete_with_two_categories_matches_binary_concrete() -> None:
    rng = np.random.default_rng(5)
    q, lam = rng.uniform(0.1, 0.9, B), 0.8
    s = rng.uniform(0.02, 0.98, B)
    dist = Concrete(temperature=torch.tensor(lam, dtype=F64),
                    probs=torch.tensor(np.stack([q, 1 - q], -1), dtype=F64), features_shape=(B, 2))
    lp = dist.get_log_prob({"x": torch.tensor(np.stack([s, 1 - s], -1)[None], dtype=F64)}, sum_features=False)
    ref = _concrete_binary_logpdf(s, {"temperature": lam, "probs": q})
    np.testing.assert_allclose(lp[0].numpy(), ref, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ samplers
@pytest.mark.parametrize("ex", [e for e in EXAMPLES if e.mean is not None and e.moments_of_draws],
                         ids=[e.id for e in EXAMPLES if e.mean is not None and e.moments_of_draws])
def test_sample_moments_match_closed_form(ex: Example) -> None:
    # Mean: se = sqrt(var / n). Variance: the sample variance has se = sqrt((mu4 - var^2) / n)
    # (delta method), with the fourth central moment mu4 estimated from the same draws.
    x, p = _draws(ex, seed=10)
    mean, var = ex.mean(p), ex.var(p)
    m = x.mean(0)
    d = x - m
    s2, mu4 = (d**2).sum(0) / (N_DRAWS - 1), (d**4).mean(0)
    pvals = np.concatenate([_z_pvalues(m, mean, np.sqrt(var / N_DRAWS)).ravel(),
                            _z_pvalues(s2, var, np.sqrt((mu4 - var**2) / N_DRAWS)).ravel()])
    assert pvals.min() > ALPHA / pvals.size, f"worst p-value {pvals.min():.2e} of {pvals.size}"


@pytest.mark.parametrize("ex", EXAMPLES, ids=IDS)
def test_draws_pass_goodness_of_fit(ex: Example) -> None:
    x, p = _draws(ex, seed=20)
    pvals = np.asarray(ex.gof(x, p))
    assert pvals.size > 0
    assert pvals.min() > ALPHA / pvals.size, f"worst p-value {pvals.min():.2e} of {pvals.size}"


# ------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("source", ["forward", "constant"])
@pytest.mark.parametrize("ex", EXAMPLES, ids=IDS)
def test_mean_and_variance(ex: Example, source: str) -> None:
    dist, inputs, p = _make(ex, source, np.random.default_rng(6))
    if ex.mean is None:
        with pytest.raises(NotImplementedError):
            dist.sample_mean(inputs)
        return
    rows = B if source == "forward" else 1
    mean, var = dist.sample_mean(inputs), dist.sample_variance(inputs)
    assert mean.shape == var.shape == (rows, *FEATURES)
    np.testing.assert_allclose(mean.detach().numpy(), ex.mean(p)[:rows], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(var.detach().numpy(), ex.var(p)[:rows], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("source", ["forward", "constant"])
@pytest.mark.parametrize("ex", EXAMPLES, ids=IDS)
def test_entropy(ex: Example, source: str) -> None:
    dist, inputs, p = _make(ex, source, np.random.default_rng(7))
    if ex.entropy is None:
        with pytest.raises(NotImplementedError):
            dist.get_entropy(inputs)
        return
    rows = B if source == "forward" else 1
    ref = ex.entropy(p)[:rows]
    per_feature = dist.get_entropy(inputs, sum_features=False)
    assert per_feature.shape == (rows, *_feature_batch(ex))
    np.testing.assert_allclose(per_feature.detach().numpy(), ref, rtol=RTOL, atol=ATOL)
    total = dist.get_entropy(inputs)
    assert total.shape == (rows,)
    np.testing.assert_allclose(total.detach().numpy(), ref.reshape(rows, -1).sum(-1), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ gradients of draws
@pytest.mark.parametrize("ex", EXAMPLES, ids=IDS)
def test_rsample_carries_grad_and_sample_does_not(ex: Example) -> None:
    torch.manual_seed(0)
    dist, inputs, _ = _make(ex, "forward", np.random.default_rng(8))
    assert dist.has_reparam == ex.reparam
    plain = dist.sample(inputs)["x"]
    assert not plain.requires_grad and plain.grad_fn is None
    if not ex.reparam:
        with pytest.raises(ValueError, match=r"p\(x\|c\).*no reparameterised sampler"):
            dist.sample(inputs, reparam=True)
        return
    draw = dist.sample(inputs, reparam=True)["x"]
    assert draw.grad_fn is not None
    (draw * torch.randn_like(draw)).sum().backward()
    for name, param in dist.rows.items():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} gets no gradient through rsample"


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("ex", EXAMPLES, ids=IDS)
def test_sample_shapes(ex: Example) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(9)
    const, _, _ = _make(ex, "constant", rng)
    assert const.sample(batch_n=7)["x"].shape == (7, *FEATURES)
    assert const.sample()["x"].shape == (1, *FEATURES)
    for source in ("forward", "cond_var"):
        dist, inputs, _ = _make(ex, source, rng)
        assert dist.sample(inputs)["x"].shape == (B, *FEATURES)
        out = dist.sample(inputs, sample_shape=(4,))
        assert out["x"].shape == (4, B, *FEATURES)
        assert all(out[k] is v for k, v in inputs.items())  # inputs come back unchanged
        assert dist.sample(inputs, sample_shape=(4,), return_all=False).keys() == {"x"}


def test_named_conditioning_variable_from_docstring() -> None:
    m = torch.randn(B, 3, dtype=F64)
    p = Normal(var=["z"], cond_var=["m"], loc="m", scale=torch.tensor(1.0, dtype=F64))
    z = p.sample({"m": m}, sample_shape=(4,))["z"]
    assert z.shape == (4, B, 3)
    lp = p.get_log_prob({"z": z[0], "m": m})
    np.testing.assert_allclose(lp.numpy(), st.norm.logpdf(z[0].numpy(), m.numpy()).sum(-1), rtol=RTOL)


def test_python_number_constant_keeps_float64_precision() -> None:
    m, z = torch.randn(B, 3, dtype=F64), torch.randn(B, 3, dtype=F64)
    lp = Normal(var=["z"], cond_var=["m"], loc="m", scale=0.1).get_log_prob({"z": z, "m": m})
    # float64 agreement with scipy is ~1e-15; float32 rounding of 0.1 shows at ~1e-8
    np.testing.assert_allclose(lp.numpy(), st.norm.logpdf(z.numpy(), m.numpy(), 0.1).sum(-1), rtol=1e-12)


# ------------------------------------------------------------------ save / load
@pytest.mark.parametrize("as_parameter", [False, True], ids=["buffers", "nn.Parameter"])
@pytest.mark.parametrize("ex", EXAMPLES, ids=IDS)
def test_state_dict_round_trip(ex: Example, as_parameter: bool) -> None:
    rng = np.random.default_rng(11)

    def build() -> TorchDistribution:
        params = {k: torch.tensor(v, dtype=F64) for k, v in ex.params(rng, _feature_batch(ex)[1:]).items()}
        if as_parameter:
            first = next(iter(params))
            params[first] = nn.Parameter(params[first])
        return ex.cls(var=["x"], features_shape=FEATURES, **params, **ex.fixed)

    saved, fresh = build(), build()
    x = {"x": _values(ex, rng)[1]}
    assert not torch.equal(saved.get_log_prob(x), fresh.get_log_prob(x))  # the round trip has work to do
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(saved.get_log_prob(x), fresh.get_log_prob(x))
    assert len(list(fresh.parameters())) == int(as_parameter)


# ------------------------------------------------------------------ validation errors
def _t(v: Any) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


BAD_EXAMPLES: list[tuple[type[TorchDistribution], dict[str, Any], str]] = [
    (Normal, {"loc": 0.0, "scale": -1.0}, "scale"),
    (Normal, {"loc": float("nan"), "scale": 1.0}, "loc"),
    (Normal, {"loc": _t([0.0, 0.0, 0.0]), "scale": 1.0, "features_shape": (2,)}, "features_shape"),
    (Laplace, {"loc": 0.0, "scale": 0.0}, "scale"),
    (LogNormal, {"loc": 0.0, "scale": -0.5}, "scale"),
    (StudentT, {"df": -1.0, "loc": 0.0, "scale": 1.0}, "df"),
    (StudentT, {"df": 3.0, "loc": 0.0, "scale": -1.0}, "scale"),
    (Gamma, {"concentration": -1.0, "rate": 1.0}, "concentration"),
    (Gamma, {"concentration": 1.0, "rate": 0.0}, "rate"),
    (Beta, {"concentration1": 1.0, "concentration0": -2.0}, "concentration0"),
    (Dirichlet, {"concentration": _t([1.0, -1.0, 2.0])}, "concentration"),
    (VonMises, {"loc": 0.0, "concentration": -1.0}, "concentration"),
    (MultivariateNormal, {"loc": _t([0.0, 0.0]), "covariance_matrix": _t([[1.0, 2.0], [2.0, 1.0]])},
     "covariance_matrix"),
    (MultivariateNormal, {"loc": _t([0.0, 0.0]), "scale_tril": _t([[-1.0, 0.0], [0.0, 1.0]])}, "scale_tril"),
    (Poisson, {"rate": -1.0}, "rate"),
    (Bernoulli, {"probs": 1.5}, "probs"),
    (FactorizedBernoulli, {"probs": -0.1}, "probs"),
    (Categorical, {"probs": _t([0.5, 0.7, -0.2])}, "probs"),
    (Multinomial, {"total_count": 3, "probs": _t([0.5, -0.5, 1.0])}, "probs"),
    (Multinomial, {"total_count": -1, "probs": _t([0.5, 0.5])}, "total_count"),
    (Multinomial, {"total_count": 2.5, "probs": _t([0.5, 0.5])}, "total_count"),
    (BinaryConcrete, {"temperature": 0.5, "probs": 1.5}, "probs"),
    (BinaryConcrete, {"temperature": -1.0, "probs": 0.5}, "temperature"),
    (Concrete, {"temperature": 0.0, "probs": _t([0.5, 0.5])}, "temperature"),
    (Concrete, {"temperature": 1.0, "probs": _t([0.5, -0.5, 1.0])}, "probs"),
    (RelaxedBernoulli, {"temperature": 0.5, "probs": 1.5}, "probs"),
    (RelaxedBernoulli, {"temperature": -1.0, "probs": 0.5}, "temperature"),
    (RelaxedCategorical, {"temperature": 0.0, "probs": _t([0.5, 0.5])}, "temperature"),
    (RelaxedCategorical, {"temperature": 1.0, "probs": _t([0.5, -0.5, 1.0])}, "probs"),
]


@pytest.mark.parametrize(("cls", "kwargs", "word"), BAD_EXAMPLES,
                         ids=[f"{c.__name__}-{w}-{i}" for i, (c, _, w) in enumerate(BAD_EXAMPLES)])
def test_invalid_constant_parameter_is_named(cls: type[TorchDistribution], kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        cls(**kwargs)


def test_constraint_is_quoted_whole() -> None:
    with pytest.raises(ValueError, match=r"'probs' of Bernoulli must satisfy Interval\(lower_bound=0\.0, "
                                         r"upper_bound=1\.0\);"):
        Bernoulli(probs=1.5)


def test_invalid_parameter_from_forward_is_named() -> None:
    class Scaled(Normal):
        def forward(self, c: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": c, "scale": c}

    p = Scaled(var=["x"], cond_var=["c"])
    with pytest.raises(ValueError, match="scale"):
        p.get_log_prob({"x": torch.zeros(B, 3, dtype=F64), "c": -torch.ones(B, 3, dtype=F64)})


def test_unknown_or_dangling_parameter_names() -> None:
    with pytest.raises(TypeError, match="mu"):
        Normal(mu=0.0, scale=1.0)
    with pytest.raises(ValueError, match="'m'.*cond_var"):
        Normal(var=["x"], cond_var=["z"], loc="m", scale=1.0)


@pytest.mark.parametrize("ex", EXAMPLES, ids=IDS)
def test_wrong_feature_shape_says_expected_and_given(ex: Example) -> None:
    dist, _, _ = _make(ex, "constant", np.random.default_rng(12))
    with pytest.raises(ValueError, match=r"expected .*\(2, 3\).*given \(2, 4\)"):
        dist.get_log_prob({"x": torch.zeros(B, 2, 4, dtype=F64)})
    # a value without a batch dimension is a batch of one (as Pixyz)
    assert dist.get_log_prob({"x": _values(ex, np.random.default_rng(0))[1][0]}).shape == (1,)
    with pytest.raises(TypeError, match="torch.Tensor"):
        dist.get_log_prob({"x": np.zeros((B, *FEATURES))})


@pytest.mark.parametrize("ex", EXAMPLES, ids=IDS)
def test_missing_value_names_variable_and_distribution(ex: Example) -> None:
    rng = np.random.default_rng(13)
    dist, inputs, _ = _make(ex, "forward", rng)
    x = _values(ex, rng)[1]
    with pytest.raises(ValueError, match=r"p\(x\|c\) needs c"):
        dist.get_log_prob({"x": x})
    with pytest.raises(ValueError, match=r"p\(x\|c\) needs x"):
        dist.get_log_prob(inputs)
    with pytest.raises(ValueError, match=r"p\(x\|c\) needs c"):
        dist.sample({})


BAD_VALUES: list[tuple[str, Callable[[], TorchDistribution], list[list[float]]]] = [
    ("Gamma-negative", lambda: Gamma(concentration=2.0, rate=1.0, features_shape=(2,)), [[1.0, -1.0]]),
    ("Beta-above-one", lambda: Beta(concentration1=2.0, concentration0=1.0, features_shape=(2,)), [[0.5, 1.5]]),
    ("Poisson-fraction", lambda: Poisson(rate=2.0, features_shape=(2,)), [[1.0, 1.5]]),
    ("Bernoulli-above-one", lambda: Bernoulli(probs=0.3, features_shape=(2,)), [[1.0, 2.0]]),
    ("FactorizedBernoulli-negative", lambda: FactorizedBernoulli(probs=0.3, features_shape=(2,)), [[0.0, -1.0]]),
    ("Dirichlet-off-simplex", lambda: Dirichlet(concentration=_t([1.0, 1.0])), [[0.5, 0.6]]),
    ("Categorical-not-one-hot", lambda: Categorical(probs=_t([0.5, 0.5])), [[1.0, 1.0]]),
    ("Multinomial-wrong-total", lambda: Multinomial(total_count=3, probs=_t([0.5, 0.5])), [[1.0, 1.0]]),
    ("Concrete-off-simplex", lambda: Concrete(temperature=1.0, probs=_t([0.5, 0.5])), [[0.5, 0.6]]),
    ("RelaxedCategorical-off-simplex", lambda: RelaxedCategorical(temperature=1.0, probs=_t([0.5, 0.5])),
     [[0.5, 0.6]]),
    ("RelaxedBernoulli-above-one", lambda: RelaxedBernoulli(probs=0.3, features_shape=(2,)), [[1.0, 2.0]]),
]


@pytest.mark.parametrize(("build", "value"), [(b, v) for _, b, v in BAD_VALUES], ids=[i for i, _, _ in BAD_VALUES])
def test_value_outside_support_is_rejected(build: Callable[[], TorchDistribution], value: list[list[float]]) -> None:
    with pytest.raises(ValueError, match=r"p\(x\): value of x"):
        build().get_log_prob({"x": _t(value)})


# ------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("ex", EXAMPLES, ids=IDS)
def test_gradcheck_of_log_prob_in_the_parameters(ex: Example) -> None:
    """Analytic gradients of log p(x|params) against finite differences (float64, 1 row).

    Validation is off inside: a finite-difference step may leave a simplex by ~1e-6.
    """
    from kizuna.distributions import set_validation

    dist, inputs, _ = _make(ex, "cond_var", np.random.default_rng(8))
    _, x = _values(ex, np.random.default_rng(9))
    names = [k for k, v in inputs.items() if v.is_floating_point()]
    leaves = [inputs[k][:1].clone().requires_grad_(True) for k in names]

    def log_prob(*params: torch.Tensor) -> torch.Tensor:
        given = dict(zip(names, params))
        for k, v in given.items():  # a covariance is symmetric: differentiate along symmetric steps
            if k.startswith(("covariance_matrix", "precision_matrix")):
                given[k] = (v + v.transpose(-1, -2)) / 2
        return dist.get_log_prob({**inputs, **given, "x": x[:1]})

    set_validation(False)
    try:
        assert torch.autograd.gradcheck(log_prob, tuple(leaves), eps=1e-6, atol=1e-5, rtol=1e-4)
    finally:
        set_validation(True)


# ------------------------------------------------- found in review (2026-12-05)
def test_a_changed_number_constant_is_read_in_the_inputs_precision() -> None:
    """A constant given as a number is used in float64 inputs' precision; once its buffer changed (load_state_dict,
    an annealed scale's fill_), the buffer's value is used (the constructor's number came back for float64 inputs)."""
    q = Normal(var=["x"], cond_var=["m"], loc="m", scale=1.0)
    q.load_state_dict({"scale": torch.tensor([2.0])})
    m = torch.zeros(1, 1, dtype=torch.float64)
    expected = st.norm(0.0, 2.0).logpdf(0.0)
    assert q.get_log_prob({"x": m, "m": m}).item() == pytest.approx(expected, rel=1e-12)
    assert q.sample_variance({"m": m}).item() == pytest.approx(4.0, rel=1e-12)
    fresh = Normal(var=["x"], cond_var=["m"], loc="m", scale=0.1)  # unchanged: the number itself, not float32(0.1)
    assert fresh.get_log_prob({"x": m, "m": m}).item() == st.norm(0.0, 0.1).logpdf(0.0)


def test_analytic_kl_of_a_constant_without_features_and_of_pairs_torch_cannot_compute() -> None:
    """Each side per feature, then summed: a constant side without features_shape against one with features (torch
    had no KL for the Independent pair it was wrapped into); a pair torch's registry matches by a general rule that
    then cannot compute falls back to Monte Carlo (it was reported as shapes that do not broadcast)."""
    import torch.distributions as D

    from kizuna.losses import KullbackLeibler

    m = torch.randn(4, 3, dtype=torch.float64)
    q = Laplace(var=["x"], cond_var=["m"], loc="m", scale=1.0)
    p = Laplace(var=["x"], loc=0.0, scale=1.0)
    torch.testing.assert_close(KullbackLeibler(q, p).eval({"m": m}),
                               D.kl_divergence(D.Laplace(m, 1.0), D.Laplace(0.0, 1.0)).sum(1))
    a = BinaryConcrete(var=["x"], temperature=0.5, probs=0.3)
    b = BinaryConcrete(var=["x"], temperature=0.5, probs=0.6)
    kl = KullbackLeibler(a, b)
    assert kl.eval({}, batch_n=5).shape == (5,) and kl.method == "monte_carlo"
    with pytest.raises(ValueError, match="no closed form .* after all"):
        KullbackLeibler(a, b, analytic=True).eval({}, batch_n=5)


def test_bernoulli_probabilities_score_values_of_another_dtype() -> None:
    """float64 data against a float32 model's probabilities (lerp takes one dtype): torch's log-probability."""
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    b = Bernoulli(var=["x"], probs=0.3, features_shape=[2])
    expected = float(np.log(0.3) + np.log(0.7))
    assert b.get_log_prob({"x": x}).item() == pytest.approx(expected, rel=1e-6)


def test_concrete_takes_one_temperature() -> None:
    p = Concrete(var=["x"], cond_var=["t"], temperature="t", probs=torch.tensor([0.2, 0.3, 0.5]))
    x = torch.softmax(torch.randn(3, 3), -1)
    with pytest.raises(ValueError, match="one temperature for the whole batch"):
        p.get_log_prob({"x": x, "t": torch.tensor([[0.5], [1.0], [2.0]])})


def test_relaxed_categorical_temperature_error_names_its_own_class() -> None:
    """The error names the class the user built (it named the parent, Concrete)."""
    from kizuna.distributions import RelaxedCategorical

    p = RelaxedCategorical(var=["x"], cond_var=["t"], temperature="t", probs=torch.tensor([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="RelaxedCategorical takes one temperature for the whole batch"):
        p.sample({"t": torch.tensor([[0.5], [1.0], [2.0]])})


def test_a_number_for_a_vector_parameter_is_named() -> None:
    """A number given as a MultivariateNormal's loc is no vector (it became a length-1 one and the errors came later,
    about shapes)."""
    with pytest.raises(ValueError, match=r"parameter loc of MultivariateNormal needs at least 1 dimension"):
        MultivariateNormal(var=["x"], loc=0.0, covariance_matrix=torch.eye(3))
    assert MultivariateNormal(var=["x"], loc=torch.zeros(3), covariance_matrix=torch.eye(3)).features_shape == (3,)


def test_numbers_given_as_values_and_coefficients_take_the_models_dtype_and_device() -> None:
    """A Python number scored by a float64 model, or a number coefficient of a float64 loss, is computed in float64
    (both were CPU float32 tensors: 0.1 rounded to 0.100000001, 1e-8 relative error against scipy), and on the
    model's device (checked on torch's "meta" device, which needs no GPU; validation off, as meta has no values)."""
    from kizuna.distributions.torch_dist import validation
    from kizuna.losses import LogProb, MaxLoss

    p = Normal(var=["x"], cond_var=["m"], loc="m", scale=1.0).double()
    lp = p.get_log_prob({"x": 0.0, "m": 0.1})
    assert lp.dtype == torch.float64
    np.testing.assert_allclose(lp.numpy(), [st.norm.logpdf(0.0, 0.1, 1.0)], rtol=1e-15)
    x = torch.zeros(2, 1, dtype=torch.float64)
    scaled = (0.1 * LogProb(p)).eval({"x": x, "m": x})
    np.testing.assert_allclose(scaled.numpy(), 0.1 * st.norm.logpdf(0.0), rtol=1e-15)
    floor = MaxLoss(LogProb(p), -0.1).eval({"x": x, "m": x + 3.0})  # log p = -5.42 < -0.1: the floor, in float64
    assert floor.dtype == torch.float64 and torch.equal(floor, torch.full((2,), -0.1, dtype=torch.float64))
    q = Normal(var=["x"], loc=0.0, scale=1.0).to("meta")
    with validation(False):
        assert q.get_log_prob({"x": 0.5}).device.type == "meta"
        assert (0.5 * LogProb(q)).eval({"x": torch.zeros(3, 1, device="meta")}).device.type == "meta"


def test_relaxed_categorical_gradient_is_finite_at_an_impossible_category() -> None:
    """A category with probability exactly 0 (its logit -inf, as a network masks categories) and a value 0 there: the
    log-likelihood Σ_{y_k > 0} y_k log p_k has the reference's gradients (log p_k for the value where y_k > 0, 0 where
    y_k = 0; the logits' through log_softmax); the value's gradient was 0 · (-inf) = NaN."""

    class Masked(RelaxedCategorical):
        def __init__(self) -> None:
            super().__init__(var=["y"], cond_var=["h"], temperature=0.5)

        def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": h}

    h = torch.tensor([[-float("inf"), 0.0, 0.5], [-float("inf"), 1.0, -0.5]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0.0, 0.3, 0.7], [0.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    lp = Masked().get_log_prob({"y": y, "h": h})
    got = torch.autograd.grad(lp.sum(), [y, h])
    ref = (y[:, 1:] * torch.log_softmax(h[:, 1:], -1)).sum(-1)  # the possible categories only
    want = torch.autograd.grad(ref.sum(), [y, h])
    torch.testing.assert_close(lp, ref)
    assert all(torch.isfinite(g).all() for g in got)
    torch.testing.assert_close(got[0], torch.where(y > 0, want[0], 0.0))
    torch.testing.assert_close(got[1], want[1])


def test_integer_values_as_parameters_are_floating_parameters() -> None:
    """``loc="m"`` with an int64 ``m``: sampling failed ("normal_kernel_cpu" not implemented for 'Long') and
    ``sample_mean`` was int64; Bernoulli's log-density failed in torch.finfo, Poisson's draw likewise. The values are
    taken as floating parameters in the constants' dtype (the default one without constants), scored as scipy does."""
    from scipy import stats

    m = torch.tensor([[0, 1], [2, 3]])
    p = Normal(var=["x"], cond_var=["m"], loc="m", scale=2.0)
    draw = p.sample({"m": m})["x"]
    assert draw.dtype == torch.get_default_dtype() and p.sample_mean({"m": m}).dtype == torch.get_default_dtype()
    x = torch.tensor([[0.5, -1.0], [2.0, 4.0]])
    np.testing.assert_allclose(p.get_log_prob({"m": m, "x": x}).numpy(),
                               stats.norm(m.numpy(), 2.0).logpdf(x.numpy()).sum(1), rtol=1e-6)
    wide = Normal(var=["x"], cond_var=["m"], loc="m", scale=torch.tensor(2.0, dtype=torch.float64))
    assert wide.sample({"m": m})["x"].dtype == torch.float64
    coin = Bernoulli(var=["x"], cond_var=["p"], probs="p")
    ones = torch.ones(2, 3, dtype=torch.long)
    assert torch.equal(coin.sample({"p": ones})["x"], torch.ones(2, 3))
    torch.testing.assert_close(coin.get_log_prob({"p": ones, "x": torch.ones(2, 3)}), torch.zeros(2), atol=1e-6, rtol=0)
    counts = Poisson(var=["x"], cond_var=["r"], rate="r").sample({"r": torch.full((2, 3), 2)})["x"]
    assert counts.shape == (2, 3) and counts.is_floating_point()


def test_a_network_that_returns_other_rows_than_its_inputs_is_named_when_sampling() -> None:
    """``forward`` returning 3 rows for a 4-row z drew x of 3 rows next to z of 4 in a product, silently (scoring
    named it already); with batch_n=4 the error blamed the conditioning values ("have batch size 3")."""

    class ThreeRows(Normal):
        def __init__(self):
            super().__init__(var=["x"], cond_var=["z"], name="q")

        def forward(self, z):
            return {"loc": torch.zeros(3, 2), "scale": torch.ones(3, 2)}

    z = torch.randn(4, 1)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1])
    message = r"^q\(x\|z\): the parameters have batch size 3 but the conditioning values \(z\) have batch size 4"
    for call in (lambda: ThreeRows().sample({"z": z}), lambda: (ThreeRows() * prior).sample({"z": z})):
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match=r"the parameters have batch size 3 but batch_n=4 \(the conditioning values "
                                         r"\(z\) have batch size 4\)"):
        ThreeRows().sample({"z": z}, batch_n=4)


def test_numbers_given_as_constants_are_exact_after_double() -> None:
    """``Normal(loc=0.3, scale=0.1).double()`` held float32(0.1) cast to float64 (0.10000000149), so its densities
    were scipy's at the float32-rounded constants (1e-8 to 4e-7 off the exact ones) while reporting float64; a
    constant changed by the user is converted as it is."""
    x = torch.tensor([[0.25, 0.3, 0.41]], dtype=F64)
    p = Normal(var=["x"], loc=0.3, scale=0.1, features_shape=[3]).double()
    assert p.scale.dtype == F64 and p.scale.flatten()[0].item() == 0.1
    np.testing.assert_allclose(p.get_log_prob({"x": x}).numpy(), st.norm(0.3, 0.1).logpdf(x.numpy()).sum(1),
                               rtol=1e-14)
    g = Gamma(var=["x"], concentration=2.3, rate=0.7, features_shape=[3]).double()
    np.testing.assert_allclose(g.get_log_prob({"x": x}).numpy(), st.gamma(2.3, scale=1 / 0.7).logpdf(x.numpy()).sum(1),
                               rtol=1e-14)
    assert Normal(var=["x"], cond_var=["z"], loc="z", scale=0.1).double().scale.item() == 0.1
    changed = Normal(var=["x"], loc=0.0, scale=0.1, features_shape=[1])
    with torch.no_grad():
        changed.scale.fill_(0.2)
    assert changed.double().scale.item() == float(torch.tensor(0.2, dtype=torch.float32))


def test_multinomial_takes_a_whole_total_count_of_any_type_and_scores_as_scipy():
    """``total_count=5.0`` (or a 0-d tensor, a numpy integer) passed torch's integer constraint and then failed at
    first use as an "inhomogeneous total_count" naming a private class."""
    import numpy as np
    from scipy import stats as st

    c = torch.tensor([[1.0, 2.0, 2.0]], dtype=torch.float64)
    expected = st.multinomial.logpmf([1, 2, 2], 5, [0.2, 0.3, 0.5])
    for total in (5, 5.0, torch.tensor(5), np.int64(5)):
        p = Multinomial(var=["c"], total_count=total, probs=torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
        assert p.get_log_prob({"c": c}).item() == pytest.approx(expected, rel=1e-12)
    for bad in (torch.tensor([5, 5]), True, 2.5):
        with pytest.raises(ValueError, match="total_count must be one whole number >= 0"):
            Multinomial(var=["c"], total_count=bad, probs=torch.tensor([0.5, 0.5]))


def test_a_condition_of_the_declared_features_shape_without_a_batch_is_one_row_everywhere():
    """``Normal(loc="x", features_shape=[4])`` given x of shape (4,): sample drew four rows (one per feature) while
    sample_mean and get_log_prob took one row; now one row everywhere, as the README says."""
    n = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, features_shape=[4])
    x = torch.arange(4.0)
    assert n.sample({"x": x})["z"].shape == (1, 4)
    assert n.sample_mean({"x": x}).shape == (1, 4)
    assert n.get_log_prob({"x": x, "z": x}).shape == (1,)
    assert n.sample({"x": torch.zeros(3, 4)})["z"].shape == (3, 4)  # a batch stays a batch


def test_an_unbatched_condition_still_broadcasts_to_the_rows_of_other_values():
    """A condition without a batch dimension is one row, but the parameters still broadcast to the rows of the other
    values given, as a one-row condition does (the first fix drew one row); an MLP distribution given an unbatched
    condition draws one row, as its density and mean take it."""
    from kizuna.distributions import MLPNormal

    p = Normal(var=["x"], cond_var=["m"], loc="m", scale=1.0, features_shape=[3])
    others = {"z": torch.zeros(10, 2)}
    assert p.sample({"m": torch.zeros(3), **others})["x"].shape == (10, 3)
    assert p.sample({"m": torch.zeros(1, 3), **others})["x"].shape == (10, 3)
    scalar = Normal(var=["x"], cond_var=["m"], loc="m", scale=1.0, features_shape=[1])
    assert scalar.sample({"m": torch.zeros(1), "y": torch.zeros(4)})["x"].shape == (4, 1)
    q = MLPNormal("z", ["x"], [3, 8, 2])
    assert q.sample({"x": torch.zeros(3)})["z"].shape == (1, 2)
    assert q.sample({"x": torch.zeros(5, 3)})["z"].shape == (5, 2)
    assert MLPNormal("z", ["t"], [1, 8, 2]).sample({"t": torch.zeros(5)})["z"].shape == (5, 2)


def test_a_constant_tensor_that_requires_grad_is_named_as_copied() -> None:
    """A tensor that requires grad given as a constant parameter (Pixyz programs do this to learn a prior's loc) is
    copied into a buffer: no gradient reaches it, and the optimiser given it steps a tensor the distribution no
    longer reads. A warning says so at the user's line and names nn.Parameter; an nn.Parameter is learnt."""
    import warnings

    from kizuna.distributions import MixtureOfNormal

    loc = torch.zeros(3, requires_grad=True)
    with pytest.warns(UserWarning, match=r"p\(x\): parameter loc is a tensor that requires grad.*nn\.Parameter") as rec:
        Normal(var=["x"], loc=loc, scale=torch.ones(3))
    assert rec[0].filename == __file__
    with pytest.warns(UserWarning, match=r"MixtureOfNormal: weights is a tensor that requires grad"):
        MixtureOfNormal([Normal(var=["z"], loc=0.0, scale=1.0), Normal(var=["z"], loc=1.0, scale=1.0)],
                        weights=torch.ones(2, requires_grad=True))
    learnt = torch.nn.Parameter(torch.zeros(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = Normal(var=["x"], loc=learnt, scale=torch.ones(3))
        Normal(var=["x"], loc=torch.zeros(3), scale=1.0)
    (-p.get_log_prob({"x": torch.ones(2, 3)}).sum()).backward()
    torch.testing.assert_close(learnt.grad, torch.full((3,), -2.0))
