"""The DESIGN.md quick-start, run as written (Pixyz users port by changing imports)."""

import torch
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, Categorical, Normal  # noqa: F401 - the DESIGN.md imports
from kizuna.losses import ELBO, IWAE, KullbackLeibler, LogProb
from kizuna.losses import Expectation as E
from kizuna.models import VAE, Model
from kizuna.nets import MLP


def prototypes(n, seed):
    """Rows drawn from four fixed binary patterns: data a VAE can fit in a few steps."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(4, 784, generator=g) > 0.5).float()
    return protos[torch.randint(0, 4, (n,), generator=g)]


class Inference(Normal):  # q(z|x)
    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = MLP(784, 512, 2 * 64)

    def forward(self, x):  # argument names = cond_var
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s)}


class Generator(Bernoulli):  # p(x|z)
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = MLP(64, 512, 784)

    def forward(self, z):
        return {"probs": torch.sigmoid(self.net(z))}


def test_design_quickstart_runs_and_learns():
    torch.manual_seed(0)
    q, p = Inference(), Generator()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[64], name="p_prior")
    p_joint = p * prior
    assert str(p_joint) == "p(x,z) = p(x|z)p_{prior}(z)"
    s = p_joint.sample(batch_n=8)
    assert list(s) == ["z", "x"]
    assert s["z"].shape == (8, 64) and s["x"].shape == (8, 784)
    loss = (KullbackLeibler(q, prior) - E(q, LogProb(p))).mean()
    assert str(loss) == "mean(KL[q(z|x)||p_{prior}(z)] - E_{q(z|x)}[log p(x|z)])"
    assert "D_{\\mathrm{KL}}" in loss.to_latex() and "\\mathbb{E}_{q(z|x)}" in loss.to_latex()
    x = prototypes(32, seed=0)
    value = loss.eval({"x": x})
    assert value.dim() == 0 and value.requires_grad
    model = Model(loss, distributions=[p, q], optimizer=torch.optim.Adam, optimizer_params={"lr": 1e-3})
    first = model.train({"x": x})  # a detached 0-d tensor, as Pixyz returns
    assert isinstance(first, torch.Tensor) and first.dim() == 0 and not first.requires_grad
    for _ in range(30):
        model.train({"x": x})
    # 31 Adam steps on four repeated patterns must cut the negative ELBO (~545 nats at the
    # start, 784 log 2 for coin flips) at least in half
    assert model.test({"x": x}) < 0.5 * first
    # the negative ELBO the trainer minimises is -ELBO(p_joint, q) up to MC noise
    with torch.no_grad():
        elbo = ELBO(p_joint, q, sample_shape=(50,)).eval({"x": x}).mean().item()
        iwae = IWAE(p_joint, q, k=50).eval({"x": x}).mean().item()
    assert abs(-elbo - model.test({"x": x})) < 5.0
    assert iwae >= elbo - 0.5


def test_vae_preset_matches_the_formula():
    torch.manual_seed(1)
    q, p = Inference(), Generator()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[64], name="p_prior")
    model = VAE(q, p, regularizer=KullbackLeibler(q, prior), optimizer_params={"lr": 1e-3})
    assert str(model.loss_cls) == "mean(-E_{q(z|x)}[log p(x|z)] + KL[q(z|x)||p_{prior}(z)])"
    x = prototypes(16, seed=1)
    before = model.test({"x": x})
    for _ in range(20):
        model.train({"x": x})
    assert model.test({"x": x}) < 0.5 * before
