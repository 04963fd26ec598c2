"""``sample(..., sample_shape=S)`` with a one-row conditioning value beside a batch (stop 44, found by fixer A): the
one row conditions every row, as it does without ``sample_shape``. A product's factor conditioned on it drew
``(S, 1, ...)`` beside the other factor's ``(S, B, ...)`` (its n copies of the one row were read as n rows)."""

import torch
from torch import nn

from kizuna.distributions import Normal

F64 = torch.float64


class Net(Normal):
    def __init__(self, var: str, cond: str, d_in: int, d: int) -> None:
        super().__init__(var=[var], cond_var=[cond], name="q", features_shape=[d])
        self.net = nn.Linear(d_in, 2 * d, dtype=F64)

    def forward(self, **values: torch.Tensor) -> dict[str, torch.Tensor]:
        (v,) = values.values()
        loc, s = self.net(v).chunk(2, -1)
        return {"loc": loc, "scale": nn.functional.softplus(s) + 0.1}


def test_a_products_one_row_condition_gives_every_row_its_draws() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(6, 4, dtype=F64), torch.randn(1, 5, dtype=F64)
    qz, qw = Net("z", "y", 5, 2), Net("w", "x", 4, 3)
    for p in (qz * qw, qw * qz):
        plain = p.sample({"x": x, "y": y})
        drawn = p.sample({"x": x, "y": y}, sample_shape=[3])
        assert plain["z"].shape == (6, 2) and drawn["z"].shape == (3, 6, 2) and drawn["w"].shape == (3, 6, 3)
    # the draws are qz's given the one row: standardised by its loc and scale, 24,000 of them are standard normal
    many = (qz * qw).sample({"x": x, "y": y}, sample_shape=[4000])["z"].detach()
    with torch.no_grad():
        params = qz.forward(y=y)
    u = (many - params["loc"]) / params["scale"]
    assert abs(float(u.mean())) < 4 / (u.numel() ** 0.5) and abs(float(u.std()) - 1) < 0.02
    # the rows are independent draws, not one draw repeated across the batch
    assert not torch.equal(many[:, 0], many[:, 1])
