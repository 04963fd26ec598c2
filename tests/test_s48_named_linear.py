"""Stop 48: a named batch reduction inside a score-function expectation or REINFORCE keeps the per-row score terms of
the unnamed one (`_linear` sees through `Named`): the same value and gradient, bit for bit."""

import pytest
import torch

from kizuna.distributions import Normal
from kizuna.losses import REINFORCE, LogProb
from kizuna.losses import Expectation as E


class _Encoder(Normal):
    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = torch.nn.Linear(2, 2)

    def forward(self, x):
        return {"loc": self.net(x), "scale": torch.ones_like(x)}


class _Decoder(Normal):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")

    def forward(self, z):
        return {"loc": z, "scale": torch.ones_like(z)}


@pytest.mark.parametrize("make", [lambda q, f: REINFORCE(q, f, sample_shape=(3,)),
                                  lambda q, f: E(q, f, sample_shape=(3,), reparam=False)],
                         ids=["REINFORCE", "score-function E"])
def test_a_named_reduction_inside_a_score_function_expectation_keeps_its_gradient(make):
    torch.manual_seed(0)
    q, p = _Encoder(), _Decoder()
    x = {"x": torch.randn(6, 2, generator=torch.Generator().manual_seed(1))}
    f = LogProb(p).mean()
    out = []
    for g in (f, f.named("m"), f.named("m").named("n")):
        torch.manual_seed(1)  # the same draws
        value = make(q, g).eval(x)
        out.append((value, torch.autograd.grad(value, list(q.parameters()))))
    for value, grads in out[1:]:
        assert torch.equal(value, out[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, out[0][1]))
