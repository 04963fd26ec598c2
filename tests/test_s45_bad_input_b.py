"""Bad input to the samplers and to a few public helpers (review W, findings 3, 5, 6 and 8; stop 45).

* 3: every sampler checks the network's output to have the draws' shape (a (B, 1) velocity for (B, 2) draws was
  broadcast into wrong draws silently, a (B,) or (B, 3) one was torch's bare broadcast error) and, while validation
  is on, the draws to be finite (a network that emits NaN gave all-NaN draws silently; checked once, at the end):
  the error names the sampler, the number of steps taken and the first non-finite entry.
* 5: a MultivariateNormal whose loc and matrix sizes differ is refused at construction, at ``get_params`` and at the
  first evaluation of parameters from a network (torch's reshape error came from log_prob or sample).
* 6: options that take a function given a value (``euler_maruyama(diffusion=1.0)``,
  ``WassersteinDistance(metric="l2")``, ``guided(network, ...)``) are TypeErrors naming the option.
* 8: ``sample_classes`` on 1-D weights, ``sample_dirichlet`` of a list, ``to_dot`` of a string and ``save_module``
  under a file are named errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import kizuna.modules as km
from kizuna import samplers as S
from kizuna.distributions import MultivariateNormal, Normal, validation
from kizuna.losses import WassersteinDistance
from kizuna.viz import model_spec, to_dot

NAN = float("nan")


def _velocity(shape_of: str):
    """A velocity that returns the wrong shape for (B, 2) draws."""
    return {"(B,1)": lambda x, t: -x[:, :1], "(B,)": lambda x, t: -x.sum(1),
            "(B,3)": lambda x, t: torch.cat([x, x[:, :1]], 1)}[shape_of]


# ------------------------------------------------------------------------------------ 3. network output shape
@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim", "euler_maruyama"])
@pytest.mark.parametrize("bad, shape", [("(B,1)", "(3, 1)"), ("(B,)", "(3,)"), ("(B,3)", "(3, 3)")])
def test_a_velocity_of_another_shape_is_named_with_the_sampler(sampler: str, bad: str, shape: str) -> None:
    path = S.LinearPath(_velocity(bad), [2])
    run = getattr(S, sampler)
    with pytest.raises(ValueError, match=rf"^{sampler}: LinearPath: the velocity has shape {re_shape(shape)}, "
                                         rf"x has \(3, 2\)$"):
        run(path, n=3, n_steps=4, **({"diffusion": lambda tau: 1 - tau} if sampler == "euler_maruyama" else {}))


def re_shape(text: str) -> str:
    return text.replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim", "euler_maruyama"])
def test_a_score_of_another_shape_is_named_with_the_sampler(sampler: str) -> None:
    path = S.ScorePath(lambda x, i: -x[:, :1], [1.0, 0.5, 0.1], [2])
    with pytest.raises(ValueError, match=rf"^{sampler}: ScorePath: the score has shape \(3, 1\), x has \(3, 2\)$"):
        getattr(S, sampler)(path, n=3, n_steps=3)


def test_a_guided_path_and_a_non_tensor_output_are_named() -> None:
    good, bad = S.LinearPath(lambda x, t: -x, [2]), S.LinearPath(_velocity("(B,1)"), [2])
    with pytest.raises(ValueError, match=r"^heun: LinearPath: the velocity has shape \(3, 1\), x has \(3, 2\)$"):
        S.heun(S.guided(bad, good, 2.0), n=3, n_steps=2)
    numpy_net = S.LinearPath(lambda x, t: (-x).numpy(), [2])
    with pytest.raises(ValueError, match=r"^euler: LinearPath: the velocity must be a torch.Tensor of x's shape "
                                         r"\(3, 2\), got ndarray$"):
        S.euler(numpy_net, n=3, n_steps=2)
    # the path's own predict, outside a sampler, names the path
    with pytest.raises(ValueError, match=r"^LinearPath: the velocity has shape \(3, 1\), x has \(3, 2\)$"):
        bad.predict(torch.zeros(3, 2), 0.5)


def test_langevin_keeps_its_shape_message() -> None:
    """The one helper (`paths._checked`) now serves Langevin too: its message as before."""
    with pytest.raises(ValueError, match=r"^langevin_dynamics: the score has shape \(3,\), x has \(3, 2\)$"):
        S.langevin_dynamics(lambda x: -x.sum(1), torch.zeros(3, 2), 0.1, 2)


def test_draws_with_a_checked_network_are_unchanged() -> None:
    """Euler on v = -x from x0 with h = 1/n is x0 (1 - h)^n exactly (closed form); Heun's step multiplies by
    1 - h + h^2/2."""
    x0, n = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64), 8
    path = S.LinearPath(lambda x, t: -x, [2], dtype=torch.float64)
    h = 1 / n
    torch.testing.assert_close(S.euler(path, x=x0, n_steps=n), x0 * (1 - h) ** n)
    torch.testing.assert_close(S.heun(path, x=x0, n_steps=n), x0 * (1 - h + h * h / 2) ** n)


# ------------------------------------------------------------------------------------ 3. non-finite draws
def _nan_from(tau0: float, row: int | None = None):
    """A velocity -x that returns NaN from time ``tau0`` on (in every row, or in ``row`` alone)."""
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nan = t[:, None] >= tau0
        if row is not None:
            nan = nan & (torch.arange(x.shape[0])[:, None] == row)
        return torch.where(nan, torch.full_like(x, NAN), -x)
    return velocity


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim", "euler_maruyama"])
def test_nan_draws_name_the_sampler(sampler: str) -> None:
    kwargs = {"diffusion": lambda tau: 1 - tau} if sampler == "euler_maruyama" else {}
    run = getattr(S, sampler)
    with pytest.raises(FloatingPointError, match=rf"^{sampler}: the draws are not finite after 8 steps \(tau 0 -> 1\): "
                                                 r"4 of 4 rows hold NaN or inf \(the first: nan at row 0, column 0\); "
                                                 r"LinearPath's network \(its velocity, score or noise prediction\) "
                                                 r"returned NaN or inf, or the steps diverged"):
        run(S.LinearPath(_nan_from(0.25), [2]), n=4, n_steps=8, generator=torch.Generator().manual_seed(0), **kwargs)
    with pytest.raises(FloatingPointError, match=r"1 of 4 rows hold NaN or inf \(the first: nan at row 2, column 0\)"):
        run(S.LinearPath(_nan_from(0.5, row=2), [2]), n=4, n_steps=8, generator=torch.Generator().manual_seed(0),
            **kwargs)


def test_large_finite_half_precision_draws_pass() -> None:
    """The check reads the draws' sum first: a float16 sum that overflows (finite draws near 65504) is no error."""
    start = torch.full((8, 2), 60000.0, dtype=torch.float16)
    path = S.LinearPath(lambda x, t: torch.zeros_like(x), [2], dtype=torch.float16)
    assert torch.equal(S.euler(path, x=start, n_steps=2), start)


def test_nan_draws_of_a_score_path_and_without_validation() -> None:
    levels = [1.0, 0.5, 0.25, 0.1]
    path = S.ScorePath(lambda x, i: -x if i < 2 else x * NAN, levels, [2])
    with pytest.raises(FloatingPointError, match=r"^ddim: the draws are not finite after 4 steps \(tau 1 -> 0\): "
                                                 r"2 of 2 rows hold NaN or inf .*; ScorePath's network"):
        S.ddim(path, n=2, n_steps=4)
    with validation(False):  # the documented switch: nothing checked, NaN draws returned
        assert torch.isnan(S.ddim(path, n=2, n_steps=4)).all()


def test_nan_and_diverging_langevin_chains_are_named() -> None:
    with pytest.raises(FloatingPointError, match=r"^langevin_dynamics: the draws are not finite after 6 steps of "
                                                 r"step_size 0.01: 3 of 3 rows hold NaN or inf \(the first: nan at row "
                                                 r"0, column 0\); the score returned NaN or inf, or the step size is "
                                                 r"too large for it \(the chain diverged\)$"):
        S.langevin_dynamics(lambda x: x * NAN, torch.zeros(3, 2), 0.01, 6)
    # a finite score, a step too large: x -> (1 - step/2) x + noise = -4 x + noise overflows float32 in ~70 steps
    with pytest.raises(FloatingPointError, match=r"^langevin_dynamics: the draws are not finite after 100 steps of "
                                                 r"step_size 10.0: 3 of 3 rows"):
        S.langevin_dynamics(lambda x: -x, torch.ones(3, 2), 10.0, 100, generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match=r"^annealed_langevin_dynamics: the draws are not finite after 3 noise "
                                                 r"levels of 3 steps each: 3 of 3 rows"):
        S.annealed_langevin_dynamics(lambda x, i: x * NAN if i == 1 else -x, torch.zeros(3, 2), [1.0, 0.5, 0.1],
                                     n_steps_each=3)
    calls = []

    def nan_when_denoising(x: torch.Tensor, i: int) -> torch.Tensor:
        calls.append(i)
        return x * NAN if len(calls) == 5 else -x  # 2 levels x 2 steps, then the denoising step

    with pytest.raises(FloatingPointError, match=r"^annealed_langevin_dynamics: the draws are not finite after 2 noise "
                                                 r"levels of 2 steps each and the denoising step: 3 of 3 rows"):
        S.annealed_langevin_dynamics(nan_when_denoising, torch.zeros(3, 2), [1.0, 0.5], n_steps_each=2, denoise=True)
    # finite chains as before: the stationary law of a small step, N(0, 1) for the score -x (variance 1/(1 - a/4))
    x = S.langevin_dynamics(lambda x: -x, torch.zeros(20000, 1), 0.1, 200, generator=torch.Generator().manual_seed(0))
    assert abs(float(x.var()) - 1 / (1 - 0.1 / 4)) < 0.05


# ------------------------------------------------------------------------------------ 5. MultivariateNormal sizes
@pytest.mark.parametrize("key, matrix", [("covariance_matrix", torch.eye(3)), ("precision_matrix", torch.eye(3)),
                                         ("scale_tril", torch.eye(3))])
def test_multivariate_normal_sizes_are_checked_at_construction(key: str, matrix: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=rf"^p\(x\): loc has 2 features but {key} is 3 x 3; a MultivariateNormal"):
        MultivariateNormal(var=["x"], loc=torch.zeros(2), **{key: matrix})


class _NetworkMVN(MultivariateNormal):
    def __init__(self, width: int) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="q")
        self.width = width

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": z, "scale_tril": torch.eye(self.width).expand(z.shape[0], self.width, self.width)}


def test_multivariate_normal_sizes_from_a_network_are_checked() -> None:
    z = torch.zeros(4, 2)
    q = _NetworkMVN(3)
    message = r"^q\(x\|z\): loc has 2 features but scale_tril is 3 x 3"
    with pytest.raises(ValueError, match=message):
        q.get_params({"z": z})
    with pytest.raises(ValueError, match=message):
        q.get_log_prob({"z": z, "x": z})
    with pytest.raises(ValueError, match=message):
        q.sample({"z": z})
    # sizes that agree: the density is torch's
    x = torch.tensor([[0.3, -1.0], [2.0, 0.5], [0.0, 0.0], [1.0, 1.0]])
    lp = _NetworkMVN(2).get_log_prob({"z": z, "x": x})
    ref = torch.distributions.MultivariateNormal(torch.zeros(2), scale_tril=torch.eye(2)).log_prob(x)
    torch.testing.assert_close(lp, ref)


# ------------------------------------------------------------------------------------ 6. a value for a function
def test_options_that_take_a_function_refuse_a_value() -> None:
    path = S.LinearPath(lambda x, t: -x, [2])
    with pytest.raises(TypeError, match=r"^euler_maruyama: diffusion must be a function of tau, gamma\(tau\) "
                                        r"\(e.g. lambda tau: 1.0 for a constant\), or None for the path's own; got 1.0 "
                                        r"\(float\)$"):
        S.euler_maruyama(path, n=2, n_steps=3, diffusion=1.0)
    with pytest.raises(TypeError, match=r"euler_maruyama: diffusion must be a function of tau.*got 0.0 \(float\)"):
        S.euler_maruyama(path, n=2, n_steps=3, diffusion=0.0)  # (was taken as "not given": the path's own)
    p = Normal(var=["z"], loc=torch.zeros(2), scale=1.0, name="p")
    q = Normal(var=["z"], loc=torch.ones(2), scale=1.0, name="q")
    with pytest.raises(TypeError, match=r"^WassersteinDistance: metric must be a function of two draws \(x, y\) "
                                        r"returning one distance per row, .* got 'l2' \(str\)$"):
        WassersteinDistance(p, q, metric="l2")
    with pytest.raises(TypeError, match=r"^guided: conditional must be a path \(a GaussianPath: .*\), got function; "
                                        r"wrap the network in its path$"):
        S.guided(lambda x, t: x, path, 1.0)
    with pytest.raises(TypeError, match=r"^guided: unconditional must be a path .* got Tensor"):
        S.guided(path, torch.zeros(2), 1.0)


def test_a_constant_diffusion_as_a_function_and_a_metric_function_work() -> None:
    """The forms the messages ask for: a diffusion given as a function of tau, a metric as a function."""
    path = S.LinearPath(lambda x, t: torch.zeros_like(x), [2])  # v = 0: the drift is the score term alone
    x = S.euler_maruyama(path, n=5, n_steps=4, diffusion=lambda tau: 0.0, generator=torch.Generator().manual_seed(1))
    x0 = S.LinearPath(lambda x, t: torch.zeros_like(x), [2]).prior(5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, x0)  # gamma = 0: Euler on v = 0 keeps the start
    p = Normal(var=["z"], loc=torch.zeros(2), scale=1e-30, name="p")
    q = Normal(var=["z"], loc=torch.tensor([3.0, 4.0]), scale=1e-30, name="q")
    l1 = WassersteinDistance(p, q, metric=torch.nn.PairwiseDistance(p=1, eps=0.0)).eval({"z": torch.zeros(1, 2)})
    assert math.isclose(float(l1.mean()), 7.0, rel_tol=1e-5)


# ------------------------------------------------------------------------------------ 8. low-level helpers
def test_sample_classes_and_dirichlet_name_their_input() -> None:
    with pytest.raises(ValueError, match=r"^sample_classes: probs must be 2-D, one row of class weights per draw, got "
                                         r"shape \(2,\); for one draw pass probs\[None\]$"):
        km.sample_classes(torch.tensor([0.5, 0.5]))
    with pytest.raises(TypeError, match=r"^sample_classes: probs must be a torch.Tensor .*got list$"):
        km.sample_classes([[0.5, 0.5]])
    with pytest.raises(TypeError, match=r"^sample_dirichlet: concentration must be a floating torch.Tensor "
                                        r"\(e.g. torch.tensor\(\[1.0, 1.0\]\)\), got list$"):
        km.sample_dirichlet([1.0, 1.0])
    with pytest.raises(TypeError, match=r"^sample_gamma: concentration must be a floating torch.Tensor .*got a "
                                        r"torch.int64 tensor$"):
        km.sample_gamma(torch.tensor([1, 2]))
    # the valid forms as before: one class per row, a Dirichlet row on the simplex
    assert km.sample_classes(torch.tensor([[0.0, 1.0], [1.0, 0.0]])).tolist() == [1, 0]
    theta = km.sample_dirichlet(torch.ones(3, 4), torch.Generator().manual_seed(0))
    torch.testing.assert_close(theta.sum(-1), torch.ones(3))


def test_to_dot_of_something_else_than_a_spec() -> None:
    p = Normal(var=["x"], loc=0.0, scale=1.0)
    for bad, what in (("p(x)", "str"), (p, "Normal"), ({"a": 1}, r"a dict of keys \['a'\]")):
        with pytest.raises(TypeError, match=rf"^to_dot takes the dict of model_spec\(obj\) \(keys nodes, edges, "
                                            rf"plates\), got {what}; for a model call to_dot\(model_spec\(obj\)\), "
                                            r"or render\(obj\).dot$"):
            to_dot(bad)
    assert to_dot(model_spec(p)).startswith('digraph "model" {')


def test_save_module_under_a_file_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    for target in (blocker / "gmm.kz", blocker / "a" / "b" / "gmm.kz"):
        with pytest.raises(FileNotFoundError, match=rf"^save_module: cannot write {target}: the folder "
                                                    rf"{target.parent} cannot be created \({blocker} is a file\)$"):
            km.save_module(km.GMM(2), target)
    with pytest.raises(FileNotFoundError, match=rf"^save: cannot write the graph into {blocker / 'g'}: .*"
                                                rf"\({blocker} is a file\)$"):
        km.save_graph(km.Graph([km.GMM(2, name="g").connect(km.Observation(torch.randn(6, 2)))]), blocker / "g")
    assert blocker.read_text() == "mine"  # nothing of the user's touched
