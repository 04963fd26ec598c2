"""Module-layer fixes of stop 44 (review D): a module's ``random_state`` set by ``set_params`` after its own
update stream started restarts that stream (the stream went on and the new seed had no effect)."""

import torch

from kizuna import modules as km
from kizuna.modules.context import UpdateContext
from kizuna.modules.rng import generator_for


def _gmm(x: torch.Tensor) -> km.GMM:
    gmm = km.GMM(2, random_state=0, algorithm="gibbs")
    gmm.connect(km.Observation(x))
    gmm.update()  # the module's own stream starts from random_state 0
    return gmm


def test_set_params_random_state_restarts_the_modules_stream(one_thread) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g) + torch.tensor([[3.0, 0.0]]) * (torch.arange(200) % 2)[:, None]
    kept, changed, reference = _gmm(x), _gmm(x), _gmm(x)
    kept.update()
    changed.set_params(random_state=5)
    changed.update()
    reference.update(UpdateContext(generator=generator_for(5)))  # a stream started from 5 at this update
    assert torch.equal(changed.posterior, reference.posterior)
    assert not torch.equal(changed.posterior, kept.posterior)
    again = _gmm(x)
    again.set_params(random_state=0)  # the same seed also restarts: the second update repeats the first's draws
    again.update()
    assert not torch.equal(again.posterior, kept.posterior)


def test_assigning_random_state_restarts_the_stream_too(one_thread) -> None:
    """Diff review 1: ``m.random_state = 5`` (not through set_params) kept the old stream."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 2, generator=g) + torch.tensor([[3.0, 0.0]]) * (torch.arange(200) % 2)[:, None]
    assigned, reference = _gmm(x), _gmm(x)
    assigned.random_state = 5
    assigned.update()
    reference.update(UpdateContext(generator=generator_for(5)))
    assert torch.equal(assigned.posterior, reference.posterior)
