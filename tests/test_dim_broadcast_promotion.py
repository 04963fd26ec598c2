"""Three leftovers of a review, each against a reference:

* `KullbackLeibler`'s ``dim`` read as Pixyz reads it (``if self.dim:``, then a sum over ``dim`` or over every feature
  dimension): a 0-d integer tensor as its number (a 0-d 0 summed over the batch), ``False`` as the default (it was
  torch's raw TypeError), a non-integer one a TypeError naming ``dim``; against the closed form of
  ``torch.distributions.kl_divergence`` summed by Pixyz's rule;
* `AffineCoupling` takes a scale or shift that broadcasts to ``x`` with fewer dimensions (a ``(D,)`` parameter shared by
  every row was refused), its log-determinant per row against autograd's Jacobian;
* `MixtureOfNormal` with float64 weights and float32 experts computes in the experts' float32 (a guard of that
  decision), against scipy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from torch import distributions as D
from torch import nn

from kizuna.distributions import MixtureOfNormal, Normal
from kizuna.flows import AffineCoupling
from kizuna.losses.divergences import KullbackLeibler

F64 = torch.float64


# ------------------------------------------------------------------------------------------------ KL dim
def _pixyz_kl(per_feature: torch.Tensor, dim) -> torch.Tensor:
    """Pixyz's ``KullbackLeibler.forward`` after ``kl_divergence``."""
    if dim:
        return torch.sum(per_feature, dim=dim)
    return torch.sum(per_feature, dim=list(range(per_feature.dim()))[1:])


def _kl_pair():
    g = torch.Generator().manual_seed(5)
    loc = torch.randn(4, 2, 3, generator=g, dtype=F64)
    scale = torch.rand(4, 2, 3, generator=g, dtype=F64) + 0.5
    q = Normal(var=["z"], cond_var=["m", "s"], loc="m", scale="s", name="q")
    p_loc, p_scale = torch.tensor([[0.5, -1.0, 0.0], [1.5, 0.25, -0.5]], dtype=F64), torch.full((2, 3), 1.5, dtype=F64)
    prior = Normal(var=["z"], loc=p_loc, scale=p_scale, name="p")
    per_feature = D.kl_divergence(D.Normal(loc, scale), D.Normal(p_loc, p_scale))  # (4, 2, 3), the closed form
    return q, prior, {"m": loc, "s": scale}, per_feature


@pytest.mark.parametrize("dim, same_as", [
    (torch.tensor(1), 1), (torch.tensor(2), 2), (torch.tensor(-1), -1), (np.array(2), 2),
    (torch.tensor(0), 0), (np.array(0), 0), (False, None), (None, None), ([torch.tensor(1), 2], (1, 2)),
])
def test_kl_dim_as_a_tensor_or_false_is_read_as_pixyz_reads_it(dim, same_as) -> None:
    q, prior, values, per_feature = _kl_pair()
    got = KullbackLeibler(q, prior, dim=dim).eval(values)
    assert bool(dim) == bool(same_as)  # Pixyz's ``if self.dim:`` takes the same branch (torch's sum takes no array)
    torch.testing.assert_close(got, _pixyz_kl(per_feature, same_as), rtol=1e-12, atol=0)
    torch.testing.assert_close(got, KullbackLeibler(q, prior, dim=same_as).eval(values), rtol=0, atol=0)


@pytest.mark.parametrize("dim", [1.5, "1", True, torch.tensor(1.0), torch.tensor([1, 2]), [1, 2.5]])
def test_kl_dim_that_is_not_an_integer_is_named(dim) -> None:
    q, prior, _, _ = _kl_pair()
    with pytest.raises(TypeError, match=r"^KullbackLeibler: dim must be an integer or a sequence of integers"):
        KullbackLeibler(q, prior, dim=dim)


# ---------------------------------------------------------------------------------------- AffineCoupling
class _Param(nn.Module):
    """A network that ignores its input: a learnable value shared by every row."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


class _ParamPair(nn.Module):
    def __init__(self, s: torch.Tensor, t: torch.Tensor) -> None:
        super().__init__()
        self.s, self.t = nn.Parameter(s), nn.Parameter(t)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.s, self.t


def _jacobian_logdet(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of each row's map, by autograd."""
    return torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(
        lambda v: layer.forward_and_logdet(v[None])[0][0], row))[1] for row in x])


@pytest.mark.parametrize("mask_type", ["channel_wise", "checkerboard"])
@pytest.mark.parametrize("s_shape, t_shape", [((4,), (4,)), ((), (4,)), ((4,), (1, 4)), ((1, 4), ())])
@pytest.mark.parametrize("paired", [False, True])
def test_a_coupling_scale_shared_by_every_row_is_broadcast(mask_type, s_shape, t_shape, paired) -> None:
    g = torch.Generator().manual_seed(2)
    s, t = 0.5 * torch.randn(s_shape, generator=g, dtype=F64), torch.randn(t_shape, generator=g, dtype=F64)
    f = (AffineCoupling(4, mask_type, scale_translate_net=_ParamPair(s, t)) if paired
         else AffineCoupling(4, mask_type, scale_net=_Param(s), translate_net=_Param(t)))
    x = torch.randn(3, 4, generator=g, dtype=F64)
    z, logdet = f.forward_and_logdet(x)  # was a ValueError: scale_net returned (4,)
    free = 1 - f.build_mask(x)
    torch.testing.assert_close(z, x * torch.exp(s * free) + t * free, rtol=1e-14, atol=0)
    assert logdet.shape == (3,)
    torch.testing.assert_close(logdet, _jacobian_logdet(f, x), rtol=1e-12, atol=1e-14)
    back, inv_logdet = f.inverse_and_logdet(z)
    torch.testing.assert_close(back, x, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(inv_logdet, -logdet, rtol=0, atol=0)


def test_a_coupling_output_that_does_not_broadcast_is_still_named() -> None:
    x = torch.randn(3, 4)
    f = AffineCoupling(4, scale_net=_Param(torch.zeros(2)), translate_net=_Param(torch.zeros(4)))
    with pytest.raises(ValueError, match=r"^AffineCoupling: scale_net returned \(2,\), expected the shape of x, "
                                         r"\(3, 4\) \(or one that broadcasts to it\)"):
        f(x)
    # one tensor of x's own dimensions is no stacked pair: a (B, D) output at batch size 2 would be split into rows
    g = AffineCoupling(4, scale_translate_net=nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"^AffineCoupling: scale_translate_net must return the pair \(s, t\), got "
                                         r"shape \(2, 4\) \(expected a tuple, or one tensor of 3 dimensions"):
        g(torch.randn(2, 4))


# ------------------------------------------------------------------------------------ mixture dtypes
def test_mixture_of_normal_computes_in_its_experts_dtype_with_weights_of_any_dtype() -> None:
    """A guard of a decision (2026-12-06): float64 weights (from numpy, say) with float32 experts keep the experts'
    float32, the model's dtype, for densities and means (a promotion to float64, as MixtureSameFamily does, made the
    mean fail in a float32 decoder); float64 data is scored in float64, exactly as scipy."""
    weights = np.array([0.3, 0.45, 0.25])
    locs, scales = [-1.25, 0.5, 2.0], [1.0, 1.0, 1.0]  # float32-exact (log 1 = 0): float32 experts lose nothing
    experts = [Normal(var=["z"], loc=torch.full((2,), m), scale=torch.full((2,), s), name="q")
               for m, s in zip(locs, scales)]
    x = torch.linspace(-2.25, 2.25, 10, dtype=F64).reshape(5, 2)  # steps of 0.5: float32-exact too
    ref = logsumexp(np.stack([np.log(w) + stats.norm.logpdf(x.numpy(), m, s).sum(1)
                              for w, m, s in zip(weights, locs, scales)]), axis=0)
    mon = MixtureOfNormal(experts, weights=torch.from_numpy(weights))
    lp = mon.get_log_prob({"z": x})
    assert lp.dtype == F64
    np.testing.assert_allclose(lp.numpy(), ref, rtol=1e-12, atol=0)
    lp32 = mon.get_log_prob({"z": x.float()})
    assert lp32.dtype == torch.float32
    np.testing.assert_allclose(lp32.numpy(), ref, rtol=1e-6)
    mean = mon.sample_mean({})
    assert mean.dtype == torch.float32
    np.testing.assert_allclose(mean.numpy(), np.full((1, 2), weights @ np.array(locs)), rtol=1e-6)
