"""Diff review dr2 of stop 44: frozen parameters in the optimizer (the data's dtype, checkpoints of the earlier
layout), `Model.test`'s mode switching, README's `Model` signature, losses pickled by the earlier code, a Loss's
``input_var`` given as any sequence, and the mask warning of a partly reduced `IterativeLoss` step.

References: the same model without the frozen table (numbers to the bit), an optimizer built by the earlier rule
(over the parameters that require grad only) continuing on its own, ``inspect.signature``, float64 arithmetic on the
exact constants, a fresh loss's evaluation, and the exact messages. The ``slow`` tests run the code before this stop
(``git archive e1a9dc7``) in a subprocess to write the checkpoints and pickles.
"""

from __future__ import annotations

import copy
import inspect
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from mc_reference import default_dtype
from test_iterative import Filter
from test_s44_iterative_mask import padded, step_per_row
from test_s44_training import Reg, _data
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, Normal
from kizuna.formula.expr import Loss, Parameter
from kizuna.losses import Expectation, IterativeLoss, KullbackLeibler, LogProb
from kizuna.models import VAE, Model
from kizuna.models.model import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest's fixture)

ROOT = Path(__file__).resolve().parents[1]
OLD = "e1a9dc7"  # the code before stop 44


# ------------------------------------------------------------------ 1. the data's dtype: the trainable parameters'
class Tabled(Normal):
    """y | x with a frozen table registered before the network (first among the parameters), or without one."""

    def __init__(self, table: torch.Tensor | None) -> None:
        super().__init__(var=["y"], cond_var=["x"], name="p")
        if table is not None:
            self.table = nn.Parameter(table, requires_grad=False)
        self.net = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.net(x), "scale": torch.ones_like(x[:, :1])}


@pytest.mark.parametrize("table", [torch.arange(4), torch.linspace(0, 1, 4, dtype=torch.float64)],
                         ids=["int64", "float64"])
def test_a_frozen_table_listed_first_leaves_the_data_dtype_and_the_fused_kernel(table) -> None:
    data = {k: v.double() for k, v in _data().items()}  # float64 data: converted to the model's float32
    losses, models = [], []
    for t in (table, None):
        torch.manual_seed(0)
        p = Tabled(t)
        model = Model(-LogProb(p).mean(), optimizer_params={"lr": 0.1})
        losses.append([model.train(data).item() for _ in range(3)])
        models.append((model, p))
    (model, p), (ref, q) = models
    assert next(iter(p.parameters())) is p.table and p.table in model.optimizer.param_groups[0]["params"]
    assert (model.dtype, model.device) == (torch.float32, torch.device("cpu"))
    assert model.optimizer.param_groups[0]["fused"] and ref.optimizer.param_groups[0]["fused"]
    assert losses[0] == losses[1]
    assert torch.equal(p.net.weight, q.net.weight) and torch.equal(p.table, table)


# ------------------------------------------------------------ 2. checkpoints of the earlier layout (frozen left out)
def _old_rule(model: Model, lr: float = 1e-2) -> None:
    """The optimizer as the code before stop 44 built it: over the parameters that require grad only."""
    model.optimizer = build_optimizer(torch.optim.Adam, [p for p in model.distributions.parameters()
                                                         if p.requires_grad], {"lr": lr})


def _frozen_reg(seed: int = 0) -> Reg:
    torch.manual_seed(seed)
    p = Reg()
    p.backbone.requires_grad_(False)
    return p


def test_a_state_of_the_earlier_layout_loads_and_resumes_as_its_own_optimizer_continues() -> None:
    data = {k: v.float() for k, v in _data().items()}
    p = _frozen_reg()
    old = Model(-LogProb(p).mean())
    _old_rule(old)
    for _ in range(3):
        old.train(data)
    state = copy.deepcopy(old.state_dict())
    assert len(state["optimizer"]["param_groups"][0]["params"]) == 2  # head only: the earlier layout
    r = _frozen_reg(seed=1)  # other weights: the checkpoint's are loaded
    new = Model(-LogProb(r).mean())
    new.load_state_dict(state)
    assert len(new.optimizer.param_groups[0]["params"]) == 4
    for a, b in zip(p.parameters(), r.parameters()):
        assert torch.equal(a, b)
        assert (b in new.optimizer.state) == a.requires_grad  # the frozen ones get no state, as they had none
        for key, value in old.optimizer.state.get(a, {}).items():
            assert torch.equal(new.optimizer.state[b][key], value)
    for _ in range(3):
        assert old.train(data).item() == new.train(data).item()
    for a, b in zip(p.parameters(), r.parameters()):
        assert torch.equal(a, b)


def test_a_state_of_the_earlier_layout_with_other_parameters_frozen_says_what_to_do() -> None:
    p = _frozen_reg()
    old = Model(-LogProb(p).mean())
    _old_rule(old)
    old.train({k: v.float() for k, v in _data().items()})
    state = copy.deepcopy(old.state_dict())
    torch.manual_seed(0)
    r = Reg()  # nothing frozen: 4 parameters require grad, the checkpoint has 2
    model = Model(-LogProb(r).mean())
    before = copy.deepcopy(model.optimizer.state_dict())
    with pytest.raises(ValueError) as err:
        model.load_state_dict(state)
    assert str(err.value) == (
        "the checkpoint does not fit this model's optimiser (e.g. another set of trainable parameters): its "
        "optimizer's group 0 holds 2 parameters, this model's 4, 4 of them requiring grad. A checkpoint saved by an "
        "earlier kizuna, whose optimizer left out the frozen parameters (requires_grad False), is loaded with the "
        "parameters that required grad when it was saved; freeze the same parameters (p.requires_grad_(False)) "
        "before loading it")
    assert model.optimizer.state_dict() == before
    r.head.requires_grad_(False)  # two frozen, but the head instead of the backbone: the moments' shapes differ
    with pytest.raises(ValueError) as err:
        model.load_state_dict(state)
    assert str(err.value) == (
        "the checkpoint does not fit this model's optimiser (e.g. another set of trainable parameters): it was "
        "saved by an earlier kizuna, whose optimizer left out the frozen parameters (requires_grad False); taken in "
        "order, its state 'exp_avg' of shape (1, 8) falls to 0.backbone.weight of shape (8, 3), so other "
        "parameters were frozen when it was saved: freeze the same ones (p.requires_grad_(False)) before loading it")


# --------------------------------------------------------- 3. test's eval-mode switching leaves the loss nodes out
def test_test_switches_no_loss_node_only_the_untrained_modules() -> None:
    class Q(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.net = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            loc, s = self.net(x).chunk(2, -1)
            return {"loc": loc, "scale": F.softplus(s) + 1e-3}

    class P(Bernoulli):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="p")
            self.net, self.drop = nn.Linear(2, 4), nn.Dropout(0.5)

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.net(self.drop(z))}

    torch.manual_seed(0)
    q, p = Q(), P()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="prior")
    model = VAE(q, p, regularizer=KullbackLeibler(q, prior))
    assert [type(m).__name__ for m in model._untrained_modules(model.test_loss_cls)] == ["Normal"]  # the prior
    set_on = []
    original = Loss.__setattr__

    def spy(self, name, value):
        set_on.append((type(self).__name__, name))
        original(self, name, value)

    x = torch.bernoulli(torch.rand(8, 4))
    model.test({"x": x})
    Loss.__setattr__ = spy
    try:
        model.test({"x": x})
    finally:
        Loss.__setattr__ = original
    assert set_on == []
    # a network outside the trained distributions, inside the test loss, is still put in eval mode for the pass
    model = Model((KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean(), distributions=[q])
    assert [type(m).__name__ for m in model._untrained_modules(model.test_loss_cls)] == [
        "Normal", "P", "Linear", "Dropout"]
    p.train()
    torch.manual_seed(5)
    value = model.test({"x": x})
    assert p.training and p.drop.training  # its own mode given back
    p.eval()
    torch.manual_seed(5)
    with torch.no_grad():
        assert value.item() == model.test_loss_cls.eval({"x": x}).item()  # the pass ran it in eval mode


# ----------------------------------------------------------------- 4. README's Model signature is Model's own
def test_readme_writes_models_signature() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"`Model\((loss, test_loss=.*?)\)`", text, re.S)
    assert found, "README.md documents Model(loss, test_loss=...)"
    documented = [part.strip() for part in " ".join(found.group(1).split()).split(",")]
    own, keyword_only = [], False
    for param in inspect.signature(Model).parameters.values():
        if param.kind is param.KEYWORD_ONLY and not keyword_only:
            own.append("*")
            keyword_only = True
        default = param.default
        if default is inspect.Parameter.empty:
            own.append(param.name)
        else:
            own.append(f"{param.name}={'Adam' if default is torch.optim.Adam else repr(default)}")
    assert documented == own


# ------------------------------------------------------------------ 5. losses pickled by the earlier code
def test_a_binary_pickled_with_the_earlier_constants_takes_the_exact_constant() -> None:
    loss = Parameter("x") * Parameter("b").abs()
    loss._constants = (True, False)  # the earlier rule: b.abs() was a term, evaluated as a float32 tensor
    back = pickle.loads(pickle.dumps(loss))
    x = torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert back.eval({"x": x, "b": 0.1}).tolist() == [1.0 * 0.1, 3.0 * 0.1]  # float64 on the exact 0.1
    assert back._constants == (True, True)


def test_an_iterative_loss_pickled_before_its_mask_warning_evaluates_under_a_mask() -> None:
    with default_dtype(torch.float64):
        q = Filter()
        loss = IterativeLoss(step_per_row(q).mean(), series_var=["x"], update_value={"z": "z_prev"})
        del loss.__dict__["_mask_warned"]  # as pickled before the attribute
        back = pickle.loads(pickle.dumps(loss))
        fresh = IterativeLoss(step_per_row(q).mean(), series_var=["x"], update_value={"z": "z_prev"})
        x, m = padded(0, 10.0)
        z0 = torch.zeros(x.shape[1], 1)
        values = []
        for each in (back, fresh):
            torch.manual_seed(3)
            with pytest.warns(UserWarning, match="is reduced over the batch"):
                values.append(each.eval({"x": x, "z_prev": z0}, mask=m))
        assert torch.equal(values[0], values[1])


# ------------------------------------------------------------------ 6. input_var: any sequence of names
@pytest.mark.parametrize("names", [np.array(["x", "y"]), ("x", "y"), {"x": 0, "y": 1}.keys(), ["x", "y", "x"]],
                         ids=["numpy", "tuple", "keys", "repeated"])
def test_a_loss_takes_its_input_var_as_any_sequence_of_names(names) -> None:
    class Sum(Loss):
        def __init__(self) -> None:
            super().__init__(names)

        def _value(self, ctx):
            return ctx.values["x"] + ctx.values["y"]

    loss = Sum()
    assert loss.input_var == ["x", "y"]
    assert loss.eval({"x": torch.tensor(1.0), "y": torch.tensor(2.0)}).item() == 3.0


# ------------------------------------------------------------------ gap: a partly reduced step under a padded mask
def test_a_partly_reduced_step_under_a_padded_mask_warns_once() -> None:
    with default_dtype(torch.float64):
        q = Filter()
        per_row = step_per_row(q)
        kl, recon = per_row.loss1, per_row.loss2
        step = kl.mean() - recon  # the KL reduced over the batch, the reconstruction per row
        loss = IterativeLoss(step, series_var=["x"], update_value={"z": "z_prev"})
        x, m = padded(0, 10.0)
        z0 = torch.zeros(x.shape[1], 1)
        with pytest.warns(UserWarning) as caught:
            torch.manual_seed(3)
            value = loss.eval({"x": x, "z_prev": z0}, mask=m)
        assert value.shape == (x.shape[1],)
        assert [str(w.message) for w in caught] == [
            f"IterativeLoss: the step loss {step} is one value per row, but part of it is reduced over the batch (a "
            "term under .mean() or .sum() inside the step, e.g. kl.mean() - E(q, LogProb(p))): that part holds every "
            "row's cost, so the padded rows' costs still enter every row's loss and gradient through it although the "
            "per-row mask drops their steps. Write every term of the step loss per row (e.g. "
            "IterativeLoss(kl - E(q, LogProb(p)), ...).mean())"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per IterativeLoss; none for a per-row step, nor rows weighed alike
            loss.eval({"x": x, "z_prev": z0}, mask=m)
            IterativeLoss(per_row, series_var=["x"], update_value={"z": "z_prev"}).eval({"x": x, "z_prev": z0}, mask=m)
            IterativeLoss(step, series_var=["x"], update_value={"z": "z_prev"}).eval(
                {"x": x, "z_prev": z0}, mask=torch.ones_like(m))


# ------------------------------------------------------------------ the earlier code itself (slow: subprocesses)
@pytest.fixture(scope="module")
def old_code(tmp_path_factory) -> Path:
    """The package as it was before stop 44 (``git archive``), or a skip where the repository does not have it."""
    where = tmp_path_factory.mktemp("old")
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD, "kizuna"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs the git history with {OLD} (the code before stop 44)")
    return where


SCRIPT = '''
import sys, pickle, torch
torch.set_num_threads(1)
from torch import nn
from torch.nn import functional as F
from kizuna.distributions import Bernoulli, Deterministic, Normal
from kizuna.losses import KullbackLeibler
from kizuna.models import GAN, VAE

class Q(Normal):
    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Linear(4, 4)
    def forward(self, x):
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-3}

class P(Bernoulli):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.backbone, self.head = nn.Linear(2, 8), nn.Linear(8, 4)
    def forward(self, z):
        return {"logits": self.head(torch.tanh(self.backbone(z)))}

class G(Deterministic):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"])
        self.backbone, self.head = nn.Linear(2, 8), nn.Linear(8, 4)
    def forward(self, z):
        return {"x": self.head(torch.tanh(self.backbone(z)))}

class D(Bernoulli):
    def __init__(self):
        super().__init__(var=["t"], cond_var=["x"], name="d")
        self.backbone, self.head = nn.Linear(4, 8), nn.Linear(8, 1)
    def forward(self, x):
        return {"logits": self.head(torch.tanh(self.backbone(x)))}

def build(kind):
    torch.manual_seed(0)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="prior")
    if kind == "vae":
        q, p = Q(), P()
        p.backbone.requires_grad_(False)
        return VAE(q, p, regularizer=KullbackLeibler(q, prior), optimizer_params={"lr": 1e-2})
    g, d = G(), D()
    g.backbone.requires_grad_(False)
    d.backbone.requires_grad_(False)
    return GAN((g * prior).marginalize_var("z"), d, optimizer_params={"lr": 1e-3})

kind, phase, path = sys.argv[1:4]
x = (torch.rand(16, 4, generator=torch.Generator().manual_seed(1)) < 0.5).float()
model = build(kind)
if phase == "save":
    model.fit({"x": x}, epochs=2, batch_size=8, quiet=True, seed=0)
    model.save(path)
else:
    model.load(path)
    model.fit({"x": x}, epochs=2, batch_size=8, quiet=True)
    models = [model] + ([model.d_model] if kind == "gan" else [])
    torch.save({"params": [t.detach() for m in models for t in m.distributions.parameters()],
                "train": model.history.train}, path + "." + phase)
'''


def _run(old: Path | None, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(old) if old is not None else str(ROOT)}
    subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, check=True, cwd=ROOT, capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vae", "gan"])
def test_a_checkpoint_saved_by_the_earlier_code_resumes_as_the_earlier_code_resumes_it(kind, old_code, tmp_path):
    path = str(tmp_path / "frozen.pt")
    _run(old_code, kind, "save", path)
    _run(old_code, kind, "old", path)  # the earlier code resuming its own checkpoint
    _run(None, kind, "new", path)
    old, new = torch.load(path + ".old"), torch.load(path + ".new")
    assert old["train"] == new["train"] and len(new["train"]) == 4
    for a, b in zip(old["params"], new["params"]):
        assert torch.equal(a, b)


OLD_PICKLES = '''
import pickle, sys, torch
from kizuna.formula.expr import Parameter
from test_iterative import Filter
from test_s44_iterative_mask import step_per_row
from kizuna.losses import IterativeLoss
torch.set_default_dtype(torch.float64)
it = IterativeLoss(step_per_row(Filter()).mean(), series_var=["x"], update_value={"z": "z_prev"})
pickle.dump((Parameter("x") * Parameter("b").abs(), it), open(sys.argv[1], "wb"))
'''


@pytest.mark.slow
def test_losses_pickled_by_the_earlier_code(old_code, tmp_path) -> None:
    path = tmp_path / "losses.pkl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(old_code), str(ROOT / "tests")])}
    subprocess.run([sys.executable, "-c", OLD_PICKLES, str(path)], env=env, check=True, capture_output=True)
    with path.open("rb") as f:
        binary, loss = pickle.load(f)
    x = torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert binary.eval({"x": x, "b": 0.1}).tolist() == [1.0 * 0.1, 3.0 * 0.1]
    with default_dtype(torch.float64):
        fresh = IterativeLoss(step_per_row(Filter()).mean(), series_var=["x"], update_value={"z": "z_prev"})
        fresh.load_state_dict(loss.state_dict())
        xs, m = padded(0, 10.0)
        z0 = torch.zeros(xs.shape[1], 1)
        values = []
        for each in (loss, fresh):
            torch.manual_seed(3)
            with pytest.warns(UserWarning, match="is reduced over the batch"):
                values.append(each.eval({"x": xs, "z_prev": z0}, mask=m))
        assert torch.equal(values[0], values[1])


OLD_MODEL_PICKLE = '''
import sys, pickle, torch
torch.set_num_threads(1)
from torch import nn
from kizuna.distributions import Normal
from kizuna.losses import LogProb
from kizuna.models import Model
from test_s44_dr2 import Affine

model = Model(-LogProb(Affine()).mean(), optimizer_params={"lr": 1e-2})
model.train({"x": torch.ones(4, 1), "y": torch.zeros(4, 1)})
with open(sys.argv[1], "wb") as f:
    pickle.dump(model, f)
'''


class Affine(Normal):
    """p(y|x) = N(a x + b, 1) (pickled by the earlier code in a subprocess)."""

    def __init__(self) -> None:
        super().__init__(var=["y"], cond_var=["x"], name="p")
        self.lin = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.lin(x), "scale": torch.ones_like(x)}


@pytest.mark.slow
def test_a_model_pickled_by_the_earlier_code_trains(old_code, tmp_path) -> None:
    """Diff review 4 (stop 44): a Model pickled before this stop had no ``_reference``; its dtype, device and train()
    raised AttributeError. It takes the first trainable parameter's, as it did."""
    path = tmp_path / "model.pkl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(old_code), str(ROOT / "tests")])}
    subprocess.run([sys.executable, "-c", OLD_MODEL_PICKLE, str(path)], env=env, check=True, capture_output=True)
    with path.open("rb") as f:
        model = pickle.load(f)
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert torch.isfinite(torch.as_tensor(model.train({"x": torch.ones(4, 1), "y": torch.zeros(4, 1)})))
