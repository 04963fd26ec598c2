"""`Entropy` and `CrossEntropy` against scipy, closed forms and Monte Carlo.

Monte-Carlo tolerance: ``N_SE`` (5) standard errors of the mean of the integrand
(``-log p`` or ``-log q``), measured on the draws of the estimate (see ``mc_reference``).
"""

import numpy as np
import pytest
import torch
from mc_reference import assert_mc_close, default_dtype, standard_error
from scipy import special, stats

from kizuna.distributions import (
    Bernoulli,
    Beta,
    Categorical,
    Dirichlet,
    Gamma,
    Laplace,
    LogNormal,
    Normal,
    Poisson,
    StudentT,
    VonMises,
)
from kizuna.losses import CrossEntropy, Entropy, KullbackLeibler

N_MC = 100_000


@pytest.fixture(autouse=True)
def _float64():
    with default_dtype(torch.float64):
        yield


def _positive(*shape):
    return torch.rand(*shape) * 3 + 0.5


def _scipy_rows(make, *params):
    """Entropy per row from scipy, summed over the features; ``make`` builds one frozen dist."""
    arrays = [p.numpy() for p in params]
    return np.array([sum(make(*(a[r][f] for a in arrays)).entropy() for f in range(arrays[0].shape[1]))
                     for r in range(arrays[0].shape[0])])


def _dirichlet_rows(conc):
    c = conc.numpy()
    return np.array([sum(stats.dirichlet(c[r, f]).entropy() for f in range(c.shape[1])) for r in range(c.shape[0])])


def _categorical_rows(probs):
    return np.array([sum(stats.entropy(p) for p in row) for row in probs.numpy()])


# family, its parameters (each read from a conditioning variable of the same name), scipy reference
CASES = {
    "Normal": (Normal, lambda: {"loc": torch.randn(3, 4), "scale": _positive(3, 4)},
               lambda prm: _scipy_rows(stats.norm, prm["loc"], prm["scale"])),
    "Laplace": (Laplace, lambda: {"loc": torch.randn(3, 4), "scale": _positive(3, 4)},
                lambda prm: _scipy_rows(stats.laplace, prm["loc"], prm["scale"])),
    "LogNormal": (LogNormal, lambda: {"loc": torch.randn(3, 4), "scale": _positive(3, 4)},
                  lambda prm: _scipy_rows(lambda m, s: stats.lognorm(s, scale=np.exp(m)), prm["loc"], prm["scale"])),
    "StudentT": (StudentT, lambda: {"df": _positive(3, 4) + 1, "loc": torch.randn(3, 4), "scale": _positive(3, 4)},
                 lambda prm: _scipy_rows(stats.t, prm["df"], prm["loc"], prm["scale"])),
    "Gamma": (Gamma, lambda: {"concentration": _positive(3, 4), "rate": _positive(3, 4)},
              lambda prm: _scipy_rows(lambda a, b: stats.gamma(a, scale=1 / b), prm["concentration"], prm["rate"])),
    "Beta": (Beta, lambda: {"concentration1": _positive(3, 4), "concentration0": _positive(3, 4)},
             lambda prm: _scipy_rows(stats.beta, prm["concentration1"], prm["concentration0"])),
    "Bernoulli": (Bernoulli, lambda: {"probs": torch.rand(3, 4) * 0.8 + 0.1},
                  lambda prm: _scipy_rows(stats.bernoulli, prm["probs"])),
    "Categorical": (Categorical, lambda: {"probs": torch.randn(3, 2, 5).softmax(-1)},
                    lambda prm: _categorical_rows(prm["probs"])),
    "Dirichlet": (Dirichlet, lambda: {"concentration": _positive(3, 2, 4)},
                  lambda prm: _dirichlet_rows(prm["concentration"])),
}


def _conditional(family, names, name="p"):
    return family(var=["x"], cond_var=list(names), name=name, **{k: k for k in names})


@pytest.mark.parametrize("case", sorted(CASES))
def test_analytic_entropy_matches_scipy(case):
    torch.manual_seed(0)
    family, make_params, reference = CASES[case]
    params = make_params()
    entropy = Entropy(_conditional(family, params))
    assert entropy.method == "analytic"
    np.testing.assert_allclose(entropy.eval(params).numpy(), reference(params), rtol=1e-9)


def _mc_entropy_check(p, x, reference, what, analytic=None):
    loss = Entropy(p, analytic=analytic, sample_shape=(N_MC,))
    assert loss.method == "monte_carlo"
    estimate, draws = loss.eval(x, return_dict=True)
    neg_log_p = -p.get_dist(x).log_prob(draws["x"])
    torch.testing.assert_close(estimate, neg_log_p.mean(0))
    assert_mc_close(estimate, reference, standard_error(neg_log_p), what=what)


def test_entropy_without_closed_form_uses_monte_carlo_von_mises():
    # torch's VonMises has no entropy; H = log(2 pi I0(k)) - k I1(k)/I0(k) (scipy)
    torch.manual_seed(1)
    x = {"loc": torch.tensor([[0.0, 1.0], [2.0, -1.0]]), "concentration": torch.tensor([[0.5, 2.0], [4.0, 1.0]])}
    p = _conditional(VonMises, x)
    ref = _scipy_rows(lambda m, k: stats.vonmises(k, loc=m), x["loc"], x["concentration"])
    _mc_entropy_check(p, x, ref, "H[VonMises]")
    with pytest.raises(ValueError, match="no analytic entropy"):
        Entropy(p, analytic=True)


def test_entropy_of_poisson_uses_monte_carlo():
    # torch's Poisson inherits ExponentialFamily.entropy, which raises for it: not a closed form
    torch.manual_seed(2)
    x = {"rate": torch.tensor([[0.5, 3.0], [10.0, 1.5]])}
    _mc_entropy_check(_conditional(Poisson, x), x, _scipy_rows(stats.poisson, x["rate"]), "H[Poisson]")


def test_monte_carlo_entropy_matches_analytic():
    torch.manual_seed(3)
    x = {"concentration1": _positive(3, 4), "concentration0": _positive(3, 4)}
    p = _conditional(Beta, x)
    assert Entropy(p).method == "analytic"
    _mc_entropy_check(p, x, Entropy(p).eval(x), "H[Beta] analytic vs MC", analytic=False)


def _normal_pair():
    x = {"pm": torch.randn(3, 4), "ps": _positive(3, 4), "qm": torch.randn(3, 4), "qs": _positive(3, 4)}
    p = Normal(var=["x"], cond_var=["pm", "ps"], loc="pm", scale="ps", name="p")
    q = Normal(var=["x"], cond_var=["qm", "qs"], loc="qm", scale="qs", name="q")
    return p, q, x


def test_cross_entropy_normal_closed_form_monte_carlo_and_h_plus_kl():
    torch.manual_seed(4)
    p, q, x = _normal_pair()
    ce = CrossEntropy(p, q)
    assert ce.method == "analytic"
    value = ce.eval(x)
    # -E_p[log q] = 1/2 log(2 pi s_q^2) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2), summed over features
    m1, s1, m2, s2 = (x[k].numpy() for k in ("pm", "ps", "qm", "qs"))
    closed = (0.5 * np.log(2 * np.pi * s2**2) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2)).sum(1)
    np.testing.assert_allclose(value.numpy(), closed, rtol=1e-12)
    torch.testing.assert_close(value, (Entropy(p) + KullbackLeibler(p, q)).eval(x))

    mc = CrossEntropy(p, q, analytic=False, sample_shape=(N_MC,))
    estimate, draws = mc.eval(x, return_dict=True)
    neg_log_q = -q.get_dist(x).log_prob(draws["x"])
    assert_mc_close(estimate, value, standard_error(neg_log_q), what="H[p||q] MC vs analytic")


def test_cross_entropy_without_kl_formula_is_monte_carlo():
    # StudentT p, Normal q: no KL in the registry, but -E_p[log q] has a closed form through Var_p
    torch.manual_seed(5)
    x = {"df": torch.tensor([[5.0, 7.0]]).expand(2, 2), "pm": torch.randn(2, 2), "ps": _positive(2, 2),
         "qm": torch.randn(2, 2), "qs": _positive(2, 2)}
    p = StudentT(var=["x"], cond_var=["df", "pm", "ps"], df="df", loc="pm", scale="ps", name="p")
    q = Normal(var=["x"], cond_var=["qm", "qs"], loc="qm", scale="qs", name="q")
    ce = CrossEntropy(p, q, sample_shape=(N_MC,))
    assert ce.method == "monte_carlo"
    df, m1, s1, m2, s2 = (x[k].numpy() for k in ("df", "pm", "ps", "qm", "qs"))
    var_p = s1**2 * df / (df - 2)
    closed = (0.5 * np.log(2 * np.pi * s2**2) + (var_p + (m1 - m2) ** 2) / (2 * s2**2)).sum(1)
    estimate, draws = ce.eval(x, return_dict=True)
    neg_log_q = -q.get_dist(x).log_prob(draws["x"])
    assert_mc_close(estimate, closed, standard_error(neg_log_q), what="H[StudentT||Normal]")
    with pytest.raises(ValueError, match="no analytic cross-entropy"):
        CrossEntropy(p, q, analytic=True)


def test_von_mises_reference_is_right():
    # the scipy reference itself against the Bessel-function formula
    k = 2.0
    expected = np.log(2 * np.pi * special.i0(k)) - k * special.i1(k) / special.i0(k)
    np.testing.assert_allclose(stats.vonmises(k).entropy(), expected, rtol=1e-10)


def test_closed_form_kl_and_cross_entropy_to_a_constant_prior_broadcast_it_to_the_batch() -> None:
    """A constant Bernoulli prior against a batch (torch's Bernoulli KL indexes by a mask of the other side's shape:
    IndexError), and the cross-entropy to N(0, 1) without features_shape against features (torch had no KL for the
    Independent / Normal pair): both in closed form, against scipy."""
    probs = torch.tensor([[0.1, 0.5], [0.9, 0.2]], dtype=torch.float64)
    q = Bernoulli(var=["z"], cond_var=["p"], probs="p")
    prior = Bernoulli(var=["z"], probs=0.3)
    kl = KullbackLeibler(q, prior)
    assert kl.method == "analytic"
    a, b = probs.numpy(), 0.3
    expected = (a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))).sum(1)
    np.testing.assert_allclose(kl.eval({"p": probs}).numpy(), expected, rtol=1e-12)

    m = torch.linspace(-2.0, 2.0, 12, dtype=torch.float64).reshape(4, 3)
    qn = Normal(var=["z"], cond_var=["m"], loc="m", scale=0.7)
    ce = CrossEntropy(qn, Normal(var=["z"], loc=0.0, scale=1.0))
    assert ce.method == "analytic"
    # -E_q[log N(z; 0, 1)] = 1/2 log(2 pi) + (m^2 + 0.7^2) / 2 per feature
    expected = (0.5 * np.log(2 * np.pi) + (m.numpy() ** 2 + 0.49) / 2).sum(1)
    np.testing.assert_allclose(ce.eval({"m": m}).numpy(), expected, rtol=1e-12)


def test_a_cross_entropy_between_families_and_one_torch_cannot_compute() -> None:
    """H[N(0, 1) || Laplace(0, 1)] = log 2 + E|x| = log 2 + sqrt(2 / pi), through the KL's own path; a pair torch's
    registry matches by a general rule that then cannot compute (Normal / Poisson) is named with analytic=True, as
    KullbackLeibler does."""
    p = Normal(var=["x"], loc=0.0, scale=1.0)
    value = CrossEntropy(p, Laplace(var=["x"], loc=0.0, scale=1.0)).eval({}, batch_n=2)
    np.testing.assert_allclose(value.numpy(), np.log(2) + np.sqrt(2 / np.pi), rtol=1e-6)
    with pytest.raises(ValueError, match="no closed form for Normal against Poisson after all"):
        CrossEntropy(p, Poisson(var=["x"], rate=2.0), analytic=True).eval({}, batch_n=2)
